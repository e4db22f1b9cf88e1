"""relay365.store on both backends: SQLite in tmp_path and PostgreSQL in a fresh schema per test.

PostgreSQL comes from RELAY365_TEST_POSTGRES_URL (default: root@127.0.0.1:5432/test, trust
auth).  It is never skipped: when it cannot be reached the tests fail and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
from cryptography.fernet import Fernet
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

import relay365.store
from relay365.auth import SecretBox
from relay365.errors import ConfigError, StoreError
from relay365.store import ConnectionState, MessageState, Store, _migrations, _schema

POSTGRES_URL = os.environ.get("RELAY365_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
REFRESH_TOKEN = "0.AXoA-refresh-" + secrets.token_urlsafe(24)
CACHE = json.dumps({"RefreshToken": {"k": {"secret": REFRESH_TOKEN}}})
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def new_box() -> SecretBox:
    return SecretBox(Fernet.generate_key())


def _libpq(url: str, schema: str | None = None) -> str:
    # psycopg takes the libpq URL: the same one without SQLAlchemy's "+psycopg".
    parsed = make_url(url).set(drivername="postgresql")
    if schema:
        parsed = parsed.update_query_dict({"options": f"-csearch_path={schema}"})
    return parsed.render_as_string(hide_password=False)


@dataclass
class Database:
    """One empty database for one test, and a raw look into it that bypasses the store."""

    backend: str
    url: str
    schema: str | None = None  # PostgreSQL only
    path: Path | None = None  # SQLite only

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.path is not None:
            with contextlib.closing(sqlite3.connect(self.path)) as conn:
                rows = conn.execute(sql).fetchall()
                conn.commit()
                return rows
        with psycopg.connect(_libpq(self.url), autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def raw_bytes(self) -> bytes:
        """SQLite: the database file and its write-ahead log, as they are on disk."""
        assert self.path is not None
        return b"".join(p.read_bytes() for p in (self.path, Path(f"{self.path}-wal")) if p.exists())


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    schema = f"relay365_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(_libpq(POSTGRES_URL), autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        shown = make_url(POSTGRES_URL).render_as_string(hide_password=True)
        pytest.fail(f"PostgreSQL is not reachable at {shown}: {exc}. The store tests need it: "
                    "start PostgreSQL or set RELAY365_TEST_POSTGRES_URL.", pytrace=False)
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield schema
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        path = tmp_path / "state" / "relay365.db"
        yield Database("sqlite", f"sqlite:///{path}", path=path)
        return
    with postgres_schema() as schema:
        url = make_url(_libpq(POSTGRES_URL, schema)).set(drivername="postgresql+psycopg")
        yield Database("postgresql", url.render_as_string(hide_password=False), schema=schema)


# -- public surface ----------------------------------------------------------------------------

def test_public_surface() -> None:
    assert sorted(relay365.store.__all__) == sorted(
        ["Cipher", "ConnectionState", "Store",
         # the outbox (tests/integration/relay365/test_outbox.py)
         "ATTEMPT_OUTCOMES", "MESSAGE_SOURCES", "Attempt", "AttemptOutcome", "AttemptResult", "Event",
         "GroupCommitStats", "LeaseLost", "MessageSource", "MessageState", "NewMessage", "QueuedMessage",
         "new_queue_id",
         # the admin page's counts per day
         "OutcomeCount"])
    for name in relay365.store.__all__:
        assert getattr(relay365.store, name) is not None


# -- opening and migrations --------------------------------------------------------------------

def test_open_migrates_once_and_records_the_version(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        assert await store.schema_version() == _migrations.MIGRATIONS[-1].version
        await store.close()
        first = db.query("SELECT version, description, applied_at FROM schema_migrations ORDER BY version")
        assert [(v, d) for v, d, _ in first] == [(m.version, m.description) for m in _migrations.MIGRATIONS]

        again = await Store.open(db.url, new_box())  # nothing left to apply: a no-op
        assert await again.schema_version() == _migrations.MIGRATIONS[-1].version
        await again.close()
        assert db.query("SELECT version, description, applied_at FROM schema_migrations "
                        "ORDER BY version") == first
    run(scenario)


def test_migrated_tables_are_the_ones_queries_use(db: Database) -> None:
    async def scenario() -> None:
        await (await Store.open(db.url, new_box())).close()
    run(scenario)
    engine = sqlalchemy.create_engine(db.url)
    try:
        inspector = sqlalchemy.inspect(engine)
        assert set(inspector.get_table_names()) == set(_schema.metadata.tables)
        for table in _schema.metadata.tables.values():
            found = {c["name"]: c["nullable"] for c in inspector.get_columns(table.name)}
            assert found == {c.name: c.nullable for c in table.columns}, table.name
    finally:
        engine.dispose()


def test_concurrent_opens_apply_each_migration_once(db: Database) -> None:
    async def scenario() -> None:
        stores = await asyncio.gather(*(Store.open(db.url, new_box()) for _ in range(8)))
        for store in stores:
            await store.close()
    run(scenario)
    assert db.query("SELECT version FROM schema_migrations ORDER BY version") == [
        (m.version,) for m in _migrations.MIGRATIONS]


def test_a_failing_migration_leaves_no_trace(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_done(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE half_done (id INTEGER PRIMARY KEY)"))
        conn.execute(text("SELECT no_such_column FROM settings"))

    broken = _migrations.Migration(99, "fails half-way", half_done)
    monkeypatch.setattr(_migrations, "MIGRATIONS", (*_migrations.MIGRATIONS, broken))

    async def scenario() -> None:
        with pytest.raises(StoreError, match="failed while applying schema migrations") as caught:
            await Store.open(db.url, new_box())
        assert "no_such_column" in caught.value.message
    run(scenario)
    # One transaction: not even migration 1 nor its bookkeeping table survived.
    tables = ("SELECT name FROM sqlite_master WHERE type = 'table'" if db.backend == "sqlite" else
              "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    assert db.query(tables) == []


def test_a_newer_schema_is_refused(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    future = _migrations.Migration(_migrations.MIGRATIONS[-1].version + 1, "from the future",
                                   lambda conn: None)

    async def scenario() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(_migrations, "MIGRATIONS", (*_migrations.MIGRATIONS, future))
            await (await Store.open(db.url, new_box())).close()
        with pytest.raises(StoreError, match=f"schema is at version {future.version}, newer"):
            await Store.open(db.url, new_box())
    run(scenario)


def test_sqlite_is_set_up_for_durability(tmp_path: Path) -> None:
    path = tmp_path / "does" / "not" / "exist" / "relay365.db"

    async def scenario() -> None:
        store = await Store.open(f"sqlite:///{path}", new_box())

        def pragmas(conn: Connection) -> tuple[Any, ...]:
            return tuple(conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                         for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout"))

        # 2 is FULL: every commit reaches the disk before 250 OK.
        assert await store._run("reading pragmas", False, pragmas) == ("wal", 2, 1, 30_000)
        await store.close()
    run(scenario)
    assert path.exists()  # its directory was created


# -- token cache -------------------------------------------------------------------------------

def test_token_cache_round_trip(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        assert await store.load_token_cache("contoso") is None
        await store.save_token_cache("contoso", CACHE)
        assert await store.load_token_cache("contoso") == CACHE
        await store.save_token_cache("contoso", CACHE + " rotated")
        assert await store.load_token_cache("contoso") == CACHE + " rotated"
        assert await store.load_token_cache("fabrikam") is None
        await store.delete_token_cache("contoso")
        assert await store.load_token_cache("contoso") is None
        await store.delete_token_cache("contoso")  # nothing to delete: no error
        await store.close()
    run(scenario)


def test_token_cache_is_encrypted_at_rest(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        await store.save_token_cache("contoso", CACHE)
        await store.close()
    run(scenario)
    [(ciphertext,)] = db.query("SELECT ciphertext FROM token_caches")
    assert REFRESH_TOKEN.encode() not in bytes(ciphertext)
    assert bytes(ciphertext).startswith(b"gAAAAA")  # a Fernet token
    if db.backend == "sqlite":
        assert REFRESH_TOKEN.encode() not in db.raw_bytes()


def test_token_cache_with_another_key_is_a_clear_store_error(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        await store.save_token_cache("contoso", CACHE)
        await store.close()
        other = await Store.open(db.url, new_box())
        with pytest.raises(StoreError) as caught:
            await other.load_token_cache("contoso")
        await other.close()
        assert "token cache of connection 'contoso'" in caught.value.message
        assert "cannot be decrypted: the key changed" in caught.value.message
        assert caught.value.entry.id == "R365-STORE"
    run(scenario)


# -- connection state --------------------------------------------------------------------------

def test_connection_state_default_then_upserted_field_by_field(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        assert await store.connection_state("contoso") == ConnectionState("contoso")

        signed_in = datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
        first = await store.update_connection_state(
            "contoso", account="megan@contoso.com", scopes=("Mail.Send", "offline_access"),
            signed_in_at=signed_in)
        assert first.account == "megan@contoso.com"
        assert first.scopes == ("Mail.Send", "offline_access")
        assert first.signed_in_at == signed_in and first.signed_in_at.tzinfo is UTC
        assert first.needs_sign_in is False
        assert first.updated_at is not None and first.updated_at.tzinfo is UTC

        second = await store.update_connection_state(
            "contoso", needs_sign_in=True, entry_id="R365-NEEDS-SIGN-IN", detail="AADSTS700082")
        assert second.account == "megan@contoso.com"  # untouched fields keep their value
        assert second.scopes == first.scopes and second.signed_in_at == first.signed_in_at
        assert (second.needs_sign_in, second.entry_id, second.detail) == (
            True, "R365-NEEDS-SIGN-IN", "AADSTS700082")
        assert second.updated_at is not None and second.updated_at >= first.updated_at

        cleared = await store.update_connection_state("contoso", needs_sign_in=False, entry_id=None,
                                                      detail=None)
        assert (cleared.needs_sign_in, cleared.entry_id, cleared.detail) == (False, None, None)
        assert await store.connection_state("contoso") == cleared
        assert await store.connection_state("fabrikam") == ConnectionState("fabrikam")

        with pytest.raises(TypeError, match="cannot set: \\['password'\\]"):
            await store.update_connection_state("contoso", password="x")
        with pytest.raises(TypeError, match="cannot set"):
            await store.update_connection_state("contoso", updated_at=T0)
        with pytest.raises(ValueError, match="timezone-aware"):
            await store.update_connection_state("contoso", last_refresh_at=datetime(2026, 3, 1))
        with pytest.raises(TypeError, match="tuple of scope names"):
            await store.update_connection_state("contoso", scopes="Mail.Send")
        await store.close()
    run(scenario)


# -- the send log of older versions --------------------------------------------------------

def test_migration_4_moves_the_send_log_into_the_outbox(db: Database,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Direct sends logged before version 4 become outbox messages, with their attempt and event."""
    paris = datetime(2026, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))

    async def scenario() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(_migrations, "MIGRATIONS", _migrations.MIGRATIONS[:3])
            await (await Store.open(db.url, new_box())).close()
        insert = ("INSERT INTO sends (id, time, connection, transport, sender, recipients, subject, size, "
                  "status, code, entry_id, request_id, detail) VALUES ")
        db.query(insert + "('D1', '2026-03-01 12:30:00.000000', 'contoso', 'graph', 'info@contoso.com', "
                 "'[\"a@example.com\", \"b@example.com\"]', 'sent once', 120, 'sent', NULL, NULL, "
                 "'req-1', NULL)")
        db.query(insert + "('D2', '2026-03-01 12:31:00.000000', 'contoso', 'graph', 'info@contoso.com', "
                 "'[\"c@example.com\"]', 'refused', 99, 'failed', 'ErrorSendAsDenied', "
                 "'M365-SEND-AS-DENIED', 'req-2', '403 from Graph')")
        store = await Store.open(db.url, new_box())
        assert await store.schema_version() == 4
        sent, failed = await store.get_message("D1"), await store.get_message("D2")
        assert sent is not None and failed is not None
        assert (sent.state, sent.recipients, sent.subject, sent.size, sent.source, sent.attempts,
                sent.request_id) == (MessageState.SENT, ("a@example.com", "b@example.com"), "sent once",
                                     120, "api", 1, "req-1")
        assert sent.sent_at == sent.received_at == paris
        assert (failed.state, failed.last_code, failed.last_entry_id, failed.last_detail, failed.sent_at) == (
            MessageState.FAILED, "ErrorSendAsDenied", "M365-SEND-AS-DENIED", "403 from Graph", None)
        [attempt] = await store.attempts("D2")
        assert (attempt.number, attempt.outcome, attempt.code, attempt.request_id) == (
            1, "failed", "ErrorSendAsDenied", "req-2")
        assert [e.to_state for e in await store.events("D1")] == [MessageState.SENT]
        [day] = await store.outcome_counts([(paris - timedelta(hours=1), paris + timedelta(hours=1))])
        assert (day.sent, day.failed) == (1, 1)
        assert {m.id for m in await store.list_messages(states={MessageState.FAILED})} == {"D2"}
        await store.close()
    run(scenario)
    tables = ("SELECT name FROM sqlite_master WHERE name = 'sends'" if db.backend == "sqlite" else
              "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'sends'")
    assert db.query(tables) == []


# -- settings ----------------------------------------------------------------------------------

def test_settings(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        assert await store.get_setting("secret_expires_at") is None
        await store.set_setting("secret_expires_at", "2027-03-01T00:00:00+00:00")
        await store.set_setting("secret_expires_at", "2028-03-01T00:00:00+00:00")
        await store.set_setting("other", "")
        assert await store.get_setting("secret_expires_at") == "2028-03-01T00:00:00+00:00"
        assert await store.get_setting("other") == ""
        await store.close()
    run(scenario)


# -- failures ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend",
                         ["sqlite-under-a-file", "sqlite-is-a-directory", "postgresql-closed-port"])
def test_an_unreachable_database_is_a_store_error_naming_the_cause(backend: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "a-directory").mkdir()
    url, expected = {
        "sqlite-under-a-file": (f"sqlite:///{tmp_path}/a-file/relay365.db",
                                f"cannot open the SQLite database at {tmp_path}/a-file/relay365.db: "
                                f"cannot create its directory: {tmp_path}/a-file is a file, not a directory"),
        "sqlite-is-a-directory": (f"sqlite:///{tmp_path}/a-directory",
                                  f"cannot open the SQLite database at {tmp_path}/a-directory: "
                                  "unable to open database file"),
        "postgresql-closed-port": (make_url(POSTGRES_URL).set(port=1).render_as_string(hide_password=False),
                                   "cannot connect to PostgreSQL at "),
    }[backend]

    async def scenario() -> None:
        with pytest.raises(StoreError) as caught:
            await Store.open(url, new_box())
        assert caught.value.message.startswith(expected)
        assert caught.value.__cause__ is not None
        if backend.startswith("postgresql"):
            assert ":1/" in caught.value.message and "refused" in caught.value.message
    run(scenario)


def test_a_failing_statement_is_a_store_error_naming_what_was_done(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        db.query("DROP TABLE settings")
        with pytest.raises(StoreError) as caught:
            await store.get_setting("secret_expires_at")
        assert caught.value.message.startswith(
            ("the SQLite database at " if db.backend == "sqlite" else "PostgreSQL at ")
            + f"{db.path or ''}")
        assert "failed while reading setting 'secret_expires_at': " in caught.value.message
        assert "settings" in caught.value.message
        await store.close()
    run(scenario)


def test_a_closed_store_refuses_work(db: Database) -> None:
    async def scenario() -> None:
        store = await Store.open(db.url, new_box())
        await store.close()
        await store.close()  # closing twice is harmless
        with pytest.raises(StoreError, match="was closed before reading setting 'x'"):
            await store.get_setting("x")
        assert "closed" in repr(store)
    run(scenario)


@pytest.mark.parametrize("url", ["mysql://relay:hunter2@db/relay365", "not a url",
                                 "postgresql+psycopg2://relay:hunter2@db/relay365"])
def test_an_unsupported_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="sqlite:///PATH or postgresql://") as caught:
        asyncio.run(Store.open(url, new_box()))
    assert "hunter2" not in str(caught.value)


def test_plain_postgresql_urls_mean_psycopg() -> None:
    with postgres_schema() as schema:
        url = _libpq(POSTGRES_URL, schema)
        assert url.startswith("postgresql://")

        async def scenario() -> None:
            store = await Store.open(url, new_box())
            await store.set_setting("k", "v")
            assert await store.get_setting("k") == "v"
            assert repr(store).startswith("Store(PostgreSQL at ")
            await store.close()
        run(scenario)
