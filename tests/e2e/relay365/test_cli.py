"""The relay365 command, run as a user runs it: a subprocess reading a config file."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from m365sim import Simulator
from relay365 import Client
from relay365.auth import sign_in_with_browser
from relay365.config import settings_from_dict, write_settings
from relay365.demo import DEMO_SECRET, demo_settings, signed_in_browser
from tests.integration.m365sim.conftest import https


def relay365(*args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY365_")}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "relay365.cli", *args], capture_output=True, text=True,
                          input=input, timeout=timeout, env=env)


def test_init_writes_a_private_config_and_prints_the_entra_steps(tmp_path: Path) -> None:
    config = tmp_path / "relay365.toml"
    result = relay365("init", "--config", str(config), "--yes", "--name", "contoso",
                      "--tenant", "contoso.onmicrosoft.com",
                      "--client-id", "11111111-2222-3333-4444-555555555555",
                      "--client-secret", "abc~SECRET~value", "--account", "admin@contoso.com",
                      "--sender", "admin@contoso.com", "--sender", "info@contoso.com",
                      "--secret-expires", "2028-06-01")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "Redirect URI: http://localhost" in result.stdout
    for permission in ("Mail.Send", "Mail.Send.Shared", "offline_access", "Mail.ReadWrite"):
        assert f"Add delegated permission {permission}" in result.stdout
    assert "Send As permissions" in result.stdout
    assert "abc~SECRET~value" not in result.stdout
    again = relay365("init", "--config", str(config), "--yes", "--name", "contoso", "--tenant", "t",
                     "--client-id", "x", "--sender", "a@b.example")
    assert again.returncode == 1 and "already has a connection named 'contoso'" in again.stderr
    script = relay365("entra-script", "--config", str(config))
    assert script.returncode == 0
    assert "az ad app permission admin-consent" in script.stdout
    assert "a367ab51-6b49-43bf-a716-a1fb06d2a174=Scope" in script.stdout


def test_init_refuses_a_bad_value_with_an_example(tmp_path: Path) -> None:
    result = relay365("init", "--config", str(tmp_path / "r.toml"), "--yes", "--name", "c", "--tenant", "t",
                      "--client-id", "x", "--sender", "not-an-address")
    assert result.returncode == 1
    assert "senders: 'not-an-address' is not an email address" in result.stderr
    assert "R365-CONFIG" in result.stderr


def test_demo_check_delivers_on_seed_and_diagnoses_no_send_as() -> None:
    ok = relay365("demo", "--check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ready = json.loads(next(line for line in ok.stdout.splitlines() if line.startswith("READY "))[6:])
    assert ready["senders"] == ["admin@contoso.com", "info@contoso.com"]
    assert ready["recipient"] == "newcomer@example.net"
    assert ready["smtp_host"] == "127.0.0.1" and ready["smtp_port"] > 0
    assert ready["http_url"].startswith("http://127.0.0.1:")
    assert "Delivered to newcomer@example.net via graph-mime" in ok.stdout
    assert "Delivered one message each through SMTP, sendmail and the HTTP API" in ok.stdout
    failing = relay365("demo", "--check", "--scenario", "no-send-as")
    assert failing.returncode == 1
    assert "M365-SEND-AS-DENIED" in failing.stdout
    assert "Send As permissions" in failing.stdout


def _config(sim: Simulator, tmp_path: Path) -> Path:
    path = tmp_path / "relay365.toml"
    write_settings(settings_from_dict(demo_settings(sim, tmp_path), env={}), path)
    return path


def test_login_by_pasted_url_then_test_send_and_log(m365sim: Simulator, tmp_path: Path) -> None:
    config = _config(m365sim, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY365_")}
    with subprocess.Popen([sys.executable, "-m", "relay365.cli", "login", "--config", str(config), "--paste"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**env, "COLUMNS": "2000"}) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        url = next(line.strip() for line in proc.stdout if line.startswith("https://"))
        with https(m365sim) as browser:  # the admin's browser, already signed in
            landed = browser.get(url).headers["location"]
        out, err = proc.communicate(landed + "\n", timeout=60)
    assert proc.returncode == 0, err
    assert "Signed in as admin@contoso.com" in out
    assert "Mail.Send.Shared" in out

    sent = relay365("test", "--config", str(config), "--to", "boss@example.org")
    assert sent.returncode == 0, sent.stderr
    body = m365sim.mailbox("boss@example.org").messages[0].parsed().get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Connection: demo" in text and "Signed-in account: admin@contoso.com" in text
    assert "Sender: info@contoso.com" in text and "Transport: graph" in text

    attachment = tmp_path / "report.csv"
    attachment.write_text("a,b\n1,2\n")
    plain = relay365("send", "--config", str(config), "--from", "admin@contoso.com", "--to", "x@example.org",
                     "--bcc", "y@example.org", "--subject", "Report", "--text", "see attached",
                     "--attach", str(attachment))
    assert plain.returncode == 0, plain.stderr
    got = m365sim.mailbox("x@example.org").messages[0].parsed()
    assert got["Subject"] == "Report" and "Bcc" not in got
    assert next(got.iter_attachments()).get_content() == "a,b\n1,2\n"
    assert len(m365sim.mailbox("y@example.org").messages) == 1

    log = relay365("log", "--config", str(config))
    assert log.returncode == 0
    assert "boss@example.org" in log.stdout and "x@example.org" in log.stdout
    everything = out + err + sent.stdout + sent.stderr + plain.stdout + log.stdout
    assert DEMO_SECRET not in everything


@pytest.mark.m365sim("no-send-as")
def test_a_failed_send_prints_cause_and_fix(m365sim: Simulator, tmp_path: Path) -> None:
    config = _config(m365sim, tmp_path)
    # Sign in first (the browser step done in-process), then fail from the shared mailbox.
    async def login() -> None:
        async with Client(config) as client:
            await sign_in_with_browser(await client.connection(), on_url=signed_in_browser(m365sim.ca_file),
                                       open_browser=False, timeout=30)

    asyncio.run(login())
    result = relay365("send", "--config", str(config), "--to", "x@example.org", "--subject", "s",
                      "--text", "t")
    assert result.returncode == 1
    assert "[ErrorSendAsDenied]" in result.stderr
    assert "M365-SEND-AS-DENIED" in result.stderr and "Fix:" in result.stderr
    log = relay365("log", "--config", str(config))
    assert "failed" in log.stdout and "ErrorSendAsDenied" in log.stdout
