"""Killed with SIGKILL mid-load, restarted: no message that got 250 is lost.

2,000 messages from 10 concurrent SMTP clients; the relay is killed midway and started
again on the same store.  Clients resend what was not acknowledged, as any SMTP client
does.  Every acknowledged message must be delivered; duplicates may only come from
messages that were in flight at the kill (claimed by a worker, or in DATA).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from m365sim import Simulator
from relay365 import Client
from relay365.auth import SecretBox, sign_in_with_browser
from relay365.config import load_settings, settings_from_dict, write_settings
from relay365.demo import demo_settings, signed_in_browser
from relay365.store import MessageState, Store
from tests.ports import free_port

CLIENTS, PER_CLIENT = 10, 200
KILL_AFTER = 700  # acknowledged messages before the kill


def start_relay(config: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY365_")}
    proc = subprocess.Popen([sys.executable, "-m", "relay365", "serve", "--config", str(config),
                             "--grace", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    return proc


def test_sigkill_loses_no_acknowledged_message(m365sim: Simulator, tmp_path: Path) -> None:
    m365sim.edit_scenario(lambda s: replace(s, limits=replace(
        s.limits, messages_per_minute=10**9, concurrent_requests=64, recipients_per_day=10**9)))
    port = free_port()
    data = demo_settings(m365sim, tmp_path)
    data["connections"][0].update(messages_per_minute=10**6, recipients_per_day=10**9, concurrent_requests=8)
    data["relay"] = {"smtp": [{"host": "127.0.0.1", "port": port}], "http_port": 0}
    data["delivery"] = {"lease_seconds": 3, "minimal_backoff": 0.2}
    config = tmp_path / "relay365.toml"
    write_settings(settings_from_dict(data, env={}), config)

    async def login() -> None:
        async with Client(config) as client:
            await sign_in_with_browser(await client.connection(), on_url=signed_in_browser(m365sim.ca_file),
                                       open_browser=False, timeout=30)

    asyncio.run(login())
    relay = start_relay(config)
    acknowledged: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()
    restarted = threading.Event()

    def client(n: int) -> None:
        smtp: smtplib.SMTP | None = None
        for i in range(PER_CLIENT):
            subject = f"crash-{n}-{i}"
            body = (f"From: info@contoso.com\r\nTo: crash@example.org\r\nSubject: {subject}\r\n\r\n"
                    f"message {n}/{i}\r\n").encode()
            while True:
                try:
                    if smtp is None:
                        smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
                    smtp.sendmail("info@contoso.com", ["crash@example.org"], body)
                    break
                except (OSError, smtplib.SMTPException):
                    # The relay is down: wait for it to come back, then resend.
                    if smtp is not None:
                        smtp.close()
                    smtp = None
                    restarted.wait(60)
            with lock:
                acknowledged.append(subject)
                if len(acknowledged) == KILL_AFTER:
                    killed.set()
        if smtp is not None:
            smtp.quit()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    assert killed.wait(120), "the relay did not acknowledge enough messages"
    relay.send_signal(signal.SIGKILL)
    relay.wait(30)
    assert relay.stdout is not None
    relay.stdout.close()

    settings = load_settings(config, env={})

    async def in_flight() -> int:
        store = await Store.open(settings.store_url, SecretBox.from_environment(settings.key_file))
        try:
            return (await store.queue_counts()).get(MessageState.SENDING, 0)
        finally:
            await store.close()

    sending_at_kill = asyncio.run(in_flight())
    relay = start_relay(config)
    restarted.set()
    try:
        for t in threads:
            t.join(180)
        assert all(not t.is_alive() for t in threads)
        expected = {f"crash-{n}-{i}" for n in range(CLIENTS) for i in range(PER_CLIENT)}
        deadline = time.monotonic() + 180
        subjects: Counter[str] = Counter()
        seen = 0
        while time.monotonic() < deadline:
            delivered = m365sim.mailbox("crash@example.org").messages
            subjects.update(m.subject for m in delivered[seen:])  # each message parsed once, not each look
            seen = len(delivered)
            if expected <= set(subjects):
                break
            time.sleep(0.2)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(30)
        assert relay.stdout is not None
        relay.stdout.close()
    missing = expected - set(subjects)
    duplicates = sum(c - 1 for c in subjects.values() if c > 1)
    print(json.dumps({"acknowledged": len(acknowledged), "sending_at_kill": sending_at_kill,
                      "duplicates": duplicates}))
    assert not missing, f"{len(missing)} acknowledged messages were lost, e.g. {sorted(missing)[:5]}"
    # A duplicate needs a message in flight at the kill: claimed by a worker (sent to
    # Graph, outcome not yet written) or in DATA at one of the clients (committed, 250 lost).
    assert duplicates <= sending_at_kill + CLIENTS
