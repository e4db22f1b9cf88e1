"""relay365 sendmail: run as PHP's mail() and cron run it (a child process reading stdin).

The command reads relay365.toml through RELAY365_CONFIG and queues into the SQLite
outbox in tmp_path, or hands the message to a running relay when RELAY365_SENDMAIL_SMTP
is set.  Exit codes are sendmail's (sysexits).
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from relay365.auth import SecretBox
from relay365.config import Settings, settings_from_dict, write_settings
from relay365.ingress import sendmail_main
from relay365.store import Store
from tests.integration.relay365.test_ingress import RelayThread, relay_settings

SENDMAIL = "import sys; from relay365.ingress import sendmail_command; sys.exit(sendmail_command())"

# What PHP's mail() pipes to `sendmail -t -i`: headers joined by CRLF (PHP 8), To and Subject
# first, the body with the script's own LF line ends.
PHP_MESSAGE = (b"To: alice@example.com\r\n"
               b"Subject: Your order\r\n"
               b"From: Shop <info@contoso.com>\r\n"
               b"Cc: Bob <bob@example.com>\r\n"
               b"Bcc: carol@example.com\r\n"
               b"MIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=UTF-8\r\n"
               b"\n"
               b"Thank you for your order.\n"
               b".\n"
               b"The line above is a lone dot: with -i it is text.\n")


def configure(tmp_path: Path, settings: Settings | None = None) -> dict[str, str]:
    settings = settings or relay_settings(tmp_path)
    path = tmp_path / "relay365.toml"
    write_settings(settings, path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY365_")}
    env["RELAY365_CONFIG"] = str(path)
    return env


def sendmail(env: dict[str, str], args: list[str], message: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", SENDMAIL, *args], input=message, env=env,
                          capture_output=True, timeout=60, check=False)


def queued(settings_url: str) -> list[tuple[Any, bytes]]:
    async def read() -> list[tuple[Any, bytes]]:
        store = await Store.open(settings_url, SecretBox(Fernet.generate_key()))
        try:
            messages = await store.list_messages()
            return [(m, await store.message_body(m.id)) for m in messages]
        finally:
            await store.close()

    return asyncio.run(read())


def test_php_mail_with_t_and_i_queues_with_the_right_envelope(tmp_path: Path) -> None:
    env = configure(tmp_path)
    done = sendmail(env, ["-t", "-i"], PHP_MESSAGE)
    assert (done.returncode, done.stderr, done.stdout) == (0, b"", b"")
    [(message, body)] = queued(relay_settings(tmp_path).store_url)
    assert (message.connection, message.sender, message.source, message.subject) == (
        "contoso", "info@contoso.com", "sendmail", "Your order")
    assert message.recipients == ("alice@example.com", "bob@example.com", "carol@example.com")
    assert message.client.startswith("uid ")
    assert b"\n" not in body.replace(b"\r\n", b"")  # every line ends in CRLF
    assert b"Bcc:" not in body and b"carol@example.com" not in body  # the Bcc stays in the envelope only
    head, _, text = body.partition(b"\r\n\r\n")
    assert b"\r\nDate: " in head and b"\r\nMessage-ID: <" in head
    assert text == (b"Thank you for your order.\r\n.\r\n"
                    b"The line above is a lone dot: with -i it is text.\r\n")


def test_without_i_a_lone_dot_ends_the_message(tmp_path: Path) -> None:
    env = configure(tmp_path)
    done = sendmail(env, ["-t"], PHP_MESSAGE)
    assert done.returncode == 0, done.stderr
    [(_, body)] = queued(relay_settings(tmp_path).store_url)
    assert body.endswith(b"\r\n\r\nThank you for your order.\r\n")


def test_cron_message_gets_a_from_with_the_full_name(tmp_path: Path) -> None:
    env = configure(tmp_path)
    message = b"Subject: Cron <root@host> backup\nContent-Type: text/plain\n\nbackup done\n"
    done = sendmail(env, ["-FCron Daemon", "-i", "-B8BITMIME", "-oem", "ops@example.com"], message)
    assert done.returncode == 0, done.stderr
    [(queued_message, body)] = queued(relay_settings(tmp_path).store_url)
    assert (queued_message.sender, queued_message.recipients) == ("info@contoso.com", ("ops@example.com",))
    assert b"\r\nFrom: Cron Daemon <info@contoso.com>\r\n" in body


def test_a_sender_no_connection_owns_exits_77(tmp_path: Path) -> None:
    env = configure(tmp_path)
    done = sendmail(env, ["-t", "-i", "-f", "ceo@evil.example"], PHP_MESSAGE)
    assert done.returncode == 77
    assert b"<ceo@evil.example>: sender not owned by any connection (not an open relay)" in done.stderr
    assert b"fix: " in done.stderr
    assert queued(relay_settings(tmp_path).store_url) == []


def test_no_recipient_exits_65(tmp_path: Path) -> None:
    env = configure(tmp_path)
    done = sendmail(env, ["-i"], b"From: info@contoso.com\nSubject: to nobody\n\nhello\n")
    assert done.returncode == 65
    assert b"No valid recipients" in done.stderr


def test_a_local_recipient_name_exits_67(tmp_path: Path) -> None:
    env = configure(tmp_path)
    done = sendmail(env, ["-i", "root"], b"Subject: cron\n\nout\n")
    assert done.returncode == 67
    assert b"<root>: Bad recipient address syntax" in done.stderr and b"MAILTO" in done.stderr


def test_a_bad_option_exits_64(tmp_path: Path) -> None:
    env = configure(tmp_path)
    done = sendmail(env, ["-Z", "alice@example.com"], PHP_MESSAGE)
    assert done.returncode == 64
    assert b"usage: relay365 sendmail" in done.stderr


def test_an_unavailable_store_exits_75(tmp_path: Path) -> None:
    data = relay_settings(tmp_path).model_dump(mode="json")
    data["store"] = "sqlite:////proc/relay365-cannot-be-here/relay365.db"
    env = configure(tmp_path, settings_from_dict(data))
    done = sendmail(env, ["-t", "-i"], PHP_MESSAGE)
    assert done.returncode == 75, done.stderr
    assert b"RELAY365_SENDMAIL_SMTP" in done.stderr  # the fix names the other way in


def test_a_broken_configuration_exits_78(tmp_path: Path) -> None:
    env = configure(tmp_path)
    Path(env["RELAY365_CONFIG"]).write_text("connections = [", encoding="utf-8")
    done = sendmail(env, ["-t", "-i"], PHP_MESSAGE)
    assert done.returncode == 78
    assert b"not valid TOML" in done.stderr


def test_through_the_running_relay_when_asked(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path)
    env = configure(tmp_path, settings)
    relay = RelayThread(settings)
    try:
        env["RELAY365_SENDMAIL_SMTP"] = f"127.0.0.1:{relay.port}"
        done = sendmail(env, ["-t", "-i"], PHP_MESSAGE)
        assert (done.returncode, done.stderr) == (0, b"")
        [message] = relay.call(relay.store.list_messages())
        assert (message.source, message.sender) == ("smtp", "info@contoso.com")
        assert message.recipients == ("alice@example.com", "bob@example.com", "carol@example.com")
        refused = sendmail(env, ["-i", "-f", "ceo@evil.example", "alice@example.com"], PHP_MESSAGE)
        assert refused.returncode == 77
    finally:
        relay.close()
    # The relay is gone: a temporary failure, as a queue would report it.
    done = sendmail(env, ["-t", "-i"], PHP_MESSAGE)
    assert done.returncode == 75
    assert b"cannot reach the relay" in done.stderr


# -- in process: the parts of the command line --------------------------------------------------


def run_inline(settings: Settings, args: list[str], message: bytes,
               capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = sendmail_main(args, io.BytesIO(message), settings)
    return status, capsys.readouterr().err


def test_t_adds_header_recipients_to_the_arguments(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = relay_settings(tmp_path)
    status, err = run_inline(settings, ["-t", "-oi", "dave@example.com, Erin <erin@example.com>"],
                             PHP_MESSAGE, capsys)
    assert (status, err) == (0, "")
    [(message, _)] = queued(settings.store_url)
    assert message.recipients == ("dave@example.com", "erin@example.com", "alice@example.com",
                                  "bob@example.com", "carol@example.com")


def test_f_sets_the_envelope_sender_and_the_from_must_agree(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = relay_settings(tmp_path)
    status, err = run_inline(settings, ["-i", "-f", "news@fabrikam.com", "alice@example.com"],
                             PHP_MESSAGE, capsys)
    assert status == 77
    assert "header From is not a sender of connection fabrikam" in err
    status, err = run_inline(settings, ["-i", "-fadmin@contoso.com", "alice@example.com"], PHP_MESSAGE,
                             capsys)
    assert (status, err) == (0, "")
    [(message, _)] = queued(settings.store_url)
    assert (message.sender, message.connection) == ("admin@contoso.com", "contoso")


def test_no_connection_configured_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_inline(Settings(state_dir=tmp_path), ["-t", "-i"], PHP_MESSAGE, capsys)
    assert status == 78
    assert "relay365 init" in err


def test_unsupported_modes_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = relay_settings(tmp_path)
    assert run_inline(settings, ["-bp"], b"", capsys)[0] == 64
    assert run_inline(settings, ["-q"], b"", capsys)[0] == 64
    assert run_inline(settings, ["-f", "not an address", "a@example.com"], b"", capsys)[0] == 64
