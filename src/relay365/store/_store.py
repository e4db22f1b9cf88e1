"""``Store``: the async face of the store, one worker thread per store running sync SQLAlchemy."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, ParamSpec, Protocol, Self, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from ..errors import StoreError
from . import _bodies as bodies
from . import _outbox_queries as outbox
from . import _state_queries as state_queries
from ._engine import WRITE_OPTION, Place, build_engine, database_url, make_directory, place, sqlite_path
from ._errors import connecting, running
from ._groupcommit import GroupCommit, GroupCommitStats
from ._inputs import AttemptResult, NewMessage, new_queue_id
from ._migrations import migrate, schema_version
from ._outbox_queries import Incoming
from ._rows import (
    Attempt,
    ConnectionState,
    Event,
    MessageState,
    OutcomeCount,
    QueuedMessage,
    _require_aware,
)

P = ParamSpec("P")
T = TypeVar("T")

# The fields update_connection_state may change: the key and the timestamp are the store's.
_STATE_FIELDS = frozenset(f.name for f in dataclasses.fields(ConnectionState)) - {"connection", "updated_at"}
# Group commit: how long the writer may wait for the rest of a group (see _groupcommit), and
# the most messages one transaction takes.
GROUP_COMMIT_WINDOW = 0.002
GROUP_COMMIT_MAX = 256


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
    blocks on the database, and one process's SQLite writes are serialised.  Concurrent
    ``enqueue`` calls are grouped into one transaction (group commit).  Any failure of the
    database is raised as ``StoreError``, naming the database and the cause.
    """

    def __init__(self, engine: Engine, where: Place, cipher: Cipher, executor: ThreadPoolExecutor, *,
                 group_commit_window: float = GROUP_COMMIT_WINDOW,
                 group_commit_max: int = GROUP_COMMIT_MAX) -> None:
        # Use Store.open: it migrates the schema before anything reads it.
        self._engine = engine
        self._where = where
        self._cipher = cipher
        self._executor = executor
        self._closed = False
        self._enqueues: GroupCommit[Incoming, None] = GroupCommit(
            self._commit_incoming, max_batch=group_commit_max, window=group_commit_window,
            doing="queuing a message")

    @classmethod
    async def open(cls, url: str, box: Cipher, *, group_commit_window: float = GROUP_COMMIT_WINDOW,
                   group_commit_max: int = GROUP_COMMIT_MAX) -> Self:
        """Connect to ``url``, creating the SQLite file's directory, and apply pending migrations.

        ConfigError when the URL is not one relay365 supports; StoreError when the database
        cannot be reached or migrated.  ``group_commit_*``: see ``enqueue``.
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
        return cls(engine, where, box, executor, group_commit_window=group_commit_window,
                   group_commit_max=group_commit_max)

    async def close(self) -> None:
        """Close the database connections; calls made after this raise StoreError."""
        if self._closed:
            return
        self._closed = True
        # Messages already handed to enqueue are committed first, then the work already
        # queued runs: the executor is first in, first out.
        await self._enqueues.stop()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._engine.dispose)
        self._executor.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"Store({self._where.name}{', closed' if self._closed else ''})"

    async def _run(self, doing: str, write: bool, fn: Callable[Concatenate[Connection, P], T],
                   *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise StoreError(f"{self._where.name} was closed before {doing}")
        return await self._in_thread(doing, write, fn, *args, **kwargs)

    async def _in_thread(self, doing: str, write: bool, fn: Callable[Concatenate[Connection, P], T],
                         *args: P.args, **kwargs: P.kwargs) -> T:
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
                                     state_queries.load_token_cache, connection)
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
                        state_queries.save_token_cache, connection, ciphertext, datetime.now(UTC))

    async def delete_token_cache(self, connection: str) -> None:
        """Forget the connection's tokens (sign-out); nothing happens when there are none."""
        await self._run(f"deleting the token cache of {connection!r}", True,
                        state_queries.delete_token_cache, connection)

    # -- connection sign-in state ------------------------------------------------------------

    async def connection_state(self, connection: str) -> ConnectionState:
        """What is known of the connection's sign-in; a never-signed-in state when nothing is."""
        state = await self._run(f"reading the state of connection {connection!r}", False,
                                state_queries.connection_state, connection)
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

    # -- settings ------------------------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        """The value stored under ``key``, or None."""
        return await self._run(f"reading setting {key!r}", False, state_queries.get_setting, key)

    async def set_setting(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        await self._run(f"writing setting {key!r}", True, state_queries.set_setting, key, value,
                        datetime.now(UTC))

    # -- the outbox ------------------------------------------------------------------------------

    async def enqueue(self, message: NewMessage) -> str:
        """Queue ``message``; its queue id, once the message and its body are on disk.

        Concurrent calls share one transaction and one fsync (group commit): the writer
        takes every message waiting, up to ``group_commit_max``, and after a group of
        several lingers up to ``group_commit_window`` seconds for as many again.  When the
        transaction fails, every caller in it gets StoreError and none of its messages is
        queued: answer ``451`` and let the client retry.  A caller cancelled while waiting
        may still have its message queued (like a client that hangs up after DATA).
        """
        if self._closed:
            raise StoreError(f"{self._where.name} was closed before queuing a message")
        incoming = Incoming(new_queue_id(), datetime.now(UTC), message)
        await self._enqueues.submit(incoming)
        return incoming.id

    async def enqueue_claimed(self, message: NewMessage, worker: str, *, lease_seconds: float,
                              now: datetime | None = None) -> QueuedMessage:
        """Queue ``message`` already leased to ``worker``, who sends it now (a direct send).

        It is an outbox message like any other, in the same log, with the same attempts
        and events; no delivery engine claims it while ``worker`` holds the lease, and one
        does if the lease ends without an outcome (the sending process died).  One
        transaction of its own, not the group commit: the caller waits for Microsoft anyway.
        """
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be more than zero, got {lease_seconds}")
        if not worker:
            raise ValueError("worker must name the sending worker")
        now = _now(now, "now")
        incoming = Incoming(new_queue_id(), now, message)
        return await self._run(f"queuing a direct send for {worker}", True, outbox.insert_claimed,
                               incoming, worker, now + timedelta(seconds=lease_seconds))

    async def enqueue_many(self, messages: Sequence[NewMessage]) -> list[str]:
        """Queue several messages in one transaction of their own: all are queued, or none."""
        received_at = datetime.now(UTC)
        batch = [Incoming(new_queue_id(), received_at, message) for message in messages]
        if batch:
            await self._run(f"queuing {len(batch)} messages", True, outbox.insert_messages, batch)
        return [incoming.id for incoming in batch]

    async def _commit_incoming(self, batch: list[Incoming]) -> list[None]:
        # Runs even while close() drains the last messages: no closed check here.
        doing = f"queuing {'message ' + batch[0].id if len(batch) == 1 else f'{len(batch)} messages'}"
        await self._in_thread(doing, True, outbox.insert_messages, batch)
        return [None] * len(batch)

    @property
    def enqueue_stats(self) -> GroupCommitStats:
        """How enqueue calls were grouped into transactions so far (for metrics and tests)."""
        return self._enqueues.stats

    async def claim_due(self, worker: str, *, limit: int, lease_seconds: float, now: datetime | None = None,
                        connections: set[str] | None = None) -> list[QueuedMessage]:
        """Lease up to ``limit`` due messages to ``worker``, oldest first, and start an attempt on each.

        Due: queued (at once), deferred whose ``next_attempt_at`` has come, and sending whose
        lease ended (its worker died).  They become ``sending`` until ``now + lease_seconds``;
        renew the lease for longer sends.  Several workers and nodes never get the same message.
        ``worker`` must be unique to the task that will finish the attempt (host, pid, task).
        """
        if limit < 0 or lease_seconds <= 0:
            raise ValueError(f"limit must be zero or more and lease_seconds more than zero, "
                             f"got {limit} and {lease_seconds}")
        if not worker:
            raise ValueError("worker must name the claiming worker")
        now = _now(now, "now")
        if limit == 0 or connections == set():
            return []
        return await self._run(f"claiming due messages for {worker}", True, outbox.claim_due, worker,
                               limit, now, now + timedelta(seconds=lease_seconds), connections)

    async def renew_lease(self, message_id: str, worker: str, lease_seconds: float, *,
                          now: datetime | None = None) -> bool:
        """Extend ``worker``'s lease on the message to ``now + lease_seconds``; False if it lost it."""
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be more than zero, got {lease_seconds}")
        until = _now(now, "now") + timedelta(seconds=lease_seconds)
        return await self._run(f"renewing the lease of {worker} on {message_id}", True,
                               outbox.renew_lease, message_id, worker, until)

    async def message_body(self, message_id: str) -> bytes:
        """The raw message; StoreError when there is no such message or its body was pruned."""
        raw = await self._run(f"reading the body of {message_id}", False, bodies.read_body, message_id)
        if raw is None:
            raise StoreError(f"message {message_id} has no body in {self._where.name}: it was deleted, "
                             "or pruned after it was sent")
        return raw

    async def finish_attempt(self, message_id: str, worker: str, result: AttemptResult,
                             started_at: datetime, *, now: datetime | None = None) -> QueuedMessage:
        """Record how ``worker``'s attempt ended; the message as it is now.

        The one place an attempt's outcome is written: its attempts row, its event, the
        message's state (``result.outcome``), due time, last code/diagnosis, sent time, and
        the lease cleared, in one transaction.  A cancelled caller does not stop it.
        LeaseLost (a StoreError) when the worker no longer holds the message: its lease
        expired and another worker claimed it, or it was deleted; nothing is written then.
        """
        _require_aware("started_at", started_at)
        return await self._run(f"recording attempt of {worker} on {message_id}", True,
                               outbox.finish_attempt, message_id, worker, result, started_at,
                               _now(now, "now"))

    async def get_message(self, message_id: str) -> QueuedMessage | None:
        """The message, or None when the outbox has no such message."""
        return await self._run(f"reading message {message_id}", False, outbox.get_message, message_id)

    async def attempts(self, message_id: str) -> list[Attempt]:
        """The message's finished attempts, first first."""
        return await self._run(f"reading the attempts of {message_id}", False, outbox.attempts, message_id)

    async def events(self, message_id: str) -> list[Event]:
        """The message's changes of state, in order, from its arrival."""
        return await self._run(f"reading the events of {message_id}", False, outbox.events, message_id)

    async def list_messages(self, *, states: set[MessageState] | None = None, limit: int = 100,
                            recipient: str | None = None, since: datetime | None = None,
                            connection: str | None = None, recipient_contains: str | None = None,
                            sender: str | None = None, subject: str | None = None,
                            until: datetime | None = None) -> list[QueuedMessage]:
        """Messages newest first, received from ``since`` until before ``until``, in ``states``,
        of ``connection``.

        ``recipient``: an address (any case), or ``@domain`` for every address at a domain.
        ``recipient_contains``, ``sender``, ``subject``: a part of it, in any case (on SQLite
        ASCII letters only).  An empty text filters nothing.
        """
        if limit < 0:
            raise ValueError(f"limit must be zero or more, got {limit}")
        _require_aware("since", since)
        _require_aware("until", until)
        if limit == 0 or states == set():
            return []
        where = outbox.MessageFilter(states=states, recipient=recipient,
                                     recipient_contains=recipient_contains, sender=sender, subject=subject,
                                     since=since, until=until, connection=connection)
        return await self._run("listing messages", False, outbox.list_messages, where, limit)

    async def outcome_counts(self, periods: Sequence[tuple[datetime, datetime]]) -> list[OutcomeCount]:
        """For each (start, end) period, how many messages were sent and how many failed for good.

        Counts attempts (a dead letter retried and then sent counts once in each), direct
        sends included; a period includes its start, not its end.
        """
        for start, end in periods:
            _require_aware("start", start)
            _require_aware("end", end)
        if not periods:
            return []
        return await self._run("counting sent and failed messages", False, outbox.outcome_counts,
                               list(periods))

    async def queue_counts(self) -> dict[MessageState, int]:
        """How many messages are in each state (every state present, zero included)."""
        return await self._run("counting messages", False, outbox.queue_counts)

    async def retry(self, message_id: str, *, now: datetime | None = None) -> bool:
        """A failed (dead-letter) or deferred message back to ``queued``, due at once.

        False when there is no such message or it is not failed nor deferred.
        """
        moved = await self._run(f"retrying {message_id}", True, outbox.retry, _now(now, "now"),
                                message_id=message_id)
        return moved == 1

    async def retry_all_failed(self, *, connection: str | None = None, now: datetime | None = None) -> int:
        """Every failed message (of ``connection``, when given) back to ``queued``; how many."""
        return await self._run("retrying failed messages", True, outbox.retry, _now(now, "now"),
                               connection=connection)

    async def release_connection(self, connection: str, *, now: datetime | None = None) -> int:
        """The connection's deferred messages (held for a sign-in, or waiting to be tried
        again) back to ``queued``, due at once, because someone signed it in; how many."""
        return await self._run(f"releasing the mail of {connection}", True, outbox.release_connection,
                               connection, _now(now, "now"))

    async def defer_connection(self, connection: str, until: datetime, entry_id: str, detail: str, *,
                               now: datetime | None = None) -> int:
        """Hold the connection's queued and deferred messages until ``until``; how many.

        For a connection that cannot send (it needs sign-in): its messages wait without an
        attempt being counted, with the diagnosis as their last one.  Messages being sent
        are left to their workers; messages already deferred past ``until`` keep their time.
        """
        _require_aware("until", until)
        return await self._run(f"deferring the messages of connection {connection!r}", True,
                               outbox.defer_connection, connection, until, entry_id, detail,
                               _now(now, "now"))

    async def delete_message(self, message_id: str) -> bool:
        """Remove the message with its body, attempts and events; False when there is none.

        A message being sent can be deleted: its worker's finish_attempt then raises LeaseLost.
        """
        return await self._run(f"deleting {message_id}", True, outbox.delete_message, message_id)

    async def purge_failed(self) -> int:
        """Remove every failed message (the dead letter) with its body, attempts and events; how many."""
        return await self._run("purging failed messages", True, outbox.purge_failed)

    async def prune(self, *, sent_bodies_before: datetime, log_before: datetime) -> tuple[int, int]:
        """Retention: (bodies dropped, rows removed).

        Drops the bodies of messages sent before ``sent_bodies_before`` (their rows,
        attempts and events stay); removes sent and failed messages last changed before
        ``log_before``.  Queued, deferred and sending
        messages are never pruned.
        """
        _require_aware("sent_bodies_before", sent_bodies_before)
        _require_aware("log_before", log_before)
        return await self._run("pruning old messages", True, outbox.prune, sent_bodies_before, log_before)


def _now(now: datetime | None, name: str) -> datetime:
    if now is None:
        return datetime.now(UTC)
    _require_aware(name, now)
    return now


def _update_and_read(conn: Connection, connection: str, changes: dict[str, Any],
                     now: datetime) -> ConnectionState:
    state_queries.upsert_connection_state(conn, connection, changes, now)
    state = state_queries.connection_state(conn, connection)
    assert state is not None  # just written, in this transaction
    return state
