"""One send path: the same messages, through every way in, reach Microsoft 365 byte for byte the same.

A running ``relay365 serve`` takes each message by SMTP (smtplib, as a real client submits:
Bcc stripped, recipients in the envelope), by ``relay365 sendmail -t -i`` (as PHP's mail()
pipes it, bare LF line ends), by the HTTP API (``message/rfc822``), and ``relay365 send
--raw`` and the Python ``Client`` send it at once.  What m365sim's Graph stores for each
recipient is compared with what the Client's copy became: equal bytes, whichever way it
came, with force_from on (an unowned From is rewritten the same way everywhere) and off
(it is refused everywhere, for the same reason).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import smtplib
import subprocess
import sys
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from m365sim import Simulator
from relay365 import Client, ConfigError, PermanentError
from relay365.mime import read_head

from .test_serve import env, eventually, free_port, relay, sign_in, write_config

CUSTOMER = "customer@example.org"
HIDDEN = "hidden@example.org"
PATHS = ("client", "smtp", "sendmail", "http", "cli-send")


def _base(sender: str | Address, subject: str, n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = CUSTOMER
    msg["Subject"] = subject
    msg["Date"] = format_datetime(dt.datetime(2027, 5, 1, 12, n, tzinfo=dt.UTC))
    msg["Message-ID"] = f"<parity-{n}@app.example>"
    return msg


def plain() -> EmailMessage:
    msg = _base("info@contoso.com", "Plain text", 1)
    msg.set_content("Hello,\n.a line that starts with a dot\nBye\n")
    return msg


def multipart_with_attachment() -> EmailMessage:
    msg = _base(Address("Contoso Info", addr_spec="info@contoso.com"), "Invoice attached", 2)
    msg.set_content("Your invoice is attached.\n")
    msg.add_alternative("<p>Your <b>invoice</b> is attached.</p>\n", subtype="html")
    msg.add_attachment(random.Random(7).randbytes(50_000), "application", "pdf", filename="invoice.pdf")
    return msg


def with_bcc() -> EmailMessage:
    msg = _base("admin@contoso.com", "With a blind copy", 3)
    msg["Bcc"] = HIDDEN
    msg.set_content("Someone else reads this too.\n")
    return msg


def utf8_headers() -> EmailMessage:
    msg = _base(Address("Zoë Café", addr_spec="info@contoso.com"), "Réunion — ünïcödé ✓ 日本語", 4)
    msg.set_content("Grüße aus Zürich — 你好\n", charset="utf-8")
    return msg


def unowned_from() -> EmailMessage:
    msg = _base(Address("WordPress", addr_spec="wordpress@shop.example"), "Your order #1001", 5)
    msg.set_content("Thank you for your order.\n")
    return msg


OWNED = {"plain": plain, "multipart": multipart_with_attachment, "bcc": with_bcc, "utf8": utf8_headers}


def serialised(messages: dict[str, EmailMessage]) -> dict[str, bytes]:
    """Each message's bytes, written once: the Client writes the same EmailMessage the same way."""
    return {name: msg.as_bytes(policy=SMTP) for name, msg in messages.items()}


def recipients_of(raw: bytes) -> list[str]:
    return read_head(raw).addresses("To", "Cc", "Bcc")


def submit(path: str, config: Path, smtp_port: int, http_url: str, name: str, msg: EmailMessage,
           raw: bytes, tmp_path: Path) -> None:
    """Send one message by ``path``; fail the test, with what was said, if it is not accepted."""
    if path == "client":
        async def send() -> None:
            async with Client(config) as client:
                await client.send(msg)
        asyncio.run(send())
    elif path == "smtp":
        stripped = b"".join(line for line in raw.splitlines(keepends=True)
                            if not line.lower().startswith(b"bcc:"))  # what smtplib.send_message does
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
            smtp.sendmail(read_head(raw).from_address or "", recipients_of(raw), stripped)
    elif path == "sendmail":
        done = subprocess.run([sys.executable, "-m", "relay365", "sendmail", "-t", "-i"],
                              input=raw.replace(b"\r\n", b"\n"), capture_output=True, timeout=60,
                              env={**env(), "RELAY365_CONFIG": str(config)})
        assert done.returncode == 0, done.stderr.decode()
    elif path == "http":
        answer = httpx.post(f"{http_url}/api/v1/messages", content=raw,
                            headers={"Content-Type": "message/rfc822"}, timeout=30)
        assert answer.status_code == 202, answer.text
    else:
        eml = tmp_path / f"{name}.eml"
        eml.write_bytes(raw)
        done = subprocess.run([sys.executable, "-m", "relay365", "send", "--raw", str(eml),
                               "--config", str(config)], capture_output=True, timeout=60, env=env())
        assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()


def delivered(sim: Simulator, address: str, message_id: str) -> list[bytes]:
    return [m.raw for m in sim.mailbox(address).messages if read_head(m.raw).get("Message-ID") == message_id]


def run_every_path(sim: Simulator, tmp_path: Path, messages: dict[str, EmailMessage],
                   **connection: Any) -> dict[str, dict[str, bytes]]:
    """{path: {message name: the bytes the customer got}}, every message sent once by each path."""
    raws = serialised(messages)
    port = free_port()
    config = write_config(sim, tmp_path, port, messages_per_minute=10_000, concurrent_requests=16,
                          **connection)
    sign_in(sim, config)
    got: dict[str, dict[str, bytes]] = {}
    with relay(config) as (_, ready):
        for path in PATHS:
            for mailbox in (CUSTOMER, HIDDEN):
                sim.mailbox(mailbox).clear()
            for name, msg in messages.items():
                submit(path, config, port, ready["http_url"], name, msg, raws[name], tmp_path)
            ids = {name: str(msg["Message-ID"]) for name, msg in messages.items()}
            eventually(lambda ids=ids: all(len(delivered(sim, CUSTOMER, i)) == 1 for i in ids.values()))
            got[path] = {name: delivered(sim, CUSTOMER, i)[0] for name, i in ids.items()}
            if "bcc" in messages:
                hidden = ids["bcc"]
                eventually(lambda hidden=hidden: len(delivered(sim, HIDDEN, hidden)) == 1)
                assert delivered(sim, HIDDEN, hidden) == [got[path]["bcc"]], path
    return got


def assert_same_everywhere(got: dict[str, dict[str, bytes]]) -> None:
    reference = got["client"]
    for path, copies in got.items():
        for name, raw in copies.items():
            assert raw == reference[name], f"{name} through {path} differs from the Client's copy"


@pytest.fixture
def lifted(m365sim: Simulator) -> Simulator:
    # Pacing is not what this test is about: Graph's per-minute limit gets room.
    m365sim.edit_scenario(lambda s: dataclasses.replace(s, limits=dataclasses.replace(
        s.limits, concurrent_requests=50, messages_per_minute=10_000)))
    return m365sim


def test_every_way_in_delivers_the_same_bytes(lifted: Simulator, tmp_path: Path) -> None:
    messages = {name: build() for name, build in OWNED.items()}
    got = run_every_path(lifted, tmp_path, messages)
    assert_same_everywhere(got)
    reference = got["client"]
    sent = serialised(messages)
    # The body and every MIME part are the application's bytes; nobody sees the Bcc.
    for name, raw in reference.items():
        assert raw.partition(b"\r\n\r\n")[2] == sent[name].partition(b"\r\n\r\n")[2], name
    assert b"bcc:" not in reference["bcc"].lower() and HIDDEN.encode() not in reference["bcc"]
    assert read_head(reference["utf8"]).subject == "Réunion — ünïcödé ✓ 日本語"


def test_force_from_rewrites_an_unowned_from_the_same_way_everywhere(lifted: Simulator,
                                                                     tmp_path: Path) -> None:
    messages = {"unowned": unowned_from(), "plain": plain()}
    got = run_every_path(lifted, tmp_path, messages, force_from=True)
    assert_same_everywhere(got)
    head = read_head(got["client"]["unowned"])
    assert head.get_all("From") == ['"Contoso (relay365 demo)" <info@contoso.com>']
    assert not head.has("Sender")
    # An owned From is kept as the application wrote it.
    assert read_head(got["client"]["plain"]).get_all("From") == ["info@contoso.com"]


def test_without_force_from_an_unowned_from_is_refused_everywhere_for_the_same_reason(
        lifted: Simulator, tmp_path: Path) -> None:
    msg = unowned_from()
    raw = msg.as_bytes(policy=SMTP)
    port = free_port()
    config = write_config(lifted, tmp_path, port)
    reason = "<wordpress@shop.example>: sender not owned by any connection (not an open relay)"
    with relay(config) as (_, ready):
        async def by_client() -> None:
            async with Client(config) as client:
                await client.send(msg)
        with pytest.raises(ConfigError) as refused:
            asyncio.run(by_client())
        assert reason in refused.value.message
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp, \
                pytest.raises(smtplib.SMTPSenderRefused) as smtp_refused:
            smtp.sendmail("wordpress@shop.example", [CUSTOMER], raw)
        assert (smtp_refused.value.smtp_code, smtp_refused.value.smtp_error.decode()) == (
            550, f"5.7.1 {reason}")
        piped = subprocess.run([sys.executable, "-m", "relay365", "sendmail", "-t", "-i"], input=raw,
                               capture_output=True, timeout=60, env={**env(), "RELAY365_CONFIG": str(config)})
        assert piped.returncode == 77 and reason in piped.stderr.decode()  # EX_NOPERM
        answer = httpx.post(f"{ready['http_url']}/api/v1/messages", content=raw,
                            headers={"Content-Type": "message/rfc822"}, timeout=30)
        assert answer.status_code == 403 and reason in answer.text, answer.text
        eml = tmp_path / "unowned.eml"
        eml.write_bytes(raw)
        cli = subprocess.run([sys.executable, "-m", "relay365", "send", "--raw", str(eml), "--config",
                              str(config)], capture_output=True, text=True, timeout=60, env=env())
        assert cli.returncode != 0 and "sender not owned by any connection" in cli.stderr + cli.stdout
    assert lifted.mailbox(CUSTOMER).messages == []


@pytest.mark.m365sim("no-send-as")
def test_a_failed_direct_send_waits_in_the_dead_letter_and_is_retried_from_the_log(
        m365sim: Simulator, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(m365sim, tmp_path, port)
    sign_in(m365sim, config)
    msg = plain()

    async def send() -> str:
        async with Client(config) as client:
            with pytest.raises(PermanentError) as failed:
                await client.send(msg)
            assert failed.value.entry.id == "M365-SEND-AS-DENIED"
            [message] = await (await client.store()).list_messages(states=None, limit=1)
            assert (message.state, message.last_entry_id, message.source) == ("failed", "M365-SEND-AS-DENIED",
                                                                              "api")
            return message.id

    queue_id = asyncio.run(send())
    m365sim.grant_send_as("info@contoso.com", "admin@contoso.com")
    with relay(config):
        retried = subprocess.run([sys.executable, "-m", "relay365", "queue", "retry", queue_id, "--config",
                                  str(config)], capture_output=True, text=True, timeout=60, env=env())
        assert retried.returncode == 0, retried.stderr
        eventually(lambda: len(m365sim.mailbox(CUSTOMER).messages) == 1)
    assert read_head(m365sim.mailbox(CUSTOMER).messages[0].raw).get("Message-ID") == "<parity-1@app.example>"
