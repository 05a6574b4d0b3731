"""A PostgreSQL database made for one benchmark run and dropped after it, on the server at
$HPSEARCH_TEST_POSTGRES (default postgresql+psycopg://postgres@127.0.0.1:5432)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg

SERVER = os.environ.get("HPSEARCH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """The SQLAlchemy URL of a fresh database, dropped (connections and all) on leaving."""
    admin = SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    name = f"hpsearch_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{SERVER}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
