"""The schema's history: numbered migrations, applied in order, each recorded once.

``migrate`` runs in one transaction, under a lock (PostgreSQL: an advisory lock; SQLite:
the write lock taken by ``BEGIN IMMEDIATE``), so relay nodes starting together neither
apply a migration twice nor see a half-built schema.  A migration, once released, is
never edited: change the schema with a new one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    false,
    func,
    insert,
    select,
    text,
)

from ..errors import StoreError
from ._schema import schema_migrations
from ._types import UTCDateTime

# pg_advisory_xact_lock key: "relay365" in ASCII, so it is recognisable in pg_locks.
_POSTGRES_LOCK_KEY = 0x72656C6179333635


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _first_tables(conn: Connection) -> None:
    md = MetaData()
    Table("token_caches", md,
          Column("connection", Text, primary_key=True),
          Column("ciphertext", LargeBinary, nullable=False),
          Column("updated_at", UTCDateTime, nullable=False))
    Table("connection_states", md,
          Column("connection", Text, primary_key=True),
          Column("needs_sign_in", Boolean, nullable=False, server_default=false()),
          Column("entry_id", Text),
          Column("detail", Text),
          Column("account", Text),
          Column("scopes", JSON),
          Column("signed_in_at", UTCDateTime),
          Column("last_refresh_at", UTCDateTime),
          Column("updated_at", UTCDateTime, nullable=False))
    sends = Table("sends", md,
                  Column("id", Text, primary_key=True),
                  Column("time", UTCDateTime, nullable=False),
                  Column("connection", Text, nullable=False),
                  Column("transport", Text, nullable=False),
                  Column("sender", Text, nullable=False),
                  Column("recipients", JSON, nullable=False),
                  Column("subject", Text, nullable=False),
                  Column("size", Integer, nullable=False),
                  Column("status", Text, nullable=False),
                  Column("code", Text),
                  Column("entry_id", Text),
                  Column("request_id", Text),
                  Column("detail", Text),
                  CheckConstraint("status IN ('sent', 'failed')", name="sends_status"))
    # recent_sends reads newest first, for all connections or one.
    Index("sends_by_time", sends.c.time, sends.c.id)
    Index("sends_by_connection_time", sends.c.connection, sends.c.time, sends.c.id)
    Table("settings", md,
          Column("key", Text, primary_key=True),
          Column("value", Text, nullable=False),
          Column("updated_at", UTCDateTime, nullable=False))
    md.create_all(conn, checkfirst=False)


def _outbox(conn: Connection) -> None:
    # The value lists are written out, not taken from MessageState: this migration must
    # keep creating what it created when it was released.
    md = MetaData()
    states = "'queued', 'sending', 'sent', 'deferred', 'failed'"
    messages = Table(
        "messages", md,
        Column("id", Text, primary_key=True),
        Column("connection", Text, nullable=False),
        Column("sender", Text, nullable=False),
        Column("recipients", Text, nullable=False),  # JSON array
        Column("subject", Text, nullable=False),
        Column("size", Integer, nullable=False),
        Column("source", Text, nullable=False),
        Column("client", Text),
        Column("state", Text, nullable=False),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("received_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        Column("next_attempt_at", UTCDateTime),
        Column("lease_owner", Text),
        Column("lease_until", UTCDateTime),
        Column("last_code", Text),
        Column("last_entry_id", Text),
        Column("last_detail", Text),
        Column("sent_at", UTCDateTime),
        Column("request_id", Text),
        CheckConstraint(f"state IN ({states})", name="messages_state"),
        CheckConstraint("source IN ('smtp', 'sendmail', 'http', 'api')", name="messages_source"),
        # A lease exactly while sending, a due time whenever deferred: the claim query relies on both.
        CheckConstraint("(state = 'sending' AND lease_owner IS NOT NULL AND lease_until IS NOT NULL)"
                        " OR (state <> 'sending' AND lease_owner IS NULL AND lease_until IS NULL)",
                        name="messages_lease"),
        CheckConstraint("state <> 'deferred' OR next_attempt_at IS NOT NULL", name="messages_deferred"),
        CheckConstraint("attempts >= 0", name="messages_attempts"),
    )
    # Every query of the outbox starts from a state, so that the sent messages kept for the
    # log (90 days of them) are never scanned to find the few waiting ones.
    # claim_due: queued oldest first; deferred by due time; sending by lease end.  Also
    # listing by state, retrying and purging the dead letter, pruning, counting.
    Index("messages_queue", messages.c.state, messages.c.received_at, messages.c.id)
    Index("messages_due", messages.c.state, messages.c.next_attempt_at)
    Index("messages_lease", messages.c.state, messages.c.lease_until)
    # list_messages of every state, newest first.
    Index("messages_by_received", messages.c.received_at, messages.c.id)
    # Bodies apart: listing and claiming never read them; pruning drops them and keeps the row.
    Table("message_bodies", md,
          Column("message_id", Text, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
          Column("raw", LargeBinary, nullable=False))
    Table("attempts", md,
          Column("message_id", Text, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
          Column("number", Integer, nullable=False),
          Column("started_at", UTCDateTime, nullable=False),
          Column("finished_at", UTCDateTime, nullable=False),
          Column("connection", Text, nullable=False),
          Column("transport", Text, nullable=False),
          Column("worker", Text),
          Column("outcome", Text, nullable=False),
          Column("code", Text),
          Column("entry_id", Text),
          Column("request_id", Text),
          Column("detail", Text),
          PrimaryKeyConstraint("message_id", "number", name="attempts_pkey"),
          CheckConstraint("outcome IN ('sent', 'deferred', 'failed')", name="attempts_outcome"))
    events = Table(
        "message_events", md,
        # BIGINT on PostgreSQL; SQLite needs INTEGER PRIMARY KEY for its rowid to number the rows.
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("message_id", Text, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        Column("time", UTCDateTime, nullable=False),
        Column("from_state", Text),
        Column("to_state", Text, nullable=False),
        Column("detail", Text),
        CheckConstraint(f"from_state IS NULL OR from_state IN ({states})", name="message_events_from"),
        CheckConstraint(f"to_state IN ({states})", name="message_events_to"),
    )
    Index("message_events_by_message", events.c.message_id, events.c.id)
    md.create_all(conn, checkfirst=False)
    if conn.dialect.name == "postgresql":
        # Uncompressed out-of-line storage: a body is read back in slices without decompressing
        # it from the start for each one (mail is mostly base64 already: little is lost).
        conn.execute(text("ALTER TABLE message_bodies ALTER COLUMN raw SET STORAGE EXTERNAL"))


def _attempts_by_time(conn: Connection) -> None:
    # outcome_counts (the admin page's sent and failed per day) reads the attempts of the
    # last days: along this index, without touching the months of older attempts kept for
    # the log, nor the table itself (the outcome is in the index).
    md = MetaData()
    attempts = Table("attempts", md, Column("finished_at", UTCDateTime), Column("outcome", Text))
    Index("attempts_by_finished", attempts.c.finished_at, attempts.c.outcome).create(conn)


def _sends_into_outbox(conn: Connection) -> None:
    # Direct sends were logged in a table of their own; they are outbox messages now.  Each
    # row becomes a message in its final state (sent, or failed in the dead letter), with
    # its one attempt and its events, so the log, the counts per day and retention see it
    # as they see relayed mail.  Its body was never kept: a failed one cannot be retried.
    md = MetaData()
    sends = Table("sends", md, Column("id", Text), Column("time", UTCDateTime), Column("connection", Text),
                  Column("transport", Text), Column("sender", Text), Column("recipients", JSON),
                  Column("subject", Text), Column("size", Integer), Column("status", Text),
                  Column("code", Text), Column("entry_id", Text), Column("request_id", Text),
                  Column("detail", Text))
    messages = Table("messages", md, *(Column(name, kind) for name, kind in (
        ("id", Text), ("connection", Text), ("sender", Text), ("recipients", Text), ("subject", Text),
        ("size", Integer), ("source", Text), ("client", Text), ("state", Text), ("attempts", Integer),
        ("received_at", UTCDateTime), ("updated_at", UTCDateTime), ("last_code", Text),
        ("last_entry_id", Text), ("last_detail", Text), ("sent_at", UTCDateTime), ("request_id", Text))))
    attempts = Table("attempts", md, *(Column(name, kind) for name, kind in (
        ("message_id", Text), ("number", Integer), ("started_at", UTCDateTime), ("finished_at", UTCDateTime),
        ("connection", Text), ("transport", Text), ("worker", Text), ("outcome", Text), ("code", Text),
        ("entry_id", Text), ("request_id", Text), ("detail", Text))))
    events = Table("message_events", md, Column("message_id", Text), Column("time", UTCDateTime),
                   Column("from_state", Text), Column("to_state", Text), Column("detail", Text))
    taken = set(conn.scalars(select(messages.c.id).where(messages.c.id.in_(select(sends.c.id)))))
    rows = [r for r in conn.execute(select(sends).order_by(sends.c.time, sends.c.id)).mappings()
            if r["id"] not in taken]  # a queue id is unique to the outbox; a clash keeps the queued one
    for chunk in (rows[i:i + 500] for i in range(0, len(rows), 500)):
        if not chunk:
            continue
        conn.execute(insert(messages), [{
            "id": r["id"], "connection": r["connection"], "sender": r["sender"],
            "recipients": json.dumps(list(r["recipients"]), ensure_ascii=False), "subject": r["subject"],
            "size": r["size"], "source": "api", "client": "direct send", "state": r["status"],
            "attempts": 1, "received_at": r["time"], "updated_at": r["time"], "last_code": r["code"],
            "last_entry_id": r["entry_id"], "last_detail": r["detail"],
            "sent_at": r["time"] if r["status"] == "sent" else None, "request_id": r["request_id"]}
            for r in chunk])
        conn.execute(insert(attempts), [{
            "message_id": r["id"], "number": 1, "started_at": r["time"], "finished_at": r["time"],
            "connection": r["connection"], "transport": r["transport"], "worker": None,
            "outcome": r["status"], "code": r["code"], "entry_id": r["entry_id"],
            "request_id": r["request_id"], "detail": r["detail"]} for r in chunk])
        conn.execute(insert(events), [
            {"message_id": r["id"], "time": r["time"], "from_state": None, "to_state": r["status"],
             "detail": "sent directly (moved from the send log)"} for r in chunk])
    sends.drop(conn)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "token caches, connection states, send log, settings", _first_tables),
    Migration(2, "outbox: messages, bodies, attempts, events", _outbox),
    Migration(3, "attempts by time, for counts per day", _attempts_by_time),
    Migration(4, "direct sends move from the send log into the outbox", _sends_into_outbox),
)


def migrate(conn: Connection, now: datetime | None = None) -> list[int]:
    """Apply the migrations this database lacks, in order; the versions applied (often none).

    Call inside a write transaction: it is all or nothing.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_LOCK_KEY})
    # The bookkeeping table comes from _schema: it is the one table that never changes shape.
    schema_migrations.create(conn, checkfirst=True)
    applied = set(conn.scalars(select(schema_migrations.c.version)))
    known = MIGRATIONS[-1].version
    if applied and max(applied) > known:
        raise StoreError(f"the database schema is at version {max(applied)}, newer than this relay365 "
                         f"knows (up to {known}): upgrade relay365 on this node")
    done: list[int] = []
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        migration.apply(conn)
        conn.execute(insert(schema_migrations).values(
            version=migration.version, description=migration.description,
            applied_at=now or datetime.now(UTC)))
        done.append(migration.version)
    return done


def schema_version(conn: Connection) -> int:
    """The highest migration applied; 0 for an empty database."""
    return conn.scalar(select(func.coalesce(func.max(schema_migrations.c.version), 0))) or 0
