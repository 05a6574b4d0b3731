"""Storage URLs: checking them and keeping their passwords out of logs, files and errors."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from hpsearch.errors import InputError

if TYPE_CHECKING:
    from hpsearch.spec import Spec

T = TypeVar("T")

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
        engine = create_engine(url, connect_args=connect_args(url))
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


def connect_args(url: str) -> dict[str, int]:
    """Driver options that fail fast on an unreachable server instead of waiting for the OS's
    TCP timeout, and (PostgreSQL) notice a server that vanished without closing the
    connection, so a lost database becomes an error that can be retried, not a hang."""
    if url.startswith("postgresql"):
        return {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
    if url.startswith("mysql"):
        return {"connect_timeout": 5}
    return {}


def mask_args(args: list[str]) -> list[str]:
    """A command line with any database URL's password masked (for env.json)."""
    return [mask_url(a) if "://" in a else a for a in args]


# --- a database that goes away for a while ----------------------------------------------------

RETRY_ENV = "HPSEARCH_DB_RETRY_SECONDS"
SAY_EVERY = 4.0  # seconds between two "still waiting" lines


class DatabaseUnreachable(Exception):
    """The database stayed unreachable past the retry limit: the run stops, resumable once the
    database is back (`resume` says how, once the engine knows)."""

    def __init__(self, where: str, seconds: float):
        self.where = where
        self.seconds = seconds
        self.run: object | None = None  # the run folder it stopped, once known
        self.resume: str | None = None  # what to do once the database is back
        super().__init__(where, seconds)

    def __str__(self) -> str:
        message = (
            f"database unreachable at {self.where} for {self.seconds:.0f} s "
            f"(limit {RETRY_ENV}={retry_seconds():g}); nothing finished is lost"
        )
        return f"{message}; {self.resume}" if self.resume else message


def retry_seconds() -> float:
    """How long a lost database is retried before the run stops (HPSEARCH_DB_RETRY_SECONDS,
    default 60)."""
    return max(0.0, float(os.environ.get(RETRY_ENV, "60")))


def database_address(url: str) -> str:
    """HOST:PORT of a database URL, for messages (never its credentials)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return mask_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    defaults = {"postgresql": 5432, "mysql": 3306}
    port = parsed.port or defaults.get(parsed.get_backend_name())
    return f"{parsed.host or 'localhost'}:{port}" if port else parsed.host or "localhost"


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the connection to the database failed or
    dropped, as opposed to a query the database refused; only those are worth retrying.
    Optuna wraps the driver's error in StorageInternalError, hence the walk down the chain."""
    from sqlalchemy import exc as sa

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError)):
            return True
        if isinstance(current, sa.DBAPIError) and current.connection_invalidated:
            return True
        # a driver's own error (psycopg, pymysql) when no SQLAlchemy error wraps it
        if {c.__name__ for c in type(current).__mro__} & {"OperationalError", "InterfaceError"}:
            return True
        current = current.__cause__ or current.__context__
    return False


class Ticker:
    """Says `message` with the seconds waited so far, at most once every SAY_EVERY seconds."""

    def __init__(self, message: str):
        self.message = message
        self.started = time.monotonic()
        self.said: float | None = None

    def waited(self) -> float:
        return time.monotonic() - self.started

    def tick(self) -> None:
        now = time.monotonic()
        if self.said is None or now - self.said >= SAY_EVERY:
            self.said = now
            print(f"{self.message}… {self.waited():.0f} s", file=sys.stderr, flush=True)


_retrying = threading.local()  # per thread: whether a retry already guards this call


def retrying(operation: Callable[[], T], where: str) -> T:
    """`operation()`, run again with backoff while the database at `where` is unreachable or
    drops the connection, saying so on stderr; DatabaseUnreachable once it stays away longer
    than retry_seconds(). Any other error passes through at once.

    Calls nest (a group of storage calls retried as one, each of them retried on its own):
    only the outermost retries, so the limit and the messages are counted once."""
    if getattr(_retrying, "active", False):
        return operation()
    _retrying.active = True
    try:
        ticker: Ticker | None = None
        delay = 0.25
        while True:
            try:
                result = operation()
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if ticker is None:
                    ticker = Ticker(f"database unreachable at {where}, retrying")
                limit = retry_seconds()
                if ticker.waited() >= limit:
                    raise DatabaseUnreachable(where, ticker.waited()) from None
                ticker.tick()
                time.sleep(min(delay, max(0.0, limit - ticker.waited())))
                delay = min(2 * delay, 2.0)
                continue
            if ticker is not None:
                print(
                    f"database at {where} is back after {ticker.waited():.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            return result
    finally:
        _retrying.active = False


def masked(spec: Spec) -> Spec:
    """The spec as written to disk: a storage or tracking URL's password never reaches a file."""
    update: dict[str, Any] = {}
    if spec.storage is not None:
        update["storage"] = mask_url(spec.storage)
    if spec.tracking is not None and spec.tracking.mlflow:
        update["tracking"] = spec.tracking.model_copy(
            update={"mlflow": mask_url(spec.tracking.mlflow)}
        )
    return spec.model_copy(update=update) if update else spec
