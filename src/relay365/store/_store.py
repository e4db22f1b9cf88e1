"""``Store``: the async face of the store, one worker thread per store running sync SQLAlchemy."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, Protocol, Self, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from ..errors import StoreError
from . import _queries as queries
from ._engine import WRITE_OPTION, Place, build_engine, database_url, make_directory, place, sqlite_path
from ._errors import connecting, running
from ._migrations import migrate, schema_version
from ._rows import ConnectionState, SendRecord

P = ParamSpec("P")
T = TypeVar("T")

# The fields update_connection_state may change: the key and the timestamp are the store's.
_STATE_FIELDS = frozenset(f.name for f in dataclasses.fields(ConnectionState)) - {"connection", "updated_at"}


class Cipher(Protocol):
    """What the store needs to keep secrets encrypted at rest (``relay365.auth``'s SecretBox)."""

    def encrypt(self, plaintext: str) -> bytes: ...
    def decrypt(self, ciphertext: bytes) -> str: ...


def _in_transaction(engine: Engine, where: Place, doing: str, write: bool,
                    fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
    with connecting(where):
        conn = engine.connect()
    # The connection closes inside the translation too: a rollback on a dead one can fail.
    with running(where, doing), conn:
        conn.execution_options(**{WRITE_OPTION: write})
        with conn.begin():
            return fn(conn, *args, **kwargs)


def _open_engine(url: URL, where: Place) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        make_directory(path, where)
    with connecting(where):
        engine = build_engine(url)
    try:
        _in_transaction(engine, where, "applying schema migrations", True, migrate)
    except BaseException:
        engine.dispose()
        raise
    return engine


class Store:
    """relay365's one durable store, on SQLite (default) or PostgreSQL.

    Every method runs its SQL in this store's single worker thread: the event loop never
    blocks on the database, and one process's SQLite writes are serialised.  Any failure
    of the database is raised as ``StoreError``, naming the database and the cause.
    """

    def __init__(self, engine: Engine, where: Place, cipher: Cipher, executor: ThreadPoolExecutor) -> None:
        # Use Store.open: it migrates the schema before anything reads it.
        self._engine = engine
        self._where = where
        self._cipher = cipher
        self._executor = executor
        self._closed = False

    @classmethod
    async def open(cls, url: str, box: Cipher) -> Self:
        """Connect to ``url``, creating the SQLite file's directory, and apply pending migrations.

        ConfigError when the URL is not one relay365 supports; StoreError when the database
        cannot be reached or migrated.
        """
        db_url = database_url(url)
        where = place(db_url)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay365-store")
        try:
            engine = await asyncio.get_running_loop().run_in_executor(
                executor, _open_engine, db_url, where)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(engine, where, box, executor)

    async def close(self) -> None:
        """Close the database connections; calls made after this raise StoreError."""
        if self._closed:
            return
        self._closed = True
        # Work already queued runs first: the executor is first in, first out.
        await asyncio.get_running_loop().run_in_executor(self._executor, self._engine.dispose)
        self._executor.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"Store({self._where.name}{', closed' if self._closed else ''})"

    async def _run(self, doing: str, write: bool, fn: Callable[Concatenate[Connection, P], T],
                   *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise StoreError(f"{self._where.name} was closed before {doing}")
        call = functools.partial(_in_transaction, self._engine, self._where, doing, write,
                                 fn, *args, **kwargs)
        # A cancelled caller does not stop the thread: the transaction still commits or rolls back whole.
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def schema_version(self) -> int:
        """The number of the last migration applied to this database."""
        return await self._run("reading the schema version", False, schema_version)

    # -- MSAL token cache, encrypted at rest ------------------------------------------------

    async def load_token_cache(self, connection: str) -> str | None:
        """The connection's serialized MSAL token cache; None when nobody has signed in."""
        ciphertext = await self._run(f"loading the token cache of {connection!r}", False,
                                     queries.load_token_cache, connection)
        if ciphertext is None:
            return None
        try:
            return self._cipher.decrypt(ciphertext)
        except StoreError as exc:
            raise StoreError(f"the token cache of connection {connection!r}: {exc.message}") from exc

    async def save_token_cache(self, connection: str, serialized: str) -> None:
        """Keep the connection's serialized MSAL token cache (encrypted: it holds refresh tokens)."""
        ciphertext = self._cipher.encrypt(serialized)
        await self._run(f"saving the token cache of {connection!r}", True,
                        queries.save_token_cache, connection, ciphertext, datetime.now(UTC))

    async def delete_token_cache(self, connection: str) -> None:
        """Forget the connection's tokens (sign-out); nothing happens when there are none."""
        await self._run(f"deleting the token cache of {connection!r}", True,
                        queries.delete_token_cache, connection)

    # -- connection sign-in state ------------------------------------------------------------

    async def connection_state(self, connection: str) -> ConnectionState:
        """What is known of the connection's sign-in; a never-signed-in state when nothing is."""
        state = await self._run(f"reading the state of connection {connection!r}", False,
                                queries.connection_state, connection)
        return state or ConnectionState(connection)

    async def update_connection_state(self, connection: str, **changes: Any) -> ConnectionState:
        """Set the given ConnectionState fields (others keep their value); the state after it.

        TypeError for a field ConnectionState does not have, ValueError for a naive datetime.
        """
        unknown = set(changes) - _STATE_FIELDS
        if unknown:
            raise TypeError(f"update_connection_state() got fields it cannot set: {sorted(unknown)}; "
                            f"it sets {sorted(_STATE_FIELDS)}")
        dataclasses.replace(ConnectionState(connection), **changes)  # validates the values
        doing = f"updating the state of connection {connection!r}"
        return await self._run(doing, True, _update_and_read, connection, changes, datetime.now(UTC))

    # -- send log ------------------------------------------------------------------------------

    async def record_send(self, record: SendRecord) -> None:
        """Add a message sent directly to the send log."""
        await self._run(f"recording send {record.id}", True, queries.insert_send, record)

    async def recent_sends(self, limit: int = 50, connection: str | None = None) -> list[SendRecord]:
        """The latest sends, newest first; only those of ``connection`` when given."""
        if limit < 0:
            raise ValueError(f"limit must be zero or more, got {limit}")
        return await self._run("reading recent sends", False, queries.recent_sends, limit, connection)

    # -- settings ------------------------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        """The value stored under ``key``, or None."""
        return await self._run(f"reading setting {key!r}", False, queries.get_setting, key)

    async def set_setting(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        await self._run(f"writing setting {key!r}", True, queries.set_setting, key, value, datetime.now(UTC))


def _update_and_read(conn: Connection, connection: str, changes: dict[str, Any],
                     now: datetime) -> ConnectionState:
    queries.upsert_connection_state(conn, connection, changes, now)
    state = queries.connection_state(conn, connection)
    assert state is not None  # just written, in this transaction
    return state
