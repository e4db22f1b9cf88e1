"""The schema's history: numbered migrations, applied in order, each recorded once.

``migrate`` runs in one transaction, under a lock (PostgreSQL: an advisory lock; SQLite:
the write lock taken by ``BEGIN IMMEDIATE``), so relay nodes starting together neither
apply a migration twice nor see a half-built schema.  A migration, once released, is
never edited: change the schema with a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    MetaData,
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


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "token caches, connection states, send log, settings", _first_tables),
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
