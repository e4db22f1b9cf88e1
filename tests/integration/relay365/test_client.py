"""The Python API end to end: sign-in, routing, sending, failures with their diagnosis."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest

import relay365
from m365sim import Simulator
from relay365 import Client, ConfigError, NeedsSignIn, PermanentError, Settings
from relay365.auth import sign_in_with_browser
from relay365.config import settings_from_dict
from relay365.demo import DEMO_SECRET, demo_settings, signed_in_browser

T = TypeVar("T")


def settings(sim: Simulator, tmp_path: Path, **changes: Any) -> Settings:
    data = demo_settings(sim, tmp_path)
    data["connections"][0].update(changes)
    return settings_from_dict(data, env={})


def signed_in(sim: Simulator, tmp_path: Path, body: Callable[[Client], Awaitable[T]], **changes: Any) -> T:
    """Run ``body`` with a client whose connection has signed in through the browser flow."""

    async def main() -> T:
        async with Client(settings(sim, tmp_path, **changes)) as client:
            await sign_in_with_browser(await client.connection(), on_url=signed_in_browser(sim.ca_file),
                                       open_browser=False, timeout=30)
            return await body(client)

    return asyncio.run(main())


def message(sender: str, to: str = "customer@example.org", subject: str = "Hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Body text")
    return msg


def test_public_surface_is_what_all_says() -> None:
    for name in relay365.__all__:  # every advertised name resolves (some load lazily)
        getattr(relay365, name)
    public = {n for n, v in vars(relay365).items()
              if not n.startswith("_") and not isinstance(v, type(relay365))}
    assert public <= set(relay365.__all__)
    assert {"Client", "SendResult", "Relay365Error", "NeedsSignIn"} <= set(relay365.__all__)


def test_send_as_self_and_as_the_shared_mailbox(m365sim: Simulator, tmp_path: Path) -> None:
    async def body(client: Client) -> list[relay365.SendResult]:
        return [await client.send(message("admin@contoso.com")),
                await client.send(message("info@contoso.com", subject="From the shared mailbox"))]

    own, shared = signed_in(m365sim, tmp_path, body)
    delivered = m365sim.mailbox("customer@example.org").messages
    assert [m.parsed()["From"] for m in delivered] == ["admin@contoso.com", "info@contoso.com"]
    assert all(m.identity == "admin@contoso.com" and m.path == "graph-mime" for m in delivered)
    assert own.connection == shared.connection == "demo"
    assert shared.request_id is not None

    async def log() -> list[Any]:
        async with Client(settings(m365sim, tmp_path)) as client:
            return await (await client.store()).list_messages(limit=10)

    records = asyncio.run(log())  # direct sends are outbox messages, in the one log
    assert [(r.id, r.sender, r.state, r.source, r.attempts) for r in records] == [
        (shared.id, "info@contoso.com", "sent", "api", 1), (own.id, "admin@contoso.com", "sent", "api", 1)]


def test_an_envelope_only_recipient_gets_it_and_nobody_sees_bcc(m365sim: Simulator, tmp_path: Path) -> None:
    async def body(client: Client) -> Any:
        return await client.send(message("info@contoso.com"), recipients=["hidden@example.org"])

    signed_in(m365sim, tmp_path, body)
    hidden = m365sim.mailbox("hidden@example.org").messages
    visible = m365sim.mailbox("customer@example.org").messages
    assert len(hidden) == 1 and len(visible) == 1
    assert b"Bcc:" not in visible[0].raw and "hidden@example.org" not in visible[0].raw.decode()


def test_unknown_sender_is_refused_and_force_from_rewrites(m365sim: Simulator, tmp_path: Path) -> None:
    async def refused(client: Client) -> None:
        with pytest.raises(ConfigError, match=r"<stranger@example\.org>: sender not owned by any connection"):
            await client.send(message("stranger@example.org"))

    signed_in(m365sim, tmp_path, refused)

    async def forced(client: Client) -> Any:
        return await client.send(message("stranger@example.org"))

    result = signed_in(m365sim, tmp_path, forced, force_from=True)
    assert result.sender == "info@contoso.com"
    delivered = m365sim.mailbox("customer@example.org").messages[-1].parsed()
    assert delivered["From"] == '"Contoso (relay365 demo)" <info@contoso.com>'


@pytest.mark.m365sim("no-send-as")
def test_no_send_as_is_a_permanent_error_naming_send_as(m365sim: Simulator, tmp_path: Path) -> None:
    async def body(client: Client) -> Any:
        with pytest.raises(PermanentError) as info:
            await client.send(message("info@contoso.com"))
        return info.value, await (await client.store()).list_messages(limit=1)

    error, records = signed_in(m365sim, tmp_path, body)
    assert error.entry.id == "M365-SEND-AS-DENIED"
    assert error.code == "ErrorSendAsDenied" and error.status == 403
    assert "Send As permissions" in error.fix
    # In the dead letter with its diagnosis, to be retried from the log once Send As is granted.
    assert (records[0].state, records[0].last_entry_id, records[0].last_code) == (
        "failed", "M365-SEND-AS-DENIED", "ErrorSendAsDenied")


@pytest.mark.m365sim("secret-expired")
def test_expired_secret_names_the_secret_and_its_expiry(m365sim: Simulator, tmp_path: Path) -> None:
    async def main() -> relay365.AuthError:
        async with Client(settings(m365sim, tmp_path, secret_expires="2026-06-01")) as client:
            with pytest.raises(relay365.AuthError) as info:
                await sign_in_with_browser(await client.connection(),
                                           on_url=signed_in_browser(m365sim.ca_file),
                                           open_browser=False, timeout=30)
            return info.value

    error = asyncio.run(main())
    assert error.entry.id == "AAD-SECRET-EXPIRED"
    assert "2026-06-01" in error.message and "demo" in error.message
    assert "Certificates & secrets" in error.fix


@pytest.mark.m365sim("refresh-revoked")
def test_revoked_refresh_means_needs_sign_in_with_its_diagnosis(m365sim: Simulator, tmp_path: Path) -> None:
    async def body(client: Client) -> Any:
        await client.send(message("info@contoso.com"))
        m365sim.advance(6000)  # the access token expires at Microsoft; the refresh is refused
        with pytest.raises(NeedsSignIn) as info:
            await client.send(message("info@contoso.com"))
        return info.value, await (await client.store()).connection_state("demo")

    error, state = signed_in(m365sim, tmp_path, body)
    assert (error.entry.id, error.code) == ("AAD-REFRESH-REVOKED", "AADSTS50173")
    assert "relay365 login" in error.fix
    assert state.needs_sign_in


def test_twenty_concurrent_sends_after_expiry_cost_one_token_request(m365sim: Simulator,
                                                                     tmp_path: Path) -> None:
    def token_posts() -> int:
        return sum(1 for r in m365sim.requests() if r.path.endswith("/oauth2/v2.0/token"))

    async def body(client: Client) -> tuple[int, int]:
        await client.send(message("info@contoso.com"))
        before = token_posts()
        m365sim.advance(6000)
        await asyncio.gather(*(client.send(message("info@contoso.com", subject=f"n{i}")) for i in range(20)))
        return before, token_posts()

    # Graph allows 4 concurrent requests per mailbox and 30 a minute: pacing is the
    # outbox's job, not this test's, so the limits get room here.
    m365sim.edit_scenario(lambda s: replace(s, limits=replace(
        s.limits, concurrent_requests=50, messages_per_minute=1000)))
    before, after = signed_in(m365sim, tmp_path, body)
    assert after - before == 1
    assert len(m365sim.mailbox("customer@example.org").messages) == 21


def test_no_secret_in_logs_or_errors(m365sim: Simulator, tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def body(client: Client) -> tuple[str, str]:
        await client.send(message("info@contoso.com"))
        token = await (await client.connection()).acquire_token()
        cache = await (await client.store()).load_token_cache("demo")
        assert cache is not None
        refresh = next(iter(json.loads(cache)["RefreshToken"].values()))["secret"]
        return token.value, refresh

    access, refresh = signed_in(m365sim, tmp_path, body)
    text = caplog.text
    for secret in (access, refresh, DEMO_SECRET):
        assert secret not in text
    db = (tmp_path / "state" / "relay365.db").read_bytes()
    assert refresh.encode() not in db and DEMO_SECRET.encode() not in db
