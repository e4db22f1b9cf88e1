"""From a store URL to a SQLAlchemy engine set up for durability, on SQLite or PostgreSQL.

Accepted URLs: ``sqlite:///PATH`` (``sqlite:////abs/path``), ``postgresql+psycopg://...``
and ``postgresql://`` / ``postgres://``, which mean psycopg 3 (the only PostgreSQL driver
relay365 depends on).  To keep relay365's tables in a PostgreSQL schema other than
``public``, give libpq's options in the URL: ``?options=-csearch_path%3Drelay365``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..errors import ConfigError, StoreError

# How long a SQLite writer waits for another process's write lock (the sendmail command
# and the daemon share the file) before giving up with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000
# A blackholed PostgreSQL host must not hang startup forever.
POSTGRES_CONNECT_TIMEOUT_S = 10
# Transactions that will write ask for this execution option; on SQLite they then take the
# write lock when they begin, so a read-then-write never fails half-way on a lock upgrade.
WRITE_OPTION = "relay365_write"

_SUPPORTED = "use sqlite:///PATH or postgresql://USER@HOST/DATABASE"


@dataclass(frozen=True)
class Place:
    """The database in words, for error messages (never with a password)."""

    name: str  # "the SQLite database at /var/lib/relay365/relay365.db"
    cannot_connect: str  # "cannot open the SQLite database at ..."


def database_url(raw: str) -> URL:
    """The SQLAlchemy URL for a store URL; ConfigError when relay365 cannot use it."""
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        scheme = raw.split("://", 1)[0] if "://" in raw else ""
        shown = f" (scheme {scheme!r})" if scheme else ""
        raise ConfigError(f"the store URL{shown} is not a database URL: {_SUPPORTED}") from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername not in ("sqlite", "postgresql+psycopg"):
        raise ConfigError(f"the store URL uses {url.drivername!r}, which relay365 does not support: "
                          f"{_SUPPORTED}")
    return url


def place(url: URL) -> Place:
    if url.get_backend_name() == "sqlite":
        where = url.database or ":memory:"
        return Place(f"the SQLite database at {where}", f"cannot open the SQLite database at {where}")
    host = url.host or url.query.get("host") or "the local socket"
    where = f"{host}:{url.port or 5432}/{url.database or ''}"
    return Place(f"PostgreSQL at {where}", f"cannot connect to PostgreSQL at {where}")


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory database or PostgreSQL."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def make_directory(path: Path, where: Place) -> None:
    """Create the directory of a SQLite database file, as a first start needs."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # what mkdir says when a file stands where a directory should
        raise StoreError(f"{where.cannot_connect}: cannot create its directory: {exc.filename} "
                         "is a file, not a directory") from exc
    except OSError as exc:
        raise StoreError(f"{where.cannot_connect}: cannot create its directory {path.parent}: "
                         f"{exc.strerror}") from exc


def build_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    # pre_ping: a pooled connection that died with a PostgreSQL restart is replaced, not reported.
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_engine(url: URL) -> Engine:
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN/COMMIT away from the sqlite3 module, which skips BEGIN before DDL and
        # SELECT: migrations must be one transaction, and reads must see one snapshot.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _use_wal(cursor)  # readers never block the writer
            # FULL: a commit is on disk before it returns, since "250 OK" promises the mail is kept.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _use_wal(cursor: sqlite3.Cursor) -> None:
    # WAL belongs to the file and is set once, by the first connection.  Switching takes an
    # exclusive lock, and SQLite answers SQLITE_BUSY at once, without waiting out the busy
    # timeout, when another connection is creating the same new database (nodes starting
    # together): so wait here, as long as the busy timeout would have.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
