"""The outbox's queries, one named function each, run on a connection inside a transaction.

Every change of a message's state writes its ``message_events`` row in the same
transaction.  Rows that change are locked first (``FOR UPDATE``; on PostgreSQL the claim
skips rows another node holds, ``SKIP LOCKED``; on SQLite the store's write transactions
begin with ``BEGIN IMMEDIATE``, which serialises them), so an event always names the
state a message really left.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Text,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    type_coerce,
    update,
)

from ._bodies import write_bodies
from ._errors import LeaseLost
from ._inputs import AttemptResult, NewMessage
from ._rows import Attempt, Event, MessageState, OutcomeCount
from ._rows import QueuedMessage as Message
from ._schema import attempts as attempts_table
from ._schema import message_bodies, message_events, messages
from ._state_queries import insert_many

T = TypeVar("T")

QUEUED, SENDING, SENT, DEFERRED, FAILED = (MessageState.QUEUED, MessageState.SENDING, MessageState.SENT,
                                           MessageState.DEFERRED, MessageState.FAILED)
# Ids per "IN (...)": well under SQLite's and psycopg's limits on parameters per statement.
_IDS_PER_STATEMENT = 500


@dataclass(frozen=True)
class Incoming:
    """A message on its way into the outbox: its queue id and time are given when it arrives."""

    id: str
    received_at: datetime
    message: NewMessage


def _chunks(ids: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(ids), _IDS_PER_STATEMENT):
        yield ids[start:start + _IDS_PER_STATEMENT]


def _record_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    insert_many(conn, message_events, rows)


def _event(message_id: str, time: datetime, before: str | None, after: MessageState,
           detail: str | None) -> dict[str, Any]:
    return {"message_id": message_id, "time": time, "from_state": before, "to_state": after.value,
            "detail": detail}


# -- into the outbox -------------------------------------------------------------------------

def insert_messages(conn: Connection, batch: Sequence[Incoming]) -> None:
    """Queue the batch: message rows, bodies and "received" events, in the caller's transaction."""
    # The hot path of every way in: driver executemany (see insert_many) for all three tables.
    insert_many(conn, messages, [
        {"id": i.id, "connection": i.message.connection, "sender": i.message.sender,
         "recipients": i.message.recipients, "subject": i.message.subject, "size": len(i.message.raw),
         "source": i.message.source, "client": i.message.client, "state": QUEUED.value, "attempts": 0,
         "received_at": i.received_at, "updated_at": i.received_at}
        for i in batch])
    write_bodies(conn, [(i.id, i.message.raw) for i in batch])
    client = {i.id: f" from {i.message.client}" if i.message.client else "" for i in batch}
    _record_events(conn, [_event(i.id, i.received_at, None, QUEUED,
                                 f"received by {i.message.source}{client[i.id]}") for i in batch])


def insert_claimed(conn: Connection, incoming: Incoming, worker: str, lease_until: datetime) -> Message:
    """Queue one message and lease it to ``worker`` at once: a direct send, as claim_due would."""
    insert_messages(conn, [incoming])
    now = incoming.received_at
    conn.execute(update(messages).where(messages.c.id == incoming.id).values(
        state=SENDING.value, lease_owner=worker, lease_until=lease_until, attempts=1, updated_at=now))
    _record_events(conn, [_event(incoming.id, now, QUEUED.value, SENDING, f"sent at once by {worker}")])
    claimed = get_message(conn, incoming.id)
    assert claimed is not None  # inserted in this transaction
    return claimed


# -- delivery ----------------------------------------------------------------------------------

def claim_due(conn: Connection, worker: str, limit: int, now: datetime, lease_until: datetime,
              connections: set[str] | None) -> list[Message]:
    """Lease up to ``limit`` due messages to ``worker``, oldest first."""
    # One query per kind of due message, each along its own index, rather than one query
    # with an OR, which the planners answer by walking every message in received order,
    # sent ones included.  The oldest `limit` of each kind are locked (PostgreSQL: skipping
    # those another node holds), the oldest `limit` of them all are claimed; the others
    # are let go at the commit, a moment later.
    found: list[Any] = []  # rows of id, state, ...: Row is typed by its columns
    for due in (messages.c.state == QUEUED,
                and_(messages.c.state == DEFERRED, messages.c.next_attempt_at <= now),
                and_(messages.c.state == SENDING, messages.c.lease_until <= now)):
        query = (select(messages.c.id, messages.c.state, messages.c.lease_owner, messages.c.received_at)
                 .where(due).order_by(messages.c.received_at, messages.c.id).limit(limit)
                 .with_for_update(skip_locked=True))  # SQLite ignores it: BEGIN IMMEDIATE serialises
        if connections is not None:
            query = query.where(messages.c.connection.in_(sorted(connections)))
        found += conn.execute(query).all()
    found = sorted(found, key=lambda row: (row.received_at, row.id))[:limit]
    if not found:
        return []
    ids = [row.id for row in found]
    conn.execute(update(messages).where(messages.c.id.in_(ids)).values(
        state=SENDING.value, lease_owner=worker, lease_until=lease_until, next_attempt_at=None,
        attempts=messages.c.attempts + 1, updated_at=now))
    _record_events(conn, [
        _event(row.id, now, row.state, SENDING,
               f"lease of {row.lease_owner} expired; claimed by {worker}" if row.state == SENDING
               else f"claimed by {worker}")
        for row in found])
    claimed = conn.execute(select(messages).where(messages.c.id.in_(ids))
                           .order_by(messages.c.received_at, messages.c.id)).mappings()
    return [Message.from_row(row) for row in claimed]


def renew_lease(conn: Connection, message_id: str, worker: str, lease_until: datetime) -> bool:
    result = conn.execute(update(messages).where(
        messages.c.id == message_id, messages.c.state == SENDING, messages.c.lease_owner == worker,
    ).values(lease_until=lease_until))
    return result.rowcount == 1


def finish_attempt(conn: Connection, message_id: str, worker: str, result: AttemptResult,
                   started_at: datetime, now: datetime) -> Message:
    """Write how an attempt ended: the one place a message leaves ``sending`` for good or for later."""
    held = conn.execute(select(messages.c.state, messages.c.lease_owner, messages.c.attempts,
                               messages.c.connection)
                        .where(messages.c.id == message_id).with_for_update()).first()
    if held is None:
        raise LeaseLost(f"message {message_id} is no longer in the outbox (deleted while {worker} was "
                        f"sending it): the outcome of its attempt ({result.outcome}) was not recorded")
    if held.state != SENDING or held.lease_owner != worker:
        now_held = f"held by {held.lease_owner}" if held.state == SENDING else f"now {held.state}"
        raise LeaseLost(f"{worker} no longer holds message {message_id} ({now_held}): its lease expired "
                        f"and another worker took it over; the outcome of this attempt ({result.outcome}) "
                        "was not recorded")
    outcome = MessageState(result.outcome)
    conn.execute(update(messages).where(messages.c.id == message_id).values(
        state=outcome.value, lease_owner=None, lease_until=None, next_attempt_at=result.next_attempt_at,
        last_code=result.code, last_entry_id=result.entry_id, last_detail=result.detail,
        request_id=result.request_id, sent_at=now if outcome is SENT else None, updated_at=now))
    conn.execute(insert(attempts_table).values(
        message_id=message_id, number=held.attempts, started_at=started_at, finished_at=now,
        connection=held.connection, transport=result.transport, worker=worker, outcome=result.outcome,
        code=result.code, entry_id=result.entry_id, request_id=result.request_id, detail=result.detail))
    said = "; ".join(str(part) for part in (result.entry_id, result.code, result.detail) if part)
    when = f" until {result.next_attempt_at.isoformat()}" if result.next_attempt_at else ""
    _record_events(conn, [_event(message_id, now, held.state, outcome,
                                 f"attempt {held.attempts} by {worker} over {result.transport}{when}"
                                 + (f": {said}" if said else ""))])
    finished = get_message(conn, message_id)
    assert finished is not None  # locked and updated in this transaction
    return finished


def _move(conn: Connection, wheres: Sequence[ColumnElement[bool]], to: MessageState, now: datetime,
          detail: str, **values: Any) -> int:
    # Lock what matches (one query per condition, each along a state's index), then change
    # it and record each row's event, a chunk of ids at a time.
    found: list[Any] = []  # rows of id, state, ...: Row is typed by its columns
    for where in wheres:
        found += conn.execute(select(messages.c.id, messages.c.state).where(where)
                              .order_by(messages.c.id).with_for_update()).all()
    # Events are built a chunk at a time: holding a 100,000-message queue must not build
    # 100,000 event rows in memory at once.
    for chunk in _chunks(found):
        conn.execute(update(messages).where(messages.c.id.in_([row.id for row in chunk]))
                     .values(state=to.value, updated_at=now, **values))
        _record_events(conn, [_event(row.id, now, row.state, to, detail) for row in chunk])
    return len(found)


def retry(conn: Connection, now: datetime, message_id: str | None = None,
          connection: str | None = None) -> int:
    """Failed messages (and deferred ones when one is named) back to ``queued``, due at once."""
    if message_id is not None:
        where = and_(messages.c.id == message_id, messages.c.state.in_([FAILED.value, DEFERRED.value]))
    else:
        where = messages.c.state == FAILED
        if connection is not None:
            where = and_(where, messages.c.connection == connection)
    return _move(conn, [where], QUEUED, now, "retried by hand", next_attempt_at=None)


def release_connection(conn: Connection, connection: str, now: datetime) -> int:
    """The connection's deferred messages back to ``queued``, due at once: it was signed in again."""
    where = and_(messages.c.state == DEFERRED, messages.c.connection == connection)
    return _move(conn, [where], QUEUED, now, "released: the connection was signed in", next_attempt_at=None)


def defer_connection(conn: Connection, connection: str, until: datetime, entry_id: str, detail: str,
                     now: datetime) -> int:
    """Hold the connection's waiting messages as deferred until ``until``; no attempt is counted."""
    of_connection = messages.c.connection == connection
    wheres = [and_(messages.c.state == QUEUED, of_connection),
              and_(messages.c.state == DEFERRED, messages.c.next_attempt_at < until, of_connection)]
    return _move(conn, wheres, DEFERRED, now, f"held until {until.isoformat()}: {entry_id}; {detail}",
                 next_attempt_at=until, last_entry_id=entry_id, last_detail=detail)


# -- reading -----------------------------------------------------------------------------------

def get_message(conn: Connection, message_id: str) -> Message | None:
    row = conn.execute(select(messages).where(messages.c.id == message_id)).mappings().first()
    return Message.from_row(row) if row else None


def attempts(conn: Connection, message_id: str) -> list[Attempt]:
    rows = conn.execute(select(attempts_table).where(attempts_table.c.message_id == message_id)
                        .order_by(attempts_table.c.number)).mappings()
    return [Attempt.from_row(row) for row in rows]


def events(conn: Connection, message_id: str) -> list[Event]:
    rows = conn.execute(select(message_events).where(message_events.c.message_id == message_id)
                        .order_by(message_events.c.id)).mappings()
    return [Event.from_row(row) for row in rows]


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _has_recipient(recipient: str) -> ColumnElement[bool]:
    # Recipients are a JSON array of strings: match one whole element, ignoring ASCII case.
    # "@contoso.com" matches every address at that domain.
    quoted = json.dumps(recipient.lower(), ensure_ascii=False)
    element = quoted[1:] if recipient.startswith("@") else quoted
    as_text = type_coerce(messages.c.recipients, Text)  # the JSON text, not a tuple to encode
    return func.lower(as_text).like(literal(f"%{_like_escaped(element)}%", Text), escape="\\")


def _contains(column: ColumnElement[str], text: str) -> ColumnElement[bool]:
    # ILIKE on PostgreSQL (any case, Unicode too); lower() on both sides on SQLite (ASCII case).
    return column.ilike(literal(f"%{_like_escaped(text)}%", Text), escape="\\")


@dataclass(frozen=True)
class MessageFilter:
    """What list_messages keeps; None (or an empty text) keeps everything."""

    states: set[MessageState] | None = None
    recipient: str | None = None  # one whole address, any case; "@domain" for a domain
    recipient_contains: str | None = None  # part of any recipient's address, any case
    sender: str | None = None  # part of the envelope sender, any case
    subject: str | None = None  # part of the subject, any case
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before
    connection: str | None = None


def list_messages(conn: Connection, where: MessageFilter, limit: int) -> list[Message]:
    query = select(messages).order_by(messages.c.received_at.desc(), messages.c.id.desc()).limit(limit)
    if where.states is not None:
        query = query.where(messages.c.state.in_(sorted(s.value for s in where.states)))
    if where.recipient:
        query = query.where(_has_recipient(where.recipient))
    if where.recipient_contains:
        query = query.where(_contains(type_coerce(messages.c.recipients, Text), where.recipient_contains))
    if where.sender:
        query = query.where(_contains(messages.c.sender, where.sender))
    if where.subject:
        query = query.where(_contains(messages.c.subject, where.subject))
    if where.since is not None:
        query = query.where(messages.c.received_at >= where.since)
    if where.until is not None:
        query = query.where(messages.c.received_at < where.until)
    if where.connection is not None:
        query = query.where(messages.c.connection == where.connection)
    return [Message.from_row(row) for row in conn.execute(query).mappings()]


def outcome_counts(conn: Connection, periods: Sequence[tuple[datetime, datetime]]) -> list[OutcomeCount]:
    """Messages sent and failed for good in each period, counted from the attempts."""
    sent = dict.fromkeys(range(len(periods)), 0)
    failed = dict.fromkeys(range(len(periods)), 0)
    first, last = min(p[0] for p in periods), max(p[1] for p in periods)
    # One pass along attempts_by_finished: a sum per period, grouped by outcome.
    time, outcome = attempts_table.c.finished_at, attempts_table.c.outcome
    sums = [func.coalesce(func.sum(case((and_(time >= start, time < end), 1), else_=0)), 0)
            for start, end in periods]
    query = (select(outcome, *sums).select_from(attempts_table)
             .where(time >= first, time < last, outcome.in_([SENT.value, FAILED.value]))
             .group_by(outcome))
    for row in conn.execute(query):
        into = sent if row[0] == SENT.value else failed
        for i in range(len(periods)):
            into[i] += int(row[i + 1])
    return [OutcomeCount(start, end, sent[i], failed[i]) for i, (start, end) in enumerate(periods)]


def queue_counts(conn: Connection) -> dict[MessageState, int]:
    counts = dict.fromkeys(MessageState, 0)
    for state, count in conn.execute(select(messages.c.state, func.count()).group_by(messages.c.state)):
        counts[MessageState(state)] = count
    return counts


# -- removing ----------------------------------------------------------------------------------

def delete_message(conn: Connection, message_id: str) -> bool:
    # Its body, attempts and events go with it (ON DELETE CASCADE).
    return conn.execute(delete(messages).where(messages.c.id == message_id)).rowcount == 1


def purge_failed(conn: Connection) -> int:
    return conn.execute(delete(messages).where(messages.c.state == FAILED)).rowcount


def prune(conn: Connection, sent_bodies_before: datetime, log_before: datetime) -> tuple[int, int]:
    """Drop the bodies of messages sent before the first time; remove finished messages last
    changed before the second."""
    # From the bodies still kept (the waiting messages' and the recently sent ones'), not
    # from every sent message: the log keeps months of those.
    sent_long_ago = select(messages.c.id).where(messages.c.id == message_bodies.c.message_id,
                                                messages.c.state == SENT,
                                                messages.c.sent_at < sent_bodies_before)
    bodies = conn.execute(delete(message_bodies).where(sent_long_ago.exists()))
    # received_at <= updated_at: the first bound walks the state's index only as far as needed.
    finished = conn.execute(delete(messages).where(messages.c.state.in_([SENT.value, FAILED.value]),
                                                   messages.c.received_at < log_before,
                                                   messages.c.updated_at < log_before))
    return bodies.rowcount, finished.rowcount
