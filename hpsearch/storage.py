"""Storage URLs: checking them and keeping their passwords out of logs, files and errors."""

from __future__ import annotations

import re

from hpsearch.errors import InputError

# A query parameter that carries a credential: ?password=, &sslpassword=, ?api_key=, ?token=…
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;][^=&;#]*(?:pass|pwd|secret|token|key|auth|credential)[^=&;#]*=)[^&;#]*",
    re.IGNORECASE,
)

SUPPORTED_SCHEMES = ("sqlite", "postgresql", "mysql")


def mask_url(url: str) -> str:
    """The URL with every credential replaced by ***: the password before the host, and query
    parameters such as `password`, `sslpassword` or `token`. Unparsable text is masked whole
    after '//'."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        head, sep, _ = url.partition("//")
        return f"{head}{sep}***" if sep else "***"
    # without a password the URL stays as written (rendering would re-quote its path)
    shown = url if parsed.password is None else parsed.render_as_string(hide_password=True)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}***", shown)


def check_storage_url(url: str) -> None:
    """Refuse a malformed or unsupported database URL before anything runs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise InputError(
            f"storage: '{mask_url(url)}' is not a database URL; "
            "use e.g. sqlite:///study.db or postgresql://user@host/db"
        ) from None
    if parsed.get_backend_name() not in SUPPORTED_SCHEMES:
        raise InputError(
            f"storage: unsupported database '{parsed.get_backend_name()}' in {mask_url(url)}; "
            f"use one of {', '.join(SUPPORTED_SCHEMES)}"
        )


def probe_storage(url: str) -> None:
    """Connect once, so an unreachable database is reported before a run folder exists."""
    from sqlalchemy import create_engine, text

    check_storage_url(url)
    try:
        engine = create_engine(url, connect_args=_timeout_args(url))
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except ModuleNotFoundError as exc:
        raise InputError(
            f"storage: the database driver '{exc.name}' is not installed for {mask_url(url)} "
            "(PostgreSQL: pip install 'psycopg[binary]')"
        ) from None
    except Exception as exc:  # refused, unknown host, bad credentials, missing database
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].replace(url, mask_url(url))
        raise InputError(f"storage: cannot connect to {mask_url(url)}: {reason}") from None


def _timeout_args(url: str) -> dict[str, int]:
    # Fail fast on an unreachable server instead of waiting for the OS's TCP timeout.
    if url.startswith("postgresql"):
        return {"connect_timeout": 5}
    if url.startswith("mysql"):
        return {"connect_timeout": 5}
    return {}


def mask_args(args: list[str]) -> list[str]:
    """A command line with any database URL's password masked (for env.json)."""
    return [mask_url(a) if "://" in a else a for a in args]
