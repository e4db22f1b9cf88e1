"""The queries of the state kept beside the outbox (token caches, connection states, settings), one named
function each, run on a connection inside a transaction; and ``insert_many``, which the outbox uses too.

Sync SQLAlchemy Core; ``Store`` runs them in its worker thread and translates errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from ._rows import ConnectionState
from ._schema import connection_states, settings, token_caches


def _upsert(conn: Connection, table: Table, values: Mapping[str, Any], update: Mapping[str, Any]) -> None:
    # INSERT ... ON CONFLICT DO UPDATE: atomic on both backends, so two nodes updating
    # different fields of one row never lose each other's change.
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    key = [c.name for c in table.primary_key]
    statement = dialect_insert(table).values(**values)
    conn.execute(statement.on_conflict_do_update(index_elements=key, set_=update))


def insert_many(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """``conn.execute(insert(table), rows)``, through the driver's executemany directly.

    The same SQL and the same conversions (each column type's bind processor), without
    SQLAlchemy's per-statement and per-row work, which costs more than SQLite's own insert:
    on the enqueue path (group commit) it is most of the CPU time of a batch.  Every row
    has the keys of the first.
    """
    if not rows:
        return
    dialect = conn.dialect
    names = list(rows[0])
    processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]
    quote = dialect.identifier_preparer.quote
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    # Only names of the table's own columns (table.c[name] refuses others), quoted: no injection.
    sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "  # noqa: S608
           f"VALUES ({', '.join(mark for _ in names)})")
    params = [tuple(value if process is None else process(value)
                    for process, value in zip(processors, row.values(), strict=True))
              for row in rows]
    # The DB-API cursor of the transaction's own connection: SQLAlchemy's execution context
    # would cost as much again.  Driver errors are translated by the store like SQLAlchemy's.
    with contextlib.closing(conn.connection.cursor()) as cursor:
        cursor.executemany(sql, params)


def load_token_cache(conn: Connection, connection: str) -> bytes | None:
    return conn.scalar(select(token_caches.c.ciphertext).where(token_caches.c.connection == connection))


def save_token_cache(conn: Connection, connection: str, ciphertext: bytes, now: datetime) -> None:
    _upsert(conn, token_caches, {"connection": connection, "ciphertext": ciphertext, "updated_at": now},
            {"ciphertext": ciphertext, "updated_at": now})


def delete_token_cache(conn: Connection, connection: str) -> None:
    conn.execute(delete(token_caches).where(token_caches.c.connection == connection))


def connection_state(conn: Connection, connection: str) -> ConnectionState | None:
    row = conn.execute(select(connection_states).where(connection_states.c.connection == connection)
                       ).mappings().first()
    return ConnectionState.from_row(row) if row else None


def upsert_connection_state(conn: Connection, connection: str, changes: Mapping[str, Any],
                            now: datetime) -> None:
    update = {**changes, "updated_at": now}
    _upsert(conn, connection_states, {"connection": connection, "needs_sign_in": False, **update}, update)


def get_setting(conn: Connection, key: str) -> str | None:
    return conn.scalar(select(settings.c.value).where(settings.c.key == key))


def set_setting(conn: Connection, key: str, value: str, now: datetime) -> None:
    _upsert(conn, settings, {"key": key, "value": value, "updated_at": now},
            {"value": value, "updated_at": now})
