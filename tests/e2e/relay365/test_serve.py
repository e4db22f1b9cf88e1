"""`relay365 serve` as a process: dead letter and `queue retry`, SIGHUP reload, health."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from m365sim import Simulator
from relay365 import Client
from relay365.auth import sign_in_with_browser
from relay365.config import settings_from_dict, write_settings
from relay365.demo import demo_settings, signed_in_browser
from tests.ports import free_port


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RELAY365_")}, "COLUMNS": "250"}


def write_config(sim: Simulator, tmp_path: Path, port: int, **connection: Any) -> Path:
    data = demo_settings(sim, tmp_path)
    data["connections"][0].update(connection)
    data["relay"] = {"smtp": [{"host": "127.0.0.1", "port": port}], "http_port": 0}
    data["delivery"] = {"minimal_backoff": 0.2}
    config = tmp_path / "relay365.toml"
    write_settings(settings_from_dict(data, env={}), config)
    return config


def sign_in(sim: Simulator, config: Path) -> None:
    async def login() -> None:
        async with Client(config) as client:
            await sign_in_with_browser(await client.connection(), on_url=signed_in_browser(sim.ca_file),
                                       open_browser=False, timeout=30)

    asyncio.run(login())


@contextmanager
def relay(config: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    with subprocess.Popen([sys.executable, "-m", "relay365", "serve", "--config", str(config)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env()) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY "), line
        try:
            yield proc, json.loads(line[6:])
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay365", *args], capture_output=True, text=True,
                          timeout=60, env=env())


def eventually(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def send(port: int, sender: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail(sender, ["dl@example.org"],
                      f"From: {sender}\r\nTo: dl@example.org\r\nSubject: {subject}\r\n\r\nhi\r\n".encode())


@pytest.mark.m365sim("no-send-as")
def test_dead_letter_then_queue_retry_after_the_grant(m365sim: Simulator, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(m365sim, tmp_path, port)
    sign_in(m365sim, config)
    with relay(config) as (_, ready):
        send(port, "info@contoso.com", "dead letter")
        eventually(lambda: "ErrorSendAsDenied" in cli("queue", "list", "--state", "failed",
                                                      "--config", str(config)).stdout)
        listing = cli("queue", "list", "--state", "failed", "--config", str(config)).stdout
        queue_id = next(line.split()[1] for line in listing.splitlines() if "ErrorSendAsDenied" in line)
        shown = cli("queue", "show", queue_id, "--config", str(config))
        assert "M365-SEND-AS-DENIED" in shown.stdout and "Send As permissions" in shown.stdout
        m365sim.grant_send_as("info@contoso.com", "admin@contoso.com")
        retried = cli("queue", "retry", queue_id, "--config", str(config))
        assert retried.returncode == 0, retried.stderr
        eventually(lambda: len(m365sim.mailbox("dl@example.org").messages) == 1)
        health = httpx.get(f"{ready['http_url']}/readyz").json()
    assert health["status"] == "ready"
    log = cli("log", "--to", "dl@example.org", "--config", str(config))
    assert queue_id in log.stdout and "sent" in log.stdout


def test_sighup_reloads_the_senders(m365sim: Simulator, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(m365sim, tmp_path, port)
    sign_in(m365sim, config)
    with relay(config) as (proc, _):
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            send(port, "sales@contoso.com", "before")
        assert refused.value.smtp_code == 550
        write_config(m365sim, tmp_path, port,
                     senders=["admin@contoso.com", "info@contoso.com", "sales@contoso.com"])
        proc.send_signal(signal.SIGHUP)

        def accepted() -> bool:
            try:
                send(port, "sales@contoso.com", "after")
            except (OSError, smtplib.SMTPException):
                return False
            return True

        eventually(accepted)


def test_swaks_through_the_relay(m365sim: Simulator, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(m365sim, tmp_path, port)
    sign_in(m365sim, config)
    with relay(config):
        result = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--from", "info@contoso.com",
                                 "--to", "swaks@example.org", "--header", "Subject: sent by swaks",
                                 "--body", "hello from swaks"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout
        assert "<-  250 2.0.0 Ok: queued as" in result.stdout
        eventually(lambda: len(m365sim.mailbox("swaks@example.org").messages) == 1)
    got = m365sim.mailbox("swaks@example.org").messages[0].parsed()
    assert got["Subject"] == "sent by swaks"
    assert "hello from swaks" in got.get_content()


def test_api_key_and_user_added_by_the_cli_are_accepted(m365sim: Simulator, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(m365sim, tmp_path, port)
    sign_in(m365sim, config)
    added = subprocess.run([sys.executable, "-m", "relay365", "api-key", "add", "shop",
                            "--sender", "info@contoso.com", "--config", str(config)],
                           capture_output=True, text=True, timeout=60, env=env())
    assert added.returncode == 0, added.stderr
    key = next(w for w in added.stdout.split() if w.startswith("r365_"))
    user = subprocess.run([sys.executable, "-m", "relay365", "user", "add", "printer",
                           "--config", str(config)], input="s3cret-pass\ns3cret-pass\n",
                          capture_output=True, text=True, timeout=60, env=env())
    assert user.returncode == 0, user.stderr
    text = config.read_text()
    assert key not in text and "s3cret-pass" not in text and "$argon2id$" in text
    with relay(config) as (_, ready):
        url = ready["http_url"].replace("127.0.0.1", "localhost")
        ok = httpx.post(f"{url}/api/v1/messages", headers={"Authorization": f"Bearer {key}"}, json={
            "from": "info@contoso.com", "to": ["api@example.org"], "subject": "by key", "text": "hi"})
        wrong = httpx.post(f"{url}/api/v1/messages", headers={"Authorization": "Bearer nope"}, json={
            "from": "info@contoso.com", "to": ["api@example.org"], "subject": "no", "text": "hi"})
        assert (ok.status_code, wrong.status_code) == (202, 401)
        eventually(lambda: len(m365sim.mailbox("api@example.org").messages) == 1)


def test_a_reload_that_cannot_start_keeps_the_running_configuration(tmp_path: Path) -> None:
    import logging

    from relay365.config import load_settings
    from relay365.serve import serve

    port = free_port()
    config = tmp_path / "relay365.toml"

    def write(smtp_port: int) -> None:
        write_settings(settings_from_dict({"state_dir": str(tmp_path / "state"), "relay": {
            "smtp": [{"host": "127.0.0.1", "port": smtp_port}], "http_port": 0}}, env={}), config)

    def listening(smtp_port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", smtp_port), timeout=5):
                return True
        except OSError:
            return False

    def accepts(smtp_port: int) -> bool:
        eventually(lambda: listening(smtp_port), timeout=30)  # the previous listener, restarted
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as smtp:
            return smtp.noop()[0] == 250

    errors: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fell_back = asyncio.Event()

        class Watch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                errors.append(record.getMessage())
                loop.call_soon_threadsafe(fell_back.set)

        watch = Watch(logging.ERROR)
        logging.getLogger("relay365.serve").addHandler(watch)
        write(port)
        stop = asyncio.Event()
        started = asyncio.Event()
        running = asyncio.create_task(serve(load_settings(config), stop=stop, grace=1, config_file=config,
                                            on_ready=lambda _: started.set()))
        await started.wait()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            write(taken.getsockname()[1])
            os.kill(os.getpid(), signal.SIGHUP)
            await fell_back.wait()
        assert await asyncio.to_thread(accepts, port)  # the previous listener runs again
        stop.set()
        await running
        logging.getLogger("relay365.serve").removeHandler(watch)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert len(errors) == 1 and "the new configuration did not start" in errors[0]
    assert "address already in use" in errors[0]
