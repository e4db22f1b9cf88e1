"""Message bodies into and out of the database without needless copies of their bytes.

A 100 MB message must not cost 300 MB.  A plain INSERT of one costs the caller's bytes,
the driver's copy of the parameter, and (SQLite) the record it builds from it.  So small
bodies go in with one executemany for the whole batch, and large ones stream in chunks
of the caller's own bytes: SQLite writes them into a zeroblob through its incremental
blob API, PostgreSQL takes them by ``COPY ... FROM STDIN`` in binary format.  Reading
back: SQLite's blob API reads straight into the returned bytes (once the body's size);
PostgreSQL sends it in binary slices, joined at the end (twice its size at the peak).

Only the store runs these, inside its transactions: the driver connection is the one the
transaction's SQLAlchemy connection wraps.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Sequence
from typing import Any, cast

import psycopg
from sqlalchemy import Connection, func, insert, literal_column, select

from ._schema import message_bodies
from ._state_queries import insert_many

# Bodies this large or larger are streamed; smaller ones are batched in one executemany.
STREAM_FROM = 1 << 20
_CHUNK = 1 << 20
# PostgreSQL's binary COPY format: signature, flags, header extension length.
_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\0" + struct.pack("!ii", 0, 0)
_PGCOPY_TRAILER = struct.pack("!h", -1)
_FIRST_SLICE = ("SELECT octet_length(raw), substring(raw FROM 1 FOR %s) FROM message_bodies "
                "WHERE message_id = %s")
_NEXT_SLICE = "SELECT substring(raw FROM %s FOR %s) FROM message_bodies WHERE message_id = %s"


def _driver(conn: Connection) -> Any:
    return conn.connection.driver_connection


def write_bodies(conn: Connection, bodies: Sequence[tuple[str, bytes]]) -> None:
    """Insert the bodies of messages just inserted in this transaction."""
    small = [{"message_id": message_id, "raw": raw} for message_id, raw in bodies if len(raw) < STREAM_FROM]
    insert_many(conn, message_bodies, small)
    for message_id, raw in bodies:
        if len(raw) >= STREAM_FROM:
            if conn.dialect.name == "postgresql":
                _copy_into_postgres(conn, message_id, raw)
            else:
                _write_sqlite_blob(conn, message_id, raw)


def _write_sqlite_blob(conn: Connection, message_id: str, raw: bytes) -> None:
    result = conn.execute(insert(message_bodies).values(message_id=message_id, raw=func.zeroblob(len(raw))))
    rowid = result.lastrowid
    view = memoryview(raw)  # slices of a memoryview share the caller's bytes
    with cast(sqlite3.Connection, _driver(conn)).blobopen("message_bodies", "raw", rowid) as blob:
        for start in range(0, len(raw), _CHUNK):
            blob.write(view[start:start + _CHUNK])


def _copy_into_postgres(conn: Connection, message_id: str, raw: bytes) -> None:
    ident = message_id.encode()
    # One row of two fields: the id (text in binary is its bytes) and the body, then the trailer.
    row_head = struct.pack("!hi", 2, len(ident)) + ident + struct.pack("!i", len(raw))
    view = memoryview(raw)
    driver = cast(psycopg.Connection[Any], _driver(conn))
    with driver.cursor() as cursor, cursor.copy(
            "COPY message_bodies (message_id, raw) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(_PGCOPY_HEADER + row_head)
        for start in range(0, len(raw), _CHUNK):
            copy.write(view[start:start + _CHUNK])
        copy.write(_PGCOPY_TRAILER)


def read_body(conn: Connection, message_id: str) -> bytes | None:
    """The body of a message; None when there is none (no such message, or pruned)."""
    if conn.dialect.name == "postgresql":
        return _read_from_postgres(conn, message_id)
    rowid = conn.scalar(select(literal_column("rowid")).select_from(message_bodies)
                        .where(message_bodies.c.message_id == message_id))
    if rowid is None:
        return None
    with cast(sqlite3.Connection, _driver(conn)).blobopen("message_bodies", "raw", rowid,
                                                          readonly=True) as blob:
        return blob.read()


def _read_from_postgres(conn: Connection, message_id: str) -> bytes | None:
    # Whole, a value arrives in libpq's buffer, then its result, then Python's bytes: 3 to 4
    # times a large body.  In slices of _CHUNK (cheap: the column is stored uncompressed,
    # STORAGE EXTERNAL), it costs the slices and their join: twice the body.
    # Binary results: bytea as text would be hex, twice the size again.
    driver = cast(psycopg.Connection[Any], _driver(conn))
    with driver.cursor(binary=True) as cursor:
        # The size and the first slice together: most bodies are one slice, one round trip.
        cursor.execute(_FIRST_SLICE, (_CHUNK, message_id))
        row = cursor.fetchone()
        if row is None:
            return None
        size: int = row[0]
        chunks: list[bytes] = [row[1]]
        for start in range(_CHUNK, size, _CHUNK):
            cursor.execute(_NEXT_SLICE, (start + 1, _CHUNK, message_id))
            row = cursor.fetchone()
            if row is None:  # deleted or pruned meanwhile (each statement sees the latest commits)
                return None
            chunks.append(row[0])
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
