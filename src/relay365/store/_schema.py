"""The tables as they are after the last migration: the columns the queries use.

Migrations create and change tables with their own definitions, constraints and indexes
(a migration must keep doing what it did when it was written); a test checks that
migrating a new database gives exactly these tables and columns.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
)

from ._types import AddressList, UTCDateTime

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)

token_caches = Table(
    "token_caches", metadata,
    Column("connection", Text, primary_key=True),
    Column("ciphertext", LargeBinary, nullable=False),  # SecretBox output: never the plain cache
    Column("updated_at", UTCDateTime, nullable=False),
)

connection_states = Table(
    "connection_states", metadata,
    Column("connection", Text, primary_key=True),
    Column("needs_sign_in", Boolean, nullable=False),
    Column("entry_id", Text),
    Column("detail", Text),
    Column("account", Text),
    Column("scopes", JSON),
    Column("signed_in_at", UTCDateTime),
    Column("last_refresh_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
)

settings = Table(
    "settings", metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# -- the outbox (migration 2) ---------------------------------------------------------------

messages = Table(
    "messages", metadata,
    Column("id", Text, primary_key=True),  # queue id (new_queue_id)
    Column("connection", Text, nullable=False),
    Column("sender", Text, nullable=False),
    Column("recipients", AddressList, nullable=False),
    Column("subject", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("source", Text, nullable=False),  # one of MESSAGE_SOURCES, checked by the database
    Column("client", Text),
    Column("state", Text, nullable=False),  # a MessageState, checked by the database
    Column("attempts", Integer, nullable=False),
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
)

message_bodies = Table(
    "message_bodies", metadata,
    Column("message_id", Text, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
    Column("raw", LargeBinary, nullable=False),
)

attempts = Table(
    "attempts", metadata,
    Column("message_id", Text, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("connection", Text, nullable=False),
    Column("transport", Text, nullable=False),
    Column("worker", Text),
    Column("outcome", Text, nullable=False),  # one of ATTEMPT_OUTCOMES, checked by the database
    Column("code", Text),
    Column("entry_id", Text),
    Column("request_id", Text),
    Column("detail", Text),
)

message_events = Table(
    "message_events", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", Text, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("time", UTCDateTime, nullable=False),
    Column("from_state", Text),
    Column("to_state", Text, nullable=False),
    Column("detail", Text),
)
