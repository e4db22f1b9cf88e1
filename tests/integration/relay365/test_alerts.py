"""Alerts, each trigger delivered through Apprise's json:// scheme to a loopback HTTP receiver.

The expiry watch runs on m365sim's clock: the app-only seed secret's end date is read
from Graph (applications(appId=...)), and the emulator's clock is moved to each threshold.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from m365sim import Simulator
from relay365 import Client
from relay365.alerts import (
    Alert,
    Alerter,
    AlertService,
    AlertSettings,
    AppriseChannel,
    EmailChannel,
    alert_settings_from,
    keep_alive,
)
from relay365.auth import SecretBox, sign_in_with_browser
from relay365.config import Settings, settings_from_dict
from relay365.demo import demo_settings, signed_in_browser
from relay365.diagnose import CredentialExpiry
from relay365.errors import ConfigError
from relay365.store import AttemptResult, MessageState, NewMessage, Store

T = TypeVar("T")
APP_ONLY = {"name": "apponly", "client_id": "22222222-aaaa-4bbb-8ccc-222222222222", "mode": "app-only",
            "client_secret": "seed~AppOnly.Secret-abcdefghij0123456789", "senders": ["info@contoso.com"],
            "secret_expires": None, "account": None, "default_sender": None}


class Receiver:
    """A loopback HTTP server keeping every JSON body posted to it."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.status = 200
        received = self.posts
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                received.append({"path": self.path, **json.loads(body)})
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.server.server_port}/{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def store_run(tmp_path: Path, body: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await Store.open(f"sqlite:///{tmp_path / 'alerts.db'}", SecretBox(secret_key()))
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def secret_key() -> bytes:
    import base64

    return base64.urlsafe_b64encode(b"k" * 32)


class FakeClock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def forward(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def sim_clock(sim: Simulator) -> Callable[[], dt.datetime]:
    """m365sim's clock, through its control API."""

    def now() -> dt.datetime:
        trust = ssl.create_default_context(cafile=str(sim.ca_file))
        answer = httpx.get(f"{sim.control_url}/clock", verify=trust).json()
        return dt.datetime.fromisoformat(answer["now"])

    return now


def sim_settings(sim: Simulator, tmp_path: Path, *connections: dict[str, Any]) -> Settings:
    data = demo_settings(sim, tmp_path)
    base = data["connections"][0]
    data["connections"] = [{k: v for k, v in {**base, **c}.items() if v is not None} for c in connections]
    return settings_from_dict(data, env={})


def test_alert_settings_load_and_refuse_mistakes() -> None:
    loaded = alert_settings_from({"urls": ["json://127.0.0.1:1/x"], "expiry_days": [7, 60, 30],
                                  "summary": "weekly"})
    assert loaded.expiry_days == [60, 30, 7] and loaded.summary == "weekly"
    assert alert_settings_from(None) == AlertSettings()
    with pytest.raises(ConfigError, match=r"alerts\.email_to"):
        alert_settings_from({"email_to": ["not an address"]})
    with pytest.raises(ConfigError, match=r"not an Apprise URL"):
        AppriseChannel("nosuchscheme://x")


def test_delivery_failures_are_grouped_and_rate_limited(receiver: Receiver) -> None:
    clock = FakeClock(dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC))
    alerter = Alerter(AlertSettings(failure_delay=60, failure_interval=900),
                      [AppriseChannel(receiver.url())], clock=clock)

    async def scenario() -> list[Alert | None]:
        sent: list[Alert | None] = []
        alerter.delivery_failed("Q1", "demo", "M365-SEND-AS-DENIED", "ErrorSendAsDenied")
        alerter.delivery_failed("Q2", "demo", "M365-SEND-AS-DENIED", "ErrorSendAsDenied")
        alerter.delivery_failed("Q3", "demo", "M365-NO-MAILBOX", "MailboxNotEnabledForRESTAPI")
        sent.append(await alerter.flush_failures())  # too early: still collecting
        clock.forward(61)
        sent.append(await alerter.flush_failures())  # one alert for the three
        alerter.delivery_failed("Q4", "demo", "M365-SEND-AS-DENIED")
        clock.forward(120)
        sent.append(await alerter.flush_failures())  # rate-limited
        clock.forward(900)
        sent.append(await alerter.flush_failures())
        return sent

    sent = asyncio.run(scenario())
    assert sent[0] is None and sent[2] is None
    assert len(receiver.posts) == 2
    first, second = receiver.posts
    assert first["title"] == "3 messages could not be delivered" and first["type"] == "failure"
    assert "2 × M365-SEND-AS-DENIED" in first["message"] and "Q1, Q2" in first["message"]
    assert "1 × M365-NO-MAILBOX" in first["message"] and "Fix:" in first["message"]
    assert first["message"].index("SEND-AS") < first["message"].index("NO-MAILBOX")
    assert second["title"] == "1 message could not be delivered" and "Q4" in second["message"]


def test_dead_letters_in_the_outbox_are_found(receiver: Receiver, tmp_path: Path) -> None:
    settings = settings_from_dict({"state_dir": str(tmp_path), "connections": [{
        "name": "demo", "tenant": "contoso.onmicrosoft.com", "client_id": "c",
        "senders": ["info@contoso.com"]}]}, env={})
    alerts = AlertSettings(urls=[receiver.url()], failure_delay=0, backlog_threshold=0, summary="off",
                           keep_alive=False)

    async def body(store: Store) -> int:
        service = AlertService(settings, alerts, store)
        old = await store.enqueue(NewMessage("demo", "info@contoso.com", ("a@example.org",), b"x", "api",
                                             None))
        await fail_all(store)
        await service.tick()  # learns what was already failed: no alert
        new = await store.enqueue(NewMessage("demo", "info@contoso.com", ("b@example.org",), b"y", "api",
                                             None))
        await fail_all(store)
        await service.tick()
        assert old not in receiver.posts[0]["message"] and new in receiver.posts[0]["message"]
        return len(receiver.posts)

    assert store_run(tmp_path, body) == 1
    assert "M365-SEND-AS-DENIED" in receiver.posts[0]["message"]


async def fail_all(store: Store) -> None:
    now = dt.datetime.now(dt.UTC)
    for m in await store.claim_due("w", limit=10, lease_seconds=60):
        await store.finish_attempt(m.id, "w", AttemptResult("failed", "graph", code="ErrorSendAsDenied",
                                                            entry_id="M365-SEND-AS-DENIED"), now)


def test_backlog_over_the_threshold_alerts_once(receiver: Receiver, tmp_path: Path) -> None:
    settings = settings_from_dict({"state_dir": str(tmp_path)}, env={})
    alerts = AlertSettings(urls=[receiver.url()], backlog_threshold=3)

    async def body(store: Store) -> list[Alert | None]:
        service = AlertService(settings, alerts, store)
        results = [await service.check_backlog()]
        for i in range(4):
            await store.enqueue(NewMessage("demo", "info@contoso.com", (f"r{i}@example.org",), b"x", "api",
                                           None))
        results += [await service.check_backlog(), await service.check_backlog()]
        return results

    results = store_run(tmp_path, body)
    assert results[0] is None and results[1] is not None and results[2] is None
    assert receiver.posts == [{"path": "/hook", "version": "1.0", "attachments": [], "type": "warning",
                               "title": "4 messages are waiting in the outbox",
                               "message": receiver.posts[0]["message"]}]
    assert "R365-BACKLOG" in receiver.posts[0]["message"]


def test_daily_summary_counts_and_top_causes(receiver: Receiver, tmp_path: Path) -> None:
    settings = settings_from_dict({"state_dir": str(tmp_path)}, env={})
    at_eight = dt.datetime.now(dt.UTC).replace(hour=8, minute=5)
    alerts = AlertSettings(urls=[receiver.url()], summary="daily", summary_hour=8)

    async def body(store: Store) -> tuple[Alert | None, Alert | None]:
        service = AlertService(settings, alerts, store, clock=lambda: at_eight)
        for i in range(3):
            await store.enqueue(NewMessage("demo", "info@contoso.com", (f"r{i}@example.org",), b"x", "api",
                                           None))
        await fail_all(store)
        await store.enqueue(NewMessage("demo", "info@contoso.com", ("w@example.org",), b"x", "api", None))
        return await service.maybe_summary(), await service.maybe_summary()

    first, again = store_run(tmp_path, body)
    assert first is not None and again is None  # once a day
    (post,) = receiver.posts
    assert post["title"] == "relay365 daily summary: 0 sent, 3 failed"
    assert "1 still waiting" in post["message"] and "3 × M365-SEND-AS-DENIED" in post["message"]


@pytest.mark.m365sim("refresh-revoked")
def test_keep_alive_finds_a_lost_sign_in_and_alerts(m365sim: Simulator, tmp_path: Path,
                                                     receiver: Receiver) -> None:
    settings = sim_settings(m365sim, tmp_path, {})
    alerts = AlertSettings(urls=[receiver.url()], summary="off")

    async def main() -> tuple[list[str], int]:
        async with Client(settings) as client:
            await sign_in_with_browser(await client.connection(), on_url=signed_in_browser(m365sim.ca_file),
                                       open_browser=False, timeout=30)
            service = AlertService(settings, alerts, await client.store())
            lost = await service.keep_alive()
            again = await service.check_sign_in_states()  # the state says so too: not twice
            return lost, len(again)

    lost, again = asyncio.run(main())
    assert lost == ["demo"] and again == 0
    (post,) = receiver.posts
    assert post["title"] == "Connection demo needs sign-in" and post["type"] == "failure"
    assert "AAD-REFRESH-REVOKED" in post["message"] and "relay365 login demo" in post["message"]


def test_keep_alive_refreshes_a_delegated_sign_in(m365sim: Simulator, tmp_path: Path) -> None:
    settings = sim_settings(m365sim, tmp_path, {})

    async def main() -> tuple[Any, Any]:
        async with Client(settings) as client:
            conn = await client.connection()
            await sign_in_with_browser(conn, on_url=signed_in_browser(m365sim.ca_file), open_browser=False,
                                       timeout=30)
            before = await (await client.store()).connection_state("demo")
            await asyncio.sleep(0.01)
            assert await keep_alive(conn) is None
            return before, await (await client.store()).connection_state("demo")

    token_requests = len([r for r in m365sim.requests() if r.path.endswith("/oauth2/v2.0/token")])
    before, after = asyncio.run(main())
    requests = [r for r in m365sim.requests() if r.path.endswith("/oauth2/v2.0/token")]
    assert len(requests) == token_requests + 2  # the sign-in's code redemption, then the refresh
    assert requests[-1].status == 200 and requests[-1].identity == "admin@contoso.com"
    assert after.last_refresh_at > before.last_refresh_at


def test_expiry_watch_on_m365sims_clock(m365sim: Simulator, tmp_path: Path, receiver: Receiver) -> None:
    # The app-only app may read its registration (Application.Read.All): the end date
    # comes from Graph, 2027-06-01, not from the configuration (which has none).
    settings = sim_settings(m365sim, tmp_path, APP_ONLY)
    alerts = AlertSettings(urls=[receiver.url()], summary="off", keep_alive=False)
    clock = sim_clock(m365sim)
    end = dt.datetime(2027, 6, 1, tzinfo=dt.UTC)

    async def main() -> list[list[str]]:
        store = await Store.open(settings.store_url, SecretBox.from_environment(settings.key_file))
        service = AlertService(settings, alerts, store, clock=clock)
        titles: list[list[str]] = []
        try:
            for days in (100, 60, 59, 30, 13, 1, 0, -1):
                # an hour more than `days` left (the last step: a day after the end)
                target = end - dt.timedelta(days=days, hours=1)
                m365sim.advance(max(0.0, (target - clock()).total_seconds()))
                titles.append([a.title for a in await service.check_expiry()])
        finally:
            await service.close()
            await store.close()
        return titles

    titles = asyncio.run(main())
    secret = "The client secret of connection apponly expires"
    assert titles == [[], [f"{secret} in 60 days"], [], [f"{secret} in 30 days"], [f"{secret} in 13 days"],
                      [f"{secret} in 1 day"], [f"{secret} today"],
                      ["The client secret of connection apponly has expired"]]
    assert [p["type"] for p in receiver.posts] == ["warning", "warning", "warning", "failure", "failure",
                                                   "failure"]
    assert "AAD-SECRET-EXPIRED" in receiver.posts[-1]["message"]
    assert "read from Microsoft Graph" in receiver.posts[0]["message"]
    assert "R365-SECRET-EXPIRING" in receiver.posts[0]["message"]


def test_expiry_alerts_once_per_threshold_and_when_expired() -> None:
    alerter = Alerter(AlertSettings(), [])
    end = dt.datetime(2027, 1, 10, tzinfo=dt.UTC)
    expiry = CredentialExpiry("demo", "client secret", "configured", end, "secret_expires")

    async def at(day: dt.datetime) -> str | None:
        alert = await alerter.credential_expiring(expiry, day)
        return alert.title if alert else None

    async def run() -> list[str | None]:
        days = [end - dt.timedelta(days=d) for d in (61, 45, 30, 29, 8, 7)]
        return [await at(d) for d in days] + [await at(end + dt.timedelta(hours=1))]

    title = "The client secret of connection demo"
    assert asyncio.run(run()) == [None, f"{title} expires in 45 days", f"{title} expires in 30 days", None,
                                  f"{title} expires in 8 days", f"{title} expires in 7 days",
                                  f"{title} has expired"]


def test_email_alerts_avoid_the_connection_they_are_about(tmp_path: Path) -> None:
    settings = settings_from_dict({"state_dir": str(tmp_path), "connections": [
        {"name": "main", "tenant": "t", "client_id": "c", "senders": ["info@contoso.com"]},
        {"name": "backup", "tenant": "t", "client_id": "d", "senders": ["alerts@contoso.com"]}]}, env={})

    async def body(store: Store) -> tuple[bool, bool, list[Any]]:
        channel = EmailChannel(settings, ["it@contoso.com"], store.enqueue)
        broken = Alert("needs-sign-in", "Connection main needs sign-in", "held", "failure", "main")
        alone = EmailChannel(settings, ["it@contoso.com"], store.enqueue, connections=["main"])
        about_main = await channel.deliver(broken)
        only_main = await alone.deliver(broken)
        queued = await store.list_messages(states={MessageState.QUEUED})
        return about_main, only_main, [(m, await store.message_body(m.id)) for m in queued]

    about_main, only_main, queued = store_run(tmp_path, body)
    assert about_main is True and only_main is False
    ((message, raw),) = queued
    assert message.connection == "backup" and message.sender == "alerts@contoso.com"
    parsed = message_from_bytes(raw)
    assert parsed["X-Relay365-Alert"] == "needs-sign-in; about=main"
    assert parsed["Auto-Submitted"] == "auto-generated" and parsed["To"] == "it@contoso.com"
