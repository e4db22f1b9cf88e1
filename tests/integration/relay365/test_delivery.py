"""Delivery: the engine end to end against m365sim with a real store (the pacer alone: test_pacer.py).

Engine tests queue messages in a SQLite store in tmp_path, sign the demo connection in
through the browser flow, and deliver with ``run_until_idle`` (or ``start``/``stop``);
what m365sim's mailboxes and request log hold is the proof.  Nothing sleeps to wait for
something to happen: tests wait on the engine, on events, or on m365sim's answers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest

from m365sim import Simulator
from relay365.auth import Connection, SecretBox, sign_in_with_browser
from relay365.config import ConnectionSettings, Settings, settings_from_dict
from relay365.delivery import DeliveryEngine, Pacer, TransportFactory
from relay365.demo import demo_settings, signed_in_browser
from relay365.errors import NeedsSignIn, TransientError
from relay365.store import MessageState, NewMessage, QueuedMessage, Store
from relay365.transport import Envelope, SendOutcome, Transport, transport_for

T = TypeVar("T")
QUEUED, SENDING, SENT, DEFERRED, FAILED = (MessageState.QUEUED, MessageState.SENDING, MessageState.SENT,
                                           MessageState.DEFERRED, MessageState.FAILED)
SEND_MAIL = "/v1.0/me/sendMail"
CUSTOMER = "customer@example.org"


# ---- the engine against m365sim ----------------------------------------------------------------

def make_settings(sim: Simulator, tmp_path: Path, *, delivery: dict[str, Any] | None = None,
                  **connection: Any) -> Settings:
    data = demo_settings(sim, tmp_path)
    data["connections"][0].update(connection)
    data["delivery"] = {"minimal_backoff": 0.05, "maximal_backoff": 0.5, "lease_seconds": 30,
                        **(delivery or {})}
    return settings_from_dict(data, env={})


def email(sender: str, subject: str, to: str = CUSTOMER, body: str = "Body text") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg.as_bytes()


async def enqueue(store: Store, count: int, sender: str = "info@contoso.com",
                  recipients: tuple[str, ...] = (CUSTOMER,)) -> list[str]:
    return [await store.enqueue(NewMessage("demo", sender, recipients, email(sender, f"message {n}"),
                                           "smtp", "127.0.0.1", f"message {n}"))
            for n in range(count)]


def with_store(sim: Simulator | None, settings: Settings, body: Callable[[Store], Awaitable[T]], *,
               sign_in: bool = True) -> T:
    """Run ``body`` with the settings' store, the demo connection signed in first."""

    async def main() -> T:
        store = await Store.open(settings.store_url, SecretBox.from_environment(settings.key_file))
        try:
            if sign_in and sim is not None:
                connection = Connection(settings.connection("demo"), store)
                try:
                    await sign_in_with_browser(connection, on_url=signed_in_browser(sim.ca_file),
                                               open_browser=False, timeout=30)
                finally:
                    connection.close()
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def messages(store: Store, ids: list[str]) -> list[QueuedMessage]:
    found = [await store.get_message(i) for i in ids]
    assert all(m is not None for m in found)
    return [m for m in found if m is not None]


def statuses(sim: Simulator, path: str = SEND_MAIL) -> list[int | str]:
    return [r.status for r in sim.requests() if r.path == path]


class Watched:
    """A real transport that tells the test when a send starts; without one, a send that stalls."""

    def __init__(self, started: asyncio.Event, inner: Transport | None = None,
                 connection: Connection | None = None) -> None:
        self.started = started
        self.inner = inner
        self.connection = connection

    async def send(self, envelope: Envelope) -> SendOutcome:
        self.started.set()
        if self.inner is None:
            await asyncio.Event().wait()  # a worker stuck (or dying) mid-send
        assert self.inner is not None
        return await self.inner.send(envelope)

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()
        if self.connection is not None:
            self.connection.close()


def watched(store: Store, *, stall: bool = False) -> tuple[asyncio.Event, TransportFactory]:
    """An event set when a send starts, and the transport factory for the engine."""
    started = asyncio.Event()

    def factory(conn: ConnectionSettings) -> Transport:
        if stall:
            return Watched(started)
        connection = Connection(conn, store)
        return Watched(started, transport_for(conn, connection), connection)

    return started, factory


def test_queued_messages_are_delivered_with_their_attempts_recorded(
        m365sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay365.delivery")
    settings = make_settings(m365sim, tmp_path)

    async def body(store: Store) -> tuple[list[QueuedMessage], list[Any]]:
        ids = await enqueue(store, 3) + await enqueue(store, 1, sender="admin@contoso.com")
        # An envelope recipient the headers do not name (a Bcc the client stripped).
        ids += [await store.enqueue(NewMessage("demo", "info@contoso.com", (CUSTOMER, "hidden@example.org"),
                                               email("info@contoso.com", "with bcc"), "api", "app"))]
        engine = DeliveryEngine(settings, store)
        try:
            await engine.run_until_idle()
        finally:
            await engine.stop(grace=5)
        return await messages(store, ids), [await store.attempts(i) for i in ids]

    done, attempts = with_store(m365sim, settings, body)
    assert [m.state for m in done] == [SENT] * 5
    assert all(m.attempts == 1 and m.sent_at is not None and m.request_id for m in done)
    assert [[(a.number, a.outcome, a.transport) for a in rows] for rows in attempts] == [
        [(1, "sent", "graph")]] * 5
    assert all(rows[0].request_id == m.request_id for rows, m in zip(attempts, done, strict=True))
    delivered = m365sim.mailbox(CUSTOMER).messages
    assert sorted(m.subject for m in delivered) == [
        "message 0", "message 0", "message 1", "message 2", "with bcc"]
    first = next(m for m in delivered if m.parsed()["From"] == "admin@contoso.com")
    assert first.parsed().get_content() == "Body text\n"
    assert len(m365sim.mailbox("hidden@example.org").messages) == 1
    sent_lines = [r.getMessage() for r in caplog.records if "status=sent" in r.getMessage()]
    assert sorted(line.split(":", 1)[0] for line in sent_lines) == sorted(m.id for m in done)
    assert all("relay=graph" in line and "delay=" in line and "request_id" in line for line in sent_lines)


@pytest.mark.m365sim("throttled")
def test_pacing_keeps_a_mailbox_inside_30_a_minute(m365sim: Simulator, tmp_path: Path) -> None:
    # m365sim's throttled scenario runs its limit windows 60 times faster than real time;
    # the pacer's clock runs 60 times faster too, so the same sliding windows are compared.
    # Raising messages_per_minute to "30 a second" would not do: a 60 s window allowing
    # 1800 would let 1800 go in the first second.
    settings = make_settings(m365sim, tmp_path, messages_per_minute=30)

    async def body(store: Store) -> tuple[list[QueuedMessage], float]:
        ids = await enqueue(store, 90)
        engine = DeliveryEngine(settings, store, pacer=Pacer(time_scale=60))
        began = time.monotonic()
        try:
            await engine.run_until_idle(within=30)
        finally:
            await engine.stop(grace=5)
        return await messages(store, ids), time.monotonic() - began

    done, took = with_store(m365sim, settings, body)
    assert [m.state for m in done] == [SENT] * 90
    assert len(m365sim.mailbox(CUSTOMER).messages) == 90
    answers = statuses(m365sim)
    assert answers.count(429) <= 2, answers
    assert took >= 2.0  # 90 messages at 30 per (compressed) minute: three windows


def test_a_503_storm_is_retried_with_backoff_until_it_passes(m365sim: Simulator, tmp_path: Path) -> None:
    settings = make_settings(m365sim, tmp_path)
    m365sim.fault(SEND_MAIL, status=503, count=5, retry_after=1)

    async def body(store: Store) -> tuple[list[QueuedMessage], list[Any]]:
        ids = await enqueue(store, 3)
        engine = DeliveryEngine(settings, store)
        try:
            await engine.run_until_idle(within=30)
        finally:
            await engine.stop(grace=5)
        return await messages(store, ids), [await store.attempts(i) for i in ids]

    done, attempts = with_store(m365sim, settings, body)
    assert [m.state for m in done] == [SENT] * 3
    assert statuses(m365sim).count(503) == 5
    assert sum(m.attempts for m in done) == 3 + 5
    retried = [rows for rows in attempts if len(rows) > 1]
    assert retried
    for rows in retried:
        assert [a.outcome for a in rows] == ["deferred"] * (len(rows) - 1) + ["sent"]
        for failed, after in itertools.pairwise(rows):
            assert (failed.code, failed.entry_id) == ("ServiceUnavailable", "R365-TRANSIENT")
            assert "503" in (failed.detail or "")
            # Retry-After: 1 is a floor under the 0.05 s backoff.
            assert (after.started_at - failed.finished_at).total_seconds() >= 0.95


@pytest.mark.m365sim("no-send-as")
def test_send_as_denied_goes_to_the_dead_letter_and_a_retry_after_the_grant_delivers(
        m365sim: Simulator, tmp_path: Path) -> None:
    settings = make_settings(m365sim, tmp_path)

    async def body(store: Store) -> tuple[QueuedMessage, QueuedMessage, list[Any]]:
        [queue_id] = await enqueue(store, 1)
        engine = DeliveryEngine(settings, store)
        try:
            await engine.run_until_idle()
            [dead] = await messages(store, [queue_id])
            m365sim.grant_send_as("info@contoso.com", "admin@contoso.com")
            assert await store.retry(queue_id)
            engine.kick()
            await engine.run_until_idle()
        finally:
            await engine.stop(grace=5)
        [sent] = await messages(store, [queue_id])
        return dead, sent, await store.attempts(queue_id)

    dead, sent, attempts = with_store(m365sim, settings, body)
    assert dead.state is FAILED and dead.attempts == 1
    assert (dead.last_entry_id, dead.last_code) == ("M365-SEND-AS-DENIED", "ErrorSendAsDenied")
    assert "403" in (dead.last_detail or "")
    assert sent.state is SENT
    assert [(a.outcome, a.entry_id) for a in attempts] == [("failed", "M365-SEND-AS-DENIED"), ("sent", None)]
    assert [m.parsed()["From"] for m in m365sim.mailbox(CUSTOMER).messages] == ["info@contoso.com"]


@pytest.mark.m365sim("refresh-revoked")
def test_needs_sign_in_holds_the_mail_without_burning_attempts(
        m365sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay365.delivery")
    settings = make_settings(m365sim, tmp_path, delivery={"workers": 1})
    calls: list[tuple[str, NeedsSignIn]] = []

    async def hook(connection: str, error: NeedsSignIn) -> None:
        calls.append((connection, error))

    def renewals() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "still needs sign-in" in r.getMessage()]

    async def body(store: Store) -> list[QueuedMessage]:
        m365sim.advance(6000)  # the access token expires at Microsoft; the refresh is refused
        ids = await enqueue(store, 3)
        engine = DeliveryEngine(settings, store, on_needs_sign_in=hook, sign_in_hold=0.3)
        try:
            # Until several holds have ended and been renewed by a token check, however long
            # the machine takes for each (a fixed window counted how many fitted in it).
            deadline = time.monotonic() + 30
            while len(renewals()) < 2 and time.monotonic() < deadline:
                await engine.run_until_idle(within=0.5)
        finally:
            await engine.stop(grace=5)
        return await messages(store, ids)

    held = with_store(m365sim, settings, body)
    assert [m.state for m in held] == [DEFERRED] * 3
    assert [m.attempts for m in held] == [1, 0, 0]  # only the message that met it
    assert {m.last_entry_id for m in held} == {"AAD-REFRESH-REVOKED"}
    assert [(name, error.entry.id, error.code) for name, error in calls] == [
        ("demo", "AAD-REFRESH-REVOKED", "AADSTS50173")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "relay365.delivery"]
    assert len(warnings) == 1 and "needs sign-in" in warnings[0].getMessage()
    # Each hold ended with a token check (MSAL answers repeats of a refused refresh from its
    # own memory for a while) and was renewed: the mail was not tried again.
    assert len(renewals()) >= 2
    assert statuses(m365sim) == [401]
    assert not m365sim.mailbox(CUSTOMER).messages


def test_a_dead_workers_lease_expires_and_another_engine_delivers(m365sim: Simulator,
                                                                   tmp_path: Path) -> None:
    settings = make_settings(m365sim, tmp_path, delivery={"lease_seconds": 1})

    async def body(store: Store) -> tuple[QueuedMessage, QueuedMessage, list[Any], list[Any]]:
        [queue_id] = await enqueue(store, 1)
        stuck, factory = watched(store, stall=True)
        first = DeliveryEngine(settings, store, worker_id="node1", transports=factory)
        await first.start()
        await stuck.wait()
        await first.stop(grace=0)  # the worker dies mid-send: nothing is written, the lease stays
        [orphan] = await messages(store, [queue_id])
        second = DeliveryEngine(settings, store, worker_id="node2")
        try:
            await second.run_until_idle(within=10)  # waits for the lease to end
        finally:
            await second.stop(grace=5)
        [sent] = await messages(store, [queue_id])
        return orphan, sent, await store.attempts(queue_id), await store.events(queue_id)

    orphan, sent, attempts, events = with_store(m365sim, settings, body)
    assert orphan.state is SENDING and orphan.lease_owner == "node1:1"
    assert sent.state is SENT and sent.attempts == 2
    assert [(a.number, a.outcome, a.worker.split(":")[0]) for a in attempts] == [(2, "sent", "node2")]
    took_over = f"lease of node1:1 expired; claimed by {attempts[0].worker}"
    assert any(took_over in (e.detail or "") for e in events)
    assert len(m365sim.mailbox(CUSTOMER).messages) == 1


def test_a_long_send_renews_its_lease_so_no_other_engine_takes_it(m365sim: Simulator,
                                                                  tmp_path: Path) -> None:
    settings = make_settings(m365sim, tmp_path, delivery={"lease_seconds": 0.6})
    m365sim.fault(SEND_MAIL, kind="latency", latency=1.8, count=1)

    async def body(store: Store) -> QueuedMessage:
        [queue_id] = await enqueue(store, 1)
        sending, factory = watched(store)
        first = DeliveryEngine(settings, store, worker_id="node1", transports=factory)
        second = DeliveryEngine(settings, store, worker_id="node2")
        await first.start()
        try:
            await sending.wait()
            await second.run_until_idle(within=1.5)  # keeps looking while the lease would have ended
        finally:
            await first.stop(grace=10)
            await second.stop(grace=10)
        [message] = await messages(store, [queue_id])
        return message

    message = with_store(m365sim, settings, body)
    assert message.state is SENT and message.attempts == 1
    assert len(m365sim.mailbox(CUSTOMER).messages) == 1


def test_stop_lets_the_send_in_flight_finish_and_leaves_the_rest_queued(m365sim: Simulator,
                                                                       tmp_path: Path) -> None:
    settings = make_settings(m365sim, tmp_path, delivery={"workers": 1})
    m365sim.fault(SEND_MAIL, kind="latency", latency=1.0, count=1)

    async def body(store: Store) -> list[QueuedMessage]:
        ids = await enqueue(store, 3)
        sending, factory = watched(store)
        engine = DeliveryEngine(settings, store, transports=factory)
        await engine.start()
        await sending.wait()
        await engine.stop(grace=10)
        return await messages(store, ids)

    first, *rest = with_store(m365sim, settings, body)
    assert first.state is SENT and first.attempts == 1
    assert [(m.state, m.attempts) for m in rest] == [(QUEUED, 0), (QUEUED, 0)]
    assert len(m365sim.mailbox(CUSTOMER).messages) == 1


def test_stop_past_its_grace_keeps_the_lease_of_a_send_in_flight(m365sim: Simulator,
                                                                tmp_path: Path) -> None:
    settings = make_settings(m365sim, tmp_path, delivery={"workers": 1})
    m365sim.fault(SEND_MAIL, kind="latency", latency=2.0, count=1)

    async def body(store: Store) -> QueuedMessage:
        [queue_id] = await enqueue(store, 1)
        sending, factory = watched(store)
        engine = DeliveryEngine(settings, store, worker_id="node1", transports=factory)
        await engine.start()
        await sending.wait()
        await engine.stop(grace=0.1)
        [message] = await messages(store, [queue_id])
        return message

    message = with_store(m365sim, settings, body)
    # Microsoft may or may not have taken it: it waits for its lease, then is tried again.
    assert message.state is SENDING and message.lease_owner == "node1:1"


def test_a_kick_claims_at_once_instead_of_at_the_next_poll(m365sim: Simulator, tmp_path: Path) -> None:
    settings = make_settings(m365sim, tmp_path)

    async def body(store: Store) -> QueuedMessage:
        sending, factory = watched(store)
        engine = DeliveryEngine(settings, store, transports=factory, poll_interval=60)
        await engine.start()
        try:
            [queue_id] = await enqueue(store, 1)
            engine.kick()
            await asyncio.wait_for(sending.wait(), timeout=10)  # not 60 s: the kick did it
        finally:
            await engine.stop(grace=10)
        [message] = await messages(store, [queue_id])
        return message

    assert with_store(m365sim, settings, body).state is SENT


# ---- the engine with a stand-in transport (no m365sim) ---------------------------------------

class Scripted:
    """A transport that answers from a script: an exception to raise, or None to accept."""

    def __init__(self, script: list[BaseException | None]) -> None:
        self.script = script
        self.sent: list[Envelope] = []
        self.times: list[float] = []

    async def send(self, envelope: Envelope) -> SendOutcome:
        self.times.append(time.monotonic())
        step = self.script.pop(0) if self.script else None
        if step is not None:
            raise step
        self.sent.append(envelope)
        return SendOutcome("graph", "mime", f"req-{len(self.sent)}", len(envelope.raw))

    async def aclose(self) -> None:
        pass


def offline_settings(tmp_path: Path, **delivery: Any) -> Settings:
    return settings_from_dict({
        "state_dir": str(tmp_path / "state"),
        "connections": [{"name": "demo", "tenant": "contoso.onmicrosoft.com", "client_id": "app",
                         "senders": ["info@contoso.com"]}],
        "delivery": {"minimal_backoff": 0.05, "maximal_backoff": 0.5, **delivery},
    }, env={})


def scripted_run(tmp_path: Path, script: list[BaseException | None], *, within: float = 5,
                 **delivery: Any) -> tuple[QueuedMessage, list[Any], Scripted]:
    settings = offline_settings(tmp_path, **delivery)
    transport = Scripted(script)

    async def body(store: Store) -> tuple[QueuedMessage, list[Any]]:
        [queue_id] = await enqueue(store, 1)
        engine = DeliveryEngine(settings, store, transports=lambda conn: transport)
        try:
            await engine.run_until_idle(within=within)
        finally:
            await engine.stop(grace=5)
        [message] = await messages(store, [queue_id])
        return message, await store.attempts(queue_id)

    message, attempts = with_store(None, settings, body, sign_in=False)
    return message, attempts, transport


def test_a_foreign_error_from_a_transport_is_retried_not_lost(tmp_path: Path) -> None:
    message, attempts, transport = scripted_run(tmp_path, [KeyError("surprise")])
    assert message.state is SENT and len(transport.sent) == 1
    assert [(a.outcome, a.entry_id) for a in attempts] == [("deferred", "R365-INTERNAL"), ("sent", None)]
    assert "KeyError" in (attempts[0].detail or "")


def test_a_temporary_failure_past_the_queue_lifetime_goes_to_the_dead_letter(tmp_path: Path) -> None:
    message, attempts, _ = scripted_run(tmp_path, [TransientError("503 again", code="ServiceUnavailable")],
                                        maximal_queue_lifetime=0.001)
    assert message.state is FAILED and message.last_code == "ServiceUnavailable"
    assert "maximal_queue_lifetime" in (message.last_detail or "")
    assert [a.outcome for a in attempts] == ["failed"]


def test_a_429_cools_the_whole_mailbox_down(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    settings = settings.model_copy(update={"connections": [
        settings.connections[0].model_copy(update={"concurrent_requests": 1})]})
    transport = Scripted([TransientError("429", retry_after=1, status=429)])

    async def body(store: Store) -> tuple[list[QueuedMessage], list[Any]]:
        ids = await enqueue(store, 2)
        engine = DeliveryEngine(settings, store, transports=lambda conn: transport)
        try:
            await engine.run_until_idle(within=5)
        finally:
            await engine.stop(grace=5)
        return await messages(store, ids), await store.attempts(ids[0])

    (first, second), attempts = with_store(None, settings, body, sign_in=False)
    assert [a.outcome for a in attempts] == ["deferred", "sent"]
    assert (attempts[1].started_at - attempts[0].finished_at).total_seconds() >= 0.95  # Retry-After: 1
    # Claimed with it, the second waited out the mailbox's cool-down instead of meeting a 429 too.
    assert first.state is SENT and second.state is SENT and second.attempts == 1
    assert transport.times[1] - transport.times[0] >= 0.99
