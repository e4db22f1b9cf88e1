"""The outbox in relay365.store, on SQLite and PostgreSQL: queue, claim, attempts, retries, retention.

Time is given explicitly (``now=``) wherever the outbox compares times, so nothing waits
for a clock.  Backends come from the ``db`` fixture (test_store.py, shared by conftest.py): PostgreSQL is
never skipped.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from relay365.errors import StoreError
from relay365.store import (
    Attempt,
    AttemptResult,
    Event,
    LeaseLost,
    MessageState,
    NewMessage,
    QueuedMessage,
    Store,
    _bodies,
    _outbox_queries,
    new_queue_id,
)
from tests.integration.relay365.test_store import (
    POSTGRES_URL,
    Database,
    _libpq,
    new_box,
    postgres_schema,
    run,
)

QUEUED, SENDING, SENT, DEFERRED, FAILED = (MessageState.QUEUED, MessageState.SENDING, MessageState.SENT,
                                           MessageState.DEFERRED, MessageState.FAILED)


def new_message(n: int = 0, connection: str = "contoso", recipients: tuple[str, ...] = ("a@example.com",),
                raw: bytes | None = None, source: str = "smtp") -> NewMessage:
    body = raw if raw is not None else (
        f"From: app@contoso.com\r\nSubject: message {n}\r\n\r\nhello {n}\r\n".encode())
    return NewMessage(connection=connection, sender="app@contoso.com", recipients=recipients, raw=body,
                      source=source, client="127.0.0.1", subject=f"message {n}")  # type: ignore[arg-type]


def after(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


SENT_OK = AttemptResult("sent", "graph", request_id="req-1")


def deferred_until(when: datetime) -> AttemptResult:
    return AttemptResult("deferred", "graph", code="ApplicationThrottled", entry_id="GRAPH-THROTTLED",
                         request_id="req-2", detail="429 Too Many Requests", next_attempt_at=when)


FAILED_403 = AttemptResult("failed", "graph", code="ErrorSendAsDenied", entry_id="GRAPH-SEND-AS-DENIED",
                           request_id="req-3", detail="403 from Graph")


async def claim_one(store: Store, worker: str, now: datetime, lease_seconds: float = 60) -> QueuedMessage:
    [claimed] = await store.claim_due(worker, limit=1, lease_seconds=lease_seconds, now=now)
    return claimed


async def finished(store: Store, result: AttemptResult, n: int = 0, now: datetime | None = None,
                   **fields: object) -> QueuedMessage:
    """A message taken through one attempt that ended with ``result``."""
    message_id = await store.enqueue(new_message(n, **fields))  # type: ignore[arg-type]
    when = now or datetime.now(UTC)
    claimed = await store.claim_due("setup", limit=1, lease_seconds=60, now=when,
                                    connections={str(fields.get("connection", "contoso"))})
    assert [m.id for m in claimed] == [message_id]
    return await store.finish_attempt(message_id, "setup", result, when, now=when)


# -- the life of a message ---------------------------------------------------------------------

def test_enqueue_claim_and_send(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        raw = b"From: app@contoso.com\r\nTo: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
        message_id = await store.enqueue(new_message(raw=raw, recipients=("a@example.com", "B@Example.com")))
        assert re.fullmatch(r"[0-9A-F]{16}", message_id)

        queued = await store.get_message(message_id)
        assert queued is not None
        assert (queued.state, queued.attempts, queued.size, queued.source, queued.client) == (
            QUEUED, 0, len(raw), "smtp", "127.0.0.1")
        assert queued.recipients == ("a@example.com", "B@Example.com")
        assert (queued.subject, queued.connection, queued.sender) == (
            "message 0", "contoso", "app@contoso.com")
        assert queued.next_attempt_at is None and queued.lease_owner is None and queued.sent_at is None
        assert queued.received_at.tzinfo is UTC
        assert await store.message_body(message_id) == raw

        now = datetime.now(UTC)
        [sending] = await store.claim_due("w1", limit=10, lease_seconds=60, now=now)
        assert (sending.id, sending.state, sending.lease_owner, sending.lease_until, sending.attempts) == (
            message_id, SENDING, "w1", after(now, 60), 1)
        assert await store.claim_due("w2", limit=10, lease_seconds=60, now=now) == []  # held by w1

        done = await store.finish_attempt(message_id, "w1", SENT_OK, now, now=after(now, 2))
        assert (done.state, done.sent_at, done.request_id, done.attempts) == (SENT, after(now, 2), "req-1", 1)
        assert (done.lease_owner, done.lease_until, done.next_attempt_at) == (None, None, None)
        assert await store.get_message(message_id) == done
        assert await store.claim_due("w2", limit=10, lease_seconds=60, now=after(now, 3600)) == []

        assert await store.attempts(message_id) == [Attempt(
            message_id=message_id, number=1, started_at=now, finished_at=after(now, 2), connection="contoso",
            transport="graph", outcome="sent", code=None, entry_id=None, request_id="req-1", detail=None,
            worker="w1")]
        events = await store.events(message_id)
        assert [(e.from_state, e.to_state) for e in events] == [(None, QUEUED), (QUEUED, SENDING),
                                                                 (SENDING, SENT)]
        assert events[1:] == [Event(message_id, now, QUEUED, SENDING, "claimed by w1"),
                              Event(message_id, after(now, 2), SENDING, SENT,
                                    "attempt 1 by w1 over graph")]
        assert events[0].detail == "received by smtp from 127.0.0.1"
        assert (await store.queue_counts())[SENT] == 1
        await store.close()
    run(scenario)


def test_a_deferred_message_is_claimed_again_only_when_due(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        message_id = await store.enqueue(new_message())
        now = datetime.now(UTC)
        await claim_one(store, "w1", now)
        deferred = await store.finish_attempt(message_id, "w1", deferred_until(after(now, 300)), now,
                                              now=after(now, 1))
        assert (deferred.state, deferred.next_attempt_at, deferred.attempts) == (DEFERRED, after(now, 300), 1)
        assert (deferred.last_code, deferred.last_entry_id, deferred.last_detail, deferred.request_id) == (
            "ApplicationThrottled", "GRAPH-THROTTLED", "429 Too Many Requests", "req-2")
        assert deferred.lease_owner is None and deferred.sent_at is None

        assert await store.claim_due("w2", limit=5, lease_seconds=60, now=after(now, 299)) == []
        again = await claim_one(store, "w2", after(now, 300))  # due exactly then
        assert (again.id, again.state, again.attempts, again.next_attempt_at) == (
            message_id, SENDING, 2, None)
        done = await store.finish_attempt(message_id, "w2", SENT_OK, after(now, 300), now=after(now, 301))
        assert done.state == SENT
        assert [a.outcome for a in await store.attempts(message_id)] == ["deferred", "sent"]
        assert [a.number for a in await store.attempts(message_id)] == [1, 2]
        assert [(e.from_state, e.to_state) for e in await store.events(message_id)] == [
            (None, QUEUED), (QUEUED, SENDING), (SENDING, DEFERRED), (DEFERRED, SENDING), (SENDING, SENT)]
        await store.close()
    run(scenario)


def test_an_expired_lease_goes_to_another_worker_and_the_first_is_refused(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        message_id = await store.enqueue(new_message())
        now = datetime.now(UTC)
        await claim_one(store, "w1", now, lease_seconds=60)
        assert await store.renew_lease(message_id, "w1", 60, now=after(now, 30))  # now held until +90
        assert await store.claim_due("w2", limit=5, lease_seconds=60, now=after(now, 89)) == []
        assert not await store.renew_lease(message_id, "w2", 60, now=after(now, 30))  # not w2's

        # w1 died (or hangs): once its lease is over, the message comes back to w2.
        taken = await claim_one(store, "w2", after(now, 90))
        assert (taken.id, taken.lease_owner, taken.attempts) == (message_id, "w2", 2)
        assert not await store.renew_lease(message_id, "w1", 60, now=after(now, 91))

        with pytest.raises(LeaseLost, match=f"w1 no longer holds message {message_id} \\(held by w2\\)"):
            await store.finish_attempt(message_id, "w1", FAILED_403, now, now=after(now, 95))
        assert await store.attempts(message_id) == []  # the refused outcome left nothing behind
        assert (await store.get_message(message_id)) == taken

        done = await store.finish_attempt(message_id, "w2", SENT_OK, after(now, 90), now=after(now, 92))
        assert done.state == SENT
        [attempt] = await store.attempts(message_id)
        assert (attempt.number, attempt.worker) == (2, "w2")  # attempt 1 died with w1: no row
        events = await store.events(message_id)
        assert [(e.from_state, e.to_state) for e in events] == [
            (None, QUEUED), (QUEUED, SENDING), (SENDING, SENDING), (SENDING, SENT)]
        assert events[2].detail == "lease of w1 expired; claimed by w2"

        with pytest.raises(LeaseLost, match="now sent"):  # finishing twice is refused too
            await store.finish_attempt(message_id, "w2", SENT_OK, after(now, 90), now=after(now, 93))
        assert issubclass(LeaseLost, StoreError)
        await store.close()
    run(scenario)


def test_a_direct_send_is_queued_already_leased_and_comes_back_if_its_sender_dies(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        now = datetime.now(UTC)
        held = await store.enqueue_claimed(new_message(source="api"), "python:1", lease_seconds=60, now=now)
        assert (held.state, held.lease_owner, held.attempts, held.source) == (SENDING, "python:1", 1, "api")
        assert await store.claim_due("engine", limit=5, lease_seconds=60, now=after(now, 59)) == []
        assert await store.message_body(held.id) == new_message().raw

        # The sending process died: when its lease ends, the delivery engine takes the message over.
        taken = await claim_one(store, "engine", after(now, 60))
        assert (taken.id, taken.attempts) == (held.id, 2)
        done = await store.finish_attempt(held.id, "engine", SENT_OK, after(now, 60), now=after(now, 61))
        assert done.state == SENT
        assert [(e.from_state, e.to_state) for e in await store.events(held.id)] == [
            (None, QUEUED), (QUEUED, SENDING), (SENDING, SENDING), (SENDING, SENT)]

        sent = await store.enqueue_claimed(new_message(2), "python:2", lease_seconds=60, now=now)
        done = await store.finish_attempt(sent.id, "python:2", SENT_OK, now, now=after(now, 1))
        assert done.state == SENT
        with pytest.raises(ValueError, match="lease_seconds"):
            await store.enqueue_claimed(new_message(), "python:3", lease_seconds=0)
        await store.close()
    run(scenario)


def test_finishing_a_deleted_message_is_refused(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        message_id = await store.enqueue(new_message())
        now = datetime.now(UTC)
        await claim_one(store, "w1", now)
        assert await store.delete_message(message_id)
        with pytest.raises(LeaseLost, match="no longer in the outbox"):
            await store.finish_attempt(message_id, "w1", SENT_OK, now, now=now)
        await store.close()
    run(scenario)


def test_claims_are_oldest_first_limited_and_filtered_by_connection(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        ids = [await store.enqueue(new_message(n, connection="contoso" if n % 2 else "fabrikam"))
               for n in range(6)]
        now = datetime.now(UTC)
        first = await store.claim_due("w1", limit=2, lease_seconds=60, now=now)
        assert [m.id for m in first] == ids[:2]
        contoso = await store.claim_due("w1", limit=10, lease_seconds=60, now=now, connections={"contoso"})
        assert [m.id for m in contoso] == [ids[3], ids[5]]
        assert await store.claim_due("w1", limit=10, lease_seconds=60, now=now, connections=set()) == []
        assert await store.claim_due("w1", limit=0, lease_seconds=60, now=now) == []
        rest = await store.claim_due("w1", limit=10, lease_seconds=60, now=now)
        assert [m.id for m in rest] == [ids[2], ids[4]]
        with pytest.raises(ValueError, match="lease_seconds"):
            await store.claim_due("w1", limit=1, lease_seconds=0, now=now)
        with pytest.raises(ValueError, match="timezone-aware"):
            await store.claim_due("w1", limit=1, lease_seconds=1, now=datetime(2026, 3, 1))
        await store.close()
    run(scenario)


def test_two_nodes_claiming_together_never_get_the_same_message(db: Database) -> None:
    async def scenario() -> None:
        first = await Store.open(db.url, new_box())
        second = await Store.open(db.url, new_box())  # another node: its own thread and connections
        ids = await first.enqueue_many([new_message(n) for n in range(300)])

        async def drain(store: Store, worker: str) -> list[str]:
            got: list[str] = []
            while batch := await store.claim_due(worker, limit=7, lease_seconds=300):
                got += [m.id for m in batch]
            return got

        one, two = await asyncio.gather(drain(first, "node1"), drain(second, "node2"))
        assert not set(one) & set(two)
        assert sorted(one + two) == sorted(ids)
        assert len(one + two) == 300
        counts = await first.queue_counts()
        assert counts[SENDING] == 300
        await first.close()
        await second.close()
    run(scenario)


def test_postgresql_claims_skip_rows_another_node_holds_locked() -> None:
    with postgres_schema() as schema:
        # lock_timeout: were the claim to wait for the lock instead of skipping, it fails, not hangs.
        url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg").update_query_dict(
            {"options": f"-csearch_path={schema} -clock_timeout=5000"})

        async def scenario() -> None:
            store = await Store.open(url.render_as_string(hide_password=False), new_box())
            ids = await store.enqueue_many([new_message(n) for n in range(10)])
            with psycopg.connect(_libpq(POSTGRES_URL, schema)) as other:  # a transaction, held open
                locked = [row[0] for row in other.execute(
                    "SELECT id FROM messages ORDER BY id LIMIT 4 FOR UPDATE")]
                assert locked == ids[:4]
                claimed = await store.claim_due("w1", limit=10, lease_seconds=60)
                assert [m.id for m in claimed] == ids[4:]
                other.rollback()
            claimed = await store.claim_due("w1", limit=10, lease_seconds=60)
            assert [m.id for m in claimed] == ids[:4]
            await store.close()
        run(scenario)


# -- group commit ------------------------------------------------------------------------------

def test_concurrent_enqueues_share_a_few_transactions_and_all_are_durable(db: Database) -> None:
    messages = [new_message(n) for n in range(200)]

    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        ids = await asyncio.gather(*(store.enqueue(m) for m in messages))
        stats = store.enqueue_stats
        assert (stats.items, stats.failed_batches) == (200, 0)
        assert stats.batches <= 3  # all 200 wait together: one transaction, one fsync
        assert len(set(ids)) == 200
        await store.close()

        reopened = await Store.open(db.url, new_box())
        for message_id, message in zip(ids, messages, strict=True):
            assert await reopened.message_body(message_id) == message.raw
        assert (await reopened.queue_counts())[QUEUED] == 200
        await reopened.close()
    run(scenario)
    assert db.query("SELECT count(*) FROM messages") == [(200,)]
    assert db.query("SELECT count(*) FROM message_events WHERE to_state = 'queued'") == [(200,)]


def test_a_failing_batch_fails_every_caller_and_queues_none(db: Database,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(conn: object, bodies: object) -> None:
        raise OperationalError("INSERT INTO message_bodies", {}, sqlite3.OperationalError("disk I/O error"))

    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        with monkeypatch.context() as patch:
            patch.setattr(_outbox_queries, "write_bodies", disk_full)  # after the messages' rows
            results = await asyncio.gather(*(store.enqueue(new_message(n)) for n in range(50)),
                                           return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results), results
        assert len({id(r) for r in results}) == 50  # one error each
        assert all("failed while queuing 50 messages: disk I/O error" in r.message
                   for r in results if isinstance(r, StoreError))
        assert store.enqueue_stats.failed_batches == 1
        assert await store.list_messages() == []  # rolled back whole: no row without its body

        # The writer goes on: the next message is queued.
        message_id = await store.enqueue(new_message(99))
        assert [m.id for m in await store.list_messages()] == [message_id]

        # A real failure of the database, for a whole group.
        db.query("DROP TABLE message_bodies")
        results = await asyncio.gather(*(store.enqueue(new_message(n)) for n in range(20)),
                                       return_exceptions=True)
        assert all(isinstance(r, StoreError) and "message_bodies" in r.message for r in results), results
        assert [m.id for m in await store.list_messages()] == [message_id]
        await store.close()
    run(scenario)


def test_close_commits_what_is_waiting_then_refuses(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        *ids, _ = await asyncio.gather(*(store.enqueue(new_message(n)) for n in range(10)), store.close())
        assert len(set(ids)) == 10
        with pytest.raises(StoreError, match="was closed before queuing a message"):
            await store.enqueue(new_message())
        reopened = await Store.open(db.url, new_box())
        assert {m.id for m in await reopened.list_messages()} == set(ids)
        await reopened.close()
    run(scenario)


def test_large_bodies_stream_in_and_out_unchanged(db: Database) -> None:
    large = os.urandom(_bodies.STREAM_FROM * 3 + 12345)  # streamed: blob I/O, COPY
    edge = os.urandom(_bodies.STREAM_FROM)  # the smallest streamed
    small = os.urandom(_bodies.STREAM_FROM - 1)  # the largest batched

    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        raws = [large, b"", small, edge, b"x"]
        ids = await asyncio.gather(*(store.enqueue(new_message(n, raw=raw)) for n, raw in enumerate(raws)))
        for message_id, raw in zip(ids, raws, strict=True):
            assert await store.message_body(message_id) == raw
            message = await store.get_message(message_id)
            assert message is not None and message.size == len(raw)
        await store.close()
    run(scenario)


def test_enqueue_many_is_all_or_nothing(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        ids = await store.enqueue_many([new_message(n) for n in range(3)])
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert await store.enqueue_many([]) == []
        db.query("DROP TABLE message_events")
        with pytest.raises(StoreError, match="failed while queuing 2 messages"):
            await store.enqueue_many([new_message(5), new_message(6)])
        assert {m.id for m in await store.list_messages()} == set(ids)
        await store.close()
    run(scenario)


# -- the dead letter, by hand ------------------------------------------------------------------

def test_retry_delete_and_purge(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        now = datetime.now(UTC)
        dead = await finished(store, FAILED_403, 1, now)
        assert (dead.state, dead.last_code, dead.last_entry_id) == (FAILED, "ErrorSendAsDenied",
                                                                    "GRAPH-SEND-AS-DENIED")
        assert await store.claim_due("w", limit=5, lease_seconds=60, now=after(now, 10**6)) == []

        assert await store.retry(dead.id, now=after(now, 5))
        retried = await store.get_message(dead.id)
        assert retried is not None
        assert (retried.state, retried.next_attempt_at, retried.attempts) == (QUEUED, None, 1)
        assert retried.last_entry_id == "GRAPH-SEND-AS-DENIED"  # the diagnosis stays until the next attempt
        assert (await store.events(dead.id))[-1] == Event(dead.id, after(now, 5), FAILED, QUEUED,
                                                          "retried by hand")
        assert not await store.retry(dead.id)  # already queued
        assert not await store.retry("NO-SUCH-MESSAGE")
        assert [m.id for m in await store.claim_due("w", limit=5, lease_seconds=60, now=now)] == [dead.id]

        later = await finished(store, deferred_until(after(now, 3600)), 2, now)
        others = [await finished(store, FAILED_403, n, now, connection=c)
                  for n, c in ((3, "contoso"), (4, "contoso"), (5, "fabrikam"))]
        assert await store.retry(later.id)  # a deferred message can be hurried
        assert await store.retry_all_failed(connection="fabrikam") == 1
        assert await store.retry_all_failed() == 2
        assert await store.retry_all_failed() == 0
        assert {m.id for m in await store.list_messages(states={QUEUED})} == {later.id} | {
            m.id for m in others}

        gone = await finished(store, FAILED_403, 6, now, connection="northwind")
        assert await store.delete_message(gone.id)
        assert not await store.delete_message(gone.id)
        assert await store.get_message(gone.id) is None
        assert await store.attempts(gone.id) == [] and await store.events(gone.id) == []
        with pytest.raises(StoreError, match=f"message {gone.id} has no body"):
            await store.message_body(gone.id)

        for n in range(7, 10):
            await finished(store, FAILED_403, n, now, connection="northwind")
        assert await store.purge_failed() == 3
        assert await store.purge_failed() == 0
        assert (await store.queue_counts())[FAILED] == 0
        await store.close()
    run(scenario)
    # Their bodies, attempts and events went with them.
    for table in ("message_bodies", "attempts", "message_events"):
        assert db.query(f"SELECT count(*) FROM {table} "  # noqa: S608 (a table name of ours)
                        "WHERE message_id NOT IN (SELECT id FROM messages)") == [(0,)]


def test_defer_connection_holds_its_waiting_messages_without_counting_attempts(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        now = datetime.now(UTC)
        until = after(now, 1800)
        soon = await finished(store, deferred_until(after(now, 60)), 1, now)
        late = await finished(store, deferred_until(after(now, 7200)), 2, now)
        busy = await store.enqueue(new_message(5))
        await store.claim_due("w9", limit=1, lease_seconds=1000, now=now, connections={"contoso"})
        queued = await store.enqueue(new_message(3))
        other = await store.enqueue(new_message(4, connection="fabrikam"))

        held = await store.defer_connection("contoso", until, "R365-NEEDS-SIGN-IN", "AADSTS700082", now=now)
        assert held == 2
        for message_id, attempts in ((soon.id, 1), (queued, 0)):
            message = await store.get_message(message_id)
            assert message is not None
            assert (message.state, message.next_attempt_at, message.attempts) == (DEFERRED, until, attempts)
            assert (message.last_entry_id, message.last_detail) == ("R365-NEEDS-SIGN-IN", "AADSTS700082")
        kept = await store.get_message(late.id)
        assert kept is not None and kept.next_attempt_at == after(now, 7200)  # already later: untouched
        being_sent = await store.get_message(busy)
        assert being_sent is not None and being_sent.state == SENDING  # left to its worker
        assert (await store.events(queued))[-1] == Event(
            queued, now, QUEUED, DEFERRED,
            f"held until {until.isoformat()}: R365-NEEDS-SIGN-IN; AADSTS700082")

        due = await store.claim_due("w", limit=10, lease_seconds=60, now=after(now, 61))
        assert [m.id for m in due] == [other]
        due = await store.claim_due("w", limit=10, lease_seconds=60, now=until, connections={"contoso"})
        assert {m.id for m in due} == {soon.id, queued, busy}  # busy: w9's lease ran out meanwhile
        await store.close()
    run(scenario)


def test_release_connection_makes_its_held_mail_due_at_once(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        now = datetime.now(UTC)
        held = await store.enqueue(new_message(1))
        other = await store.enqueue(new_message(2, connection="fabrikam"))
        until = after(now, 1800)
        for name in ("contoso", "fabrikam"):
            assert await store.defer_connection(name, until, "R365-NEEDS-SIGN-IN", "", now=now) == 1
        assert await store.release_connection("contoso", now=after(now, 5)) == 1
        message = await store.get_message(held)
        assert message is not None and (message.state, message.next_attempt_at) == (QUEUED, None)
        untouched = await store.get_message(other)
        assert untouched is not None and untouched.state == DEFERRED
        due = await store.claim_due("w", limit=10, lease_seconds=60, now=after(now, 5))
        assert [m.id for m in due] == [held]
        await store.close()
    run(scenario)


# -- retention, counts, listing ----------------------------------------------------------------

def test_prune_drops_sent_bodies_then_old_rows(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        now = datetime.now(UTC)
        sent = await finished(store, SENT_OK, 1, now)
        dead = await finished(store, FAILED_403, 2, now)
        waiting = await store.enqueue(new_message(3))

        assert await store.prune(sent_bodies_before=now, log_before=after(now, -86400)) == (0, 0)
        assert await store.prune(sent_bodies_before=after(now, 1), log_before=after(now, -86400)) == (1, 0)
        kept = await store.get_message(sent.id)
        assert kept is not None and kept.state == SENT  # the row stays, with its attempts and events
        assert len(await store.attempts(sent.id)) == 1
        with pytest.raises(StoreError, match="pruned after it was sent"):
            await store.message_body(sent.id)
        assert await store.message_body(dead.id)  # a dead letter keeps its body, to be retried

        assert await store.prune(sent_bodies_before=after(now, 1), log_before=after(now, 1)) == (0, 2)
        assert await store.get_message(sent.id) is None and await store.get_message(dead.id) is None
        assert [m.id for m in await store.list_messages()] == [waiting]  # never pruned while waiting
        await store.close()
    run(scenario)


def test_queue_counts_name_every_state(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        assert await store.queue_counts() == dict.fromkeys(MessageState, 0)
        now = datetime.now(UTC)
        await finished(store, SENT_OK, 1, now)
        await finished(store, FAILED_403, 2, now)
        await finished(store, deferred_until(after(now, 60)), 3, now)
        await store.enqueue_many([new_message(4), new_message(5)])
        await store.claim_due("w", limit=1, lease_seconds=60, now=now)
        assert await store.queue_counts() == {QUEUED: 1, SENDING: 1, SENT: 1, DEFERRED: 1, FAILED: 1}
        await store.close()
    run(scenario)


def test_list_messages_newest_first_by_state_recipient_time_and_connection(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        a = await store.enqueue(new_message(1, recipients=("Megan_B@Contoso.com", "x@fabrikam.com")))
        b = await store.enqueue(new_message(2, recipients=("meganxb@contoso.com",)))
        middle = datetime.now(UTC)
        c = await store.enqueue(new_message(3, recipients=("zoé@exemple.fr", "100%@example.com"),
                                            connection="fabrikam"))
        assert [m.id for m in await store.list_messages()] == [c, b, a]
        assert [m.id for m in await store.list_messages(limit=2)] == [c, b]
        assert await store.list_messages(limit=0) == []
        # An address matches whole and in any case; "_" and "%" are themselves, not wildcards.
        assert [m.id for m in await store.list_messages(recipient="megan_b@contoso.com")] == [a]
        assert [m.id for m in await store.list_messages(recipient="MEGANXB@contoso.com")] == [b]
        assert await store.list_messages(recipient="megan@contoso.com") == []
        assert await store.list_messages(recipient="b@contoso.com") == []
        assert [m.id for m in await store.list_messages(recipient="@contoso.com")] == [b, a]
        assert [m.id for m in await store.list_messages(recipient="@fabrikam.com")] == [a]
        assert [m.id for m in await store.list_messages(recipient="zoé@exemple.fr")] == [c]
        assert [m.id for m in await store.list_messages(recipient="100%@example.com")] == [c]
        assert await store.list_messages(recipient="1000@example.com") == []
        assert [m.id for m in await store.list_messages(since=middle)] == [c]
        assert [m.id for m in await store.list_messages(connection="contoso")] == [b, a]
        await store.claim_due("w", limit=1, lease_seconds=60)
        assert [m.id for m in await store.list_messages(states={SENDING})] == [a]
        assert [m.id for m in await store.list_messages(states={QUEUED, SENDING},
                                                        recipient="@contoso.com")] == [b, a]
        assert await store.list_messages(states=set()) == []
        await store.close()
    run(scenario)


def test_list_messages_finds_parts_of_recipient_sender_and_subject_until_a_time(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        a = await store.enqueue(NewMessage("contoso", "Info@Contoso.com", ("Megan_B@Contoso.com",), b"x",
                                           "smtp", None, subject="Invoice 100% paid"))
        middle = datetime.now(UTC)
        b = await store.enqueue(NewMessage("contoso", "shop@fabrikam.com", ("dl@example.org", "x@y.org"),
                                           b"x", "http", None, subject="Order shipped"))
        assert [m.id for m in await store.list_messages(recipient_contains="megan_b@")] == [a]
        assert [m.id for m in await store.list_messages(recipient_contains="EXAMPLE.ORG")] == [b]
        assert [m.id for m in await store.list_messages(recipient_contains=".org")] == [b]
        assert await store.list_messages(recipient_contains="megan%b") == []  # % is itself
        assert [m.id for m in await store.list_messages(sender="info@contoso")] == [a]
        assert [m.id for m in await store.list_messages(sender="FABRIKAM")] == [b]
        assert [m.id for m in await store.list_messages(subject="100%")] == [a]
        assert [m.id for m in await store.list_messages(subject="order")] == [b]
        assert await store.list_messages(subject="100_") == []  # _ is itself, not any letter
        assert [m.id for m in await store.list_messages(subject="", sender="")] == [b, a]
        assert [m.id for m in await store.list_messages(until=middle)] == [a]
        assert [m.id for m in await store.list_messages(since=middle, until=after(middle, 60))] == [b]
        assert [m.id for m in await store.list_messages(states={QUEUED}, sender="o", subject="i",
                                                        recipient_contains="@")] == [b, a]
        with pytest.raises(ValueError, match="until must be timezone-aware"):
            await store.list_messages(until=datetime(2026, 1, 1))
        await store.close()
    run(scenario)


def test_outcome_counts_per_period_from_attempts(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        day = datetime(2026, 3, 2, tzinfo=UTC)
        periods = [(day, after(day, 86400)), (after(day, 86400), after(day, 2 * 86400)),
                   (day, after(day, 2 * 86400))]
        assert [(c.sent, c.failed) for c in await store.outcome_counts(periods)] == [(0, 0)] * 3
        await finished(store, SENT_OK, 1, after(day, 10))
        await finished(store, SENT_OK, 2, after(day, 86399))
        await finished(store, FAILED_403, 3, after(day, 86400))  # the second day's first moment
        await finished(store, deferred_until(after(day, 90000)), 4, after(day, 86500))  # not an outcome
        await finished(store, SENT_OK, 5, after(day, -1))  # before every period
        await finished(store, FAILED_403, 6, after(day, 89000))
        counts = await store.outcome_counts(periods)
        assert [(c.start, c.end) for c in counts] == periods
        assert [(c.sent, c.failed) for c in counts] == [(2, 0), (0, 2), (2, 2)]
        assert await store.outcome_counts([]) == []
        await store.close()
    run(scenario)


# -- the database's own guards ------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    "state = 'lost'",
    "state = 'sending'",  # sending without a lease
    "state = 'deferred'",  # deferred without a due time
    "source = 'carrier-pigeon'",
])
def test_the_database_refuses_an_impossible_message(db: Database, change: str) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        await store.enqueue(new_message())
        await store.close()
    run(scenario)
    refused = sqlite3.IntegrityError if db.backend == "sqlite" else psycopg.errors.CheckViolation
    with pytest.raises(refused, match=r"CHECK constraint failed|violates check constraint"):
        db.query(f"UPDATE messages SET {change}")  # noqa: S608 (the test's own values)
    with pytest.raises(refused):
        db.query("UPDATE message_events SET to_state = 'lost'")


# -- values ------------------------------------------------------------------------------------

def test_queue_ids_are_sortable_and_unique() -> None:
    ids = [new_queue_id() for _ in range(20_000)]
    assert all(re.fullmatch(r"[0-9A-F]{16}", i) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    millis = int(ids[-1][:11], 16)
    assert abs(millis / 1000 - datetime.now(UTC).timestamp()) < 3600  # the time leads the id


def test_new_messages_and_results_check_their_fields() -> None:
    with pytest.raises(ValueError, match="recipients"):
        new_message(recipients=())
    with pytest.raises(ValueError, match="recipients"):
        new_message(recipients="a@example.com")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source"):
        new_message(source="fax")
    with pytest.raises(TypeError, match="raw must be bytes"):
        new_message(raw="text")  # type: ignore[arg-type]
    listed = NewMessage("contoso", "s@contoso.com", ["a@example.com"], b"x", "api", None)  # type: ignore[arg-type]
    assert listed.recipients == ("a@example.com",)
    assert "size=1" in repr(listed) and "b'x'" not in repr(listed)  # never the body in a log line

    with pytest.raises(ValueError, match="next_attempt_at is required"):
        AttemptResult("deferred", "graph")
    with pytest.raises(ValueError, match="only for it"):
        AttemptResult("sent", "graph", next_attempt_at=datetime.now(UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        AttemptResult("deferred", "graph", next_attempt_at=datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="outcome"):
        AttemptResult("bounced", "graph")  # type: ignore[arg-type]
