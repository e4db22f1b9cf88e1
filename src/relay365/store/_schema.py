"""The tables as they are after the last migration: the columns the queries use.

Migrations create and change tables with their own definitions, constraints and indexes
(a migration must keep doing what it did when it was written); a test checks that
migrating a new database gives exactly these tables and columns.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Integer, LargeBinary, MetaData, Table, Text

from ._types import UTCDateTime

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

sends = Table(
    "sends", metadata,
    Column("id", Text, primary_key=True),
    Column("time", UTCDateTime, nullable=False),
    Column("connection", Text, nullable=False),
    Column("transport", Text, nullable=False),
    Column("sender", Text, nullable=False),
    Column("recipients", JSON, nullable=False),
    Column("subject", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("status", Text, nullable=False),  # one of SEND_STATUSES, checked by the database
    Column("code", Text),
    Column("entry_id", Text),
    Column("request_id", Text),
    Column("detail", Text),
)

settings = Table(
    "settings", metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
