"""relay365.ingress: the policy, the header reader, and the SMTP relay over real sockets.

The relay runs on its own event loop in a thread (``RelayThread``) with a real SQLite
outbox in tmp_path; the tests speak SMTP to it with smtplib, or with a raw socket where
smtplib would not send what an attacker sends.  Replies are compared with the named
constants of ``relay365.ingress.replies``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import itertools
import logging
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import relay365.ingress
from relay365.auth import SecretBox
from relay365.config import Settings, settings_from_dict
from relay365.errors import StoreError
from relay365.ingress import Credentials, hash_password
from relay365.mime import has_bare_newline, normalise_newlines, read_head, with_fields, without_fields
from relay365.policy import Client, Policy, Refusal, Route, replies
from relay365.store import NewMessage, Store

T = TypeVar("T")
PASSWORD = "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD)
RAW = (b"From: Contoso <info@contoso.com>\r\n"
       b"To: alice@example.com\r\n"
       b"Subject: =?utf-8?q?Caf=C3=A9?= report\r\n"
       b"Content-Type: text/plain; charset=utf-8\r\n"
       b"Content-Transfer-Encoding: 8bit\r\n"
       b"\r\n"
       b"Hello Alice,\r\n"
       b".a line that starts with a dot\r\n"
       b"..and one with two\r\n"
       b"caf\xc3\xa9 \xe2\x82\xac\r\n")


def relay_settings(tmp_path: Path, **relay: Any) -> Settings:
    """Two connections (contoso, fabrikam), one SMTP user, a listener on a free loopback port."""
    relay.setdefault("smtp", [{"host": "127.0.0.1", "port": 0}])
    relay.setdefault("users", [{"name": "printer", "password_hash": PASSWORD_HASH}])
    return settings_from_dict({
        "state_dir": str(tmp_path / "state"),
        "connections": [
            {"name": "contoso", "tenant": "contoso.onmicrosoft.com",
             "client_id": "11111111-aaaa-4bbb-8ccc-111111111111",
             "senders": ["info@contoso.com", "admin@contoso.com"]},
            {"name": "fabrikam", "tenant": "fabrikam.onmicrosoft.com",
             "client_id": "22222222-aaaa-4bbb-8ccc-222222222222", "senders": ["news@fabrikam.com"]},
        ],
        "relay": relay,
    })


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay365 test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "relay.crt", directory / "relay.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def client_tls(cert_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert_file))


class FailingStore:
    """An outbox whose database is down."""

    def __init__(self) -> None:
        self.calls = 0

    async def enqueue(self, message: NewMessage) -> str:
        self.calls += 1
        raise StoreError("database is locked")

    async def get_message(self, message_id: str) -> None:
        return None

    async def attempts(self, message_id: str) -> list[Any]:
        return []

    async def close(self) -> None:
        pass


class LoopThread:
    """An asyncio event loop running in a thread; ``call`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="relay365-test-loop", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        self.call(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class RelayThread(LoopThread):
    """relay365's SMTP listeners and an outbox (a real Store unless one is given) in a loop thread."""

    def __init__(self, settings: Settings, store: Any = None) -> None:
        super().__init__()
        self.settings = settings
        try:
            self.store = store or self.call(Store.open(settings.store_url, SecretBox(Fernet.generate_key())))
            self.servers = self.call(
                relay365.ingress.start_smtp_listeners(settings, self.store, Policy(settings)))
        except BaseException:
            super().close()
            raise
        self.ports = [s.sockets[0].getsockname()[1] for s in self.servers]
        self.port = self.ports[0]

    def smtp(self, port: int | None = None) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", port or self.port, timeout=30)

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
                await server.wait_closed()
            await self.store.close()

        self.call(stop())
        super().close()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayThread]:
    thread = RelayThread(relay_settings(tmp_path))
    yield thread
    thread.close()


def reply(answer: tuple[int, bytes]) -> str:
    code, text = answer
    return f"{code} {text.decode()}"


def send(smtp: smtplib.SMTP, sender: str, recipients: list[str], raw: bytes) -> str:
    """MAIL, RCPT..., DATA; the DATA reply (the first refusal's reply if any step is refused)."""
    smtp.ehlo_or_helo_if_needed()
    answer = smtp.mail(sender)
    if answer[0] != 250:
        return reply(answer)
    for rcpt in recipients:
        answer = smtp.rcpt(rcpt)
        if answer[0] != 250:
            return reply(answer)
    return reply(smtp.data(raw))


def queue_id(answer: str) -> str:
    prefix = replies.QUEUED.format(queue_id="")
    assert answer.startswith(prefix), answer
    return answer[len(prefix):]


class RawSession:
    """An SMTP conversation over a bare socket: for bytes smtplib would not send."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""
        assert self.read().startswith("220 ")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> str:
        """One (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {lines!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] != b"-":
                return "\n".join(lines)

    def command(self, line: bytes) -> str:
        self.send(line + b"\r\n")
        return self.read()

    def close(self) -> None:
        try:
            self.command(b"QUIT")
        finally:
            self.sock.close()


def stored(relay: RelayThread, qid: str) -> tuple[Any, bytes]:
    message = relay.call(relay.store.get_message(qid))
    assert message is not None
    return message, relay.call(relay.store.message_body(qid))


def queued_count(relay: RelayThread) -> int:
    return len(relay.call(relay.store.list_messages()))


# -- accepting and routing ----------------------------------------------------------------------


def test_accepted_message_is_queued_byte_for_byte(relay: RelayThread) -> None:
    with relay.smtp() as smtp:
        answer = send(smtp, "info@contoso.com", ["alice@example.com", "Bob@Example.com"], RAW)
    qid = queue_id(answer)
    assert answer == replies.QUEUED.format(queue_id=qid)
    message, body = stored(relay, qid)
    assert body == RAW
    assert (message.connection, message.sender, message.recipients) == (
        "contoso", "info@contoso.com", ("alice@example.com", "Bob@Example.com"))
    assert (message.source, message.client, message.subject, message.size) == (
        "smtp", "[127.0.0.1]", "Café report", len(RAW))
    assert message.state == "queued"


def test_routes_each_sender_to_the_connection_that_owns_it(relay: RelayThread) -> None:
    fabrikam = RAW.replace(b"Contoso <info@contoso.com>", b"news@fabrikam.com")
    with relay.smtp() as smtp:
        first = queue_id(send(smtp, "news@fabrikam.com", ["alice@example.com"], fabrikam))
        second = queue_id(send(smtp, "INFO@contoso.com", ["alice@example.com"], RAW))
    assert stored(relay, first)[0].connection == "fabrikam"
    assert stored(relay, second)[0].connection == "contoso"


def test_a_sender_no_connection_owns_is_refused_at_mail_from(relay: RelayThread) -> None:
    with relay.smtp() as smtp:
        smtp.ehlo()
        refused = replies.SENDER_NOT_OWNED.format(sender="ceo@evil.example")
        assert reply(smtp.mail("ceo@evil.example")) == refused
        assert reply(smtp.rcpt("alice@example.com")) == "503 Error: need MAIL command"
        # The session goes on: a sender the relay owns is accepted next.
        assert reply(smtp.mail("info@contoso.com")) == replies.SENDER_OK
    assert queued_count(relay) == 0


def test_a_header_from_of_another_connection_is_refused_at_data(relay: RelayThread) -> None:
    forged = RAW.replace(b"Contoso <info@contoso.com>", b"news@fabrikam.com")
    with relay.smtp() as smtp:
        answer = send(smtp, "info@contoso.com", ["alice@example.com"], forged)
    assert answer == replies.FROM_NOT_OWNED.format(address="news@fabrikam.com", connection="contoso")
    assert queued_count(relay) == 0


def test_force_from_connection_takes_senders_nobody_owns(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path)
    data = settings.model_dump(mode="json")
    data["connections"][1]["force_from"] = True
    data["connections"][1]["default_sender"] = "news@fabrikam.com"
    thread = RelayThread(settings_from_dict(data))
    try:
        other = RAW.replace(b"Contoso <info@contoso.com>", b"wordpress@localhost.localdomain")
        with thread.smtp() as smtp:
            qid = queue_id(send(smtp, "wordpress@localhost.localdomain", ["alice@example.com"], other))
        assert stored(thread, qid)[0].connection == "fabrikam"
    finally:
        thread.close()


def test_ehlo_advertises_the_extensions(relay: RelayThread) -> None:
    with relay.smtp() as smtp:
        code, _ = smtp.ehlo()
        assert code == 250
        assert smtp.esmtp_features["size"] == str(relay.settings.relay.max_message_size)
        for extension in ("8bitmime", "smtputf8", "pipelining"):
            assert extension in smtp.esmtp_features
        # No TLS on this listener: no STARTTLS, and no AUTH in the clear.
        assert "starttls" not in smtp.esmtp_features
        assert "auth" not in smtp.esmtp_features


def test_pipelined_commands_are_answered_in_order(relay: RelayThread) -> None:
    session = RawSession(relay.port)
    try:
        assert session.command(b"EHLO client.example").startswith("250-")
        session.send(b"MAIL FROM:<info@contoso.com>\r\nRCPT TO:<alice@example.com>\r\n"
                     b"RCPT TO:<bob@example.com>\r\nDATA\r\n")
        assert [session.read() for _ in range(4)] == [
            replies.SENDER_OK, replies.RECIPIENT_OK, replies.RECIPIENT_OK,
            "354 End data with <CR><LF>.<CR><LF>"]
        session.send(RAW.replace(b"\r\n.", b"\r\n..") + b".\r\n")  # dot-stuffed, as on the wire
        qid = queue_id(session.read())
    finally:
        session.close()
    assert stored(relay, qid)[1] == RAW


def test_smtputf8_addresses_are_accepted(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path)
    data = settings.model_dump(mode="json")
    data["connections"][0]["senders"].append("café@contoso.com")
    thread = RelayThread(settings_from_dict(data))
    try:
        raw = "From: café@contoso.com\r\nTo: zoë@example.com\r\nSubject: ü\r\n\r\nhi\r\n".encode()
        with thread.smtp() as smtp:
            smtp.ehlo()
            answer = reply(smtp.mail("café@contoso.com", ["SMTPUTF8", "BODY=8BITMIME"]))
            assert answer == replies.SENDER_OK
            assert reply(smtp.rcpt("zoë@example.com")) == replies.RECIPIENT_OK
            qid = queue_id(reply(smtp.data(raw)))
        message, body = stored(thread, qid)
        assert (message.sender, message.recipients, body) == ("café@contoso.com", ("zoë@example.com",), raw)
    finally:
        thread.close()


# -- who may send ---------------------------------------------------------------------------------


def test_a_client_outside_allowed_networks_must_authenticate(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path / "tls")
    settings = relay_settings(tmp_path, allowed_networks=["10.0.0.0/8"], smtp=[
        {"host": "127.0.0.1", "port": 0, "tls": "starttls", "certificate_file": str(cert),
         "private_key_file": str(key)}])
    thread = RelayThread(settings)
    try:
        with thread.smtp() as smtp:
            smtp.ehlo()
            refused = replies.CLIENT_NOT_ALLOWED.format(client="127.0.0.1")
            assert reply(smtp.mail("info@contoso.com")) == refused
            smtp.starttls(context=client_tls(cert))
            smtp.login("printer", PASSWORD)
            qid = queue_id(send(smtp, "info@contoso.com", ["alice@example.com"], RAW))
        assert stored(thread, qid)[0].client == "printer [127.0.0.1]"
    finally:
        thread.close()


def test_auth_is_offered_only_after_starttls_and_checks_the_password(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path / "tls")
    settings = relay_settings(tmp_path, smtp=[
        {"host": "127.0.0.1", "port": 0, "tls": "starttls", "certificate_file": str(cert),
         "private_key_file": str(key)}])
    thread = RelayThread(settings)
    try:
        with thread.smtp() as smtp:
            smtp.ehlo()
            assert "starttls" in smtp.esmtp_features
            assert "auth" not in smtp.esmtp_features
            blob = base64.b64encode(f"\0printer\0{PASSWORD}".encode()).decode()
            assert reply(smtp.docmd("AUTH", f"PLAIN {blob}")) == replies.ENCRYPTION_REQUIRED
            smtp.starttls(context=client_tls(cert))
            smtp.ehlo()
            assert smtp.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
            assert "starttls" not in smtp.esmtp_features
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                smtp.login("printer", "wrong password")
            assert f"{refused.value.smtp_code} {refused.value.smtp_error.decode()}" == replies.AUTH_FAILED
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("nobody", PASSWORD)
            code, _ = smtp.login("printer", PASSWORD)
            assert code == 235
    finally:
        thread.close()


def test_implicit_tls_listener_offers_auth(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path / "tls")
    settings = relay_settings(tmp_path, allowed_networks=["10.0.0.0/8"], smtp=[
        {"host": "127.0.0.1", "port": 0, "tls": "implicit", "certificate_file": str(cert),
         "private_key_file": str(key), "require_auth": True}])
    thread = RelayThread(settings)
    try:
        with smtplib.SMTP_SSL("127.0.0.1", thread.port, context=client_tls(cert), timeout=30) as smtp:
            smtp.ehlo()
            assert "starttls" not in smtp.esmtp_features
            assert "auth" in smtp.esmtp_features
            assert reply(smtp.mail("info@contoso.com")) == replies.AUTH_REQUIRED
            smtp.login("printer", PASSWORD)
            queue_id(send(smtp, "info@contoso.com", ["alice@example.com"], RAW))
    finally:
        thread.close()


def test_require_auth_refuses_even_allowed_networks(tmp_path: Path) -> None:
    listener = {"host": "127.0.0.1", "port": 0, "require_auth": True}
    thread = RelayThread(relay_settings(tmp_path, smtp=[listener]))
    try:
        with thread.smtp() as smtp:
            smtp.ehlo()
            assert reply(smtp.mail("info@contoso.com")) == replies.AUTH_REQUIRED
    finally:
        thread.close()


def test_auth_without_tls_only_on_loopback_when_allowed(tmp_path: Path) -> None:
    thread = RelayThread(relay_settings(tmp_path, auth_without_tls_on_loopback=True,
                                        allowed_networks=["10.0.0.0/8"]))
    try:
        with thread.smtp() as smtp:
            smtp.ehlo()
            assert "auth" in smtp.esmtp_features
            smtp.login("printer", PASSWORD)
            queue_id(send(smtp, "info@contoso.com", ["alice@example.com"], RAW))
    finally:
        thread.close()


def test_failed_logins_from_an_address_pause_its_auth(tmp_path: Path) -> None:
    thread = RelayThread(relay_settings(tmp_path, auth_without_tls_on_loopback=True, auth_failures=2))
    wrong = base64.b64encode(b"\0printer\0wrong password").decode()
    right = base64.b64encode(f"\0printer\0{PASSWORD}".encode()).decode()
    try:
        with thread.smtp() as smtp:
            smtp.ehlo()
            assert reply(smtp.docmd("AUTH", f"PLAIN {wrong}")) == replies.AUTH_FAILED
            assert reply(smtp.docmd("AUTH", f"PLAIN {wrong}")) == replies.AUTH_FAILED
            paused = reply(smtp.docmd("AUTH", f"PLAIN {right}"))  # even the right password, for now
            assert paused.startswith("454 4.7.0 Too many failed logins from your address")
        with thread.smtp() as smtp:  # a new connection from the same address is paused too
            smtp.ehlo()
            assert reply(smtp.docmd("AUTH", f"PLAIN {right}")).startswith("454 4.7.0")
    finally:
        thread.close()


def test_a_user_is_held_to_their_senders(tmp_path: Path) -> None:
    thread = RelayThread(relay_settings(tmp_path, auth_without_tls_on_loopback=True, users=[
        {"name": "printer", "password_hash": PASSWORD_HASH, "senders": ["Admin@contoso.com"]}]))
    try:
        with thread.smtp() as smtp:
            smtp.login("printer", PASSWORD)
            assert reply(smtp.mail("info@contoso.com")) == replies.SENDER_NOT_PERMITTED.format(
                sender="info@contoso.com", client="printer")
            raw = RAW.replace(b"Contoso <info@contoso.com>", b"admin@contoso.com")
            queue_id(send(smtp, "admin@contoso.com", ["alice@example.com"], raw))
    finally:
        thread.close()


def test_no_password_reaches_the_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cert, key = make_certificate(tmp_path / "tls")
    settings = relay_settings(tmp_path, smtp=[
        {"host": "127.0.0.1", "port": 0, "tls": "starttls", "certificate_file": str(cert),
         "private_key_file": str(key)}])
    thread = RelayThread(settings)
    wrong = "Tr0ub4dor&3-wrong"
    try:
        for mechanism, initial, password in itertools.product(("PLAIN", "LOGIN"), (True, False),
                                                              (wrong, PASSWORD)):
            with thread.smtp() as smtp:
                smtp.starttls(context=client_tls(cert))
                smtp.ehlo()
                smtp.user, smtp.password = "printer", password
                method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
                if password == PASSWORD:
                    assert smtp.auth(mechanism, method, initial_response_ok=initial)[0] == 235
                    queue_id(send(smtp, "info@contoso.com", ["alice@example.com"], RAW))
                else:
                    with pytest.raises(smtplib.SMTPAuthenticationError):
                        smtp.auth(mechanism, method, initial_response_ok=initial)
    finally:
        thread.close()
    assert "printer" in caplog.text  # the login name is logged, as Postfix logs sasl_username
    for password in (PASSWORD, wrong):
        for secret in (password, base64.b64encode(password.encode()).decode(),
                       base64.b64encode(f"\0printer\0{password}".encode()).decode()):
            assert secret not in caplog.text
    assert PASSWORD not in repr(Credentials(settings.relay))
    # aiosmtpd's warning about its own deprecated attribute is not the operator's business.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "mail.log"]


# -- what may be sent -------------------------------------------------------------------------------


SMUGGLED = (b"MAIL FROM:<admin@contoso.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
            b"From: admin@contoso.com\r\nSubject: forged\r\n\r\nsmuggled\r\n")


@pytest.mark.parametrize("end", [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r.\r\n"],
                         ids=["LF.LF", "LF.CRLF", "CR.CR", "CRLF.LF", "CR.CRLF"])
def test_smtp_smuggling_is_refused(relay: RelayThread, end: bytes) -> None:
    session = RawSession(relay.port)
    try:
        session.command(b"EHLO attacker.example")
        assert session.command(b"MAIL FROM:<info@contoso.com>") == replies.SENDER_OK
        assert session.command(b"RCPT TO:<alice@example.com>") == replies.RECIPIENT_OK
        assert session.command(b"DATA").startswith("354 ")
        session.send(RAW + b"innocent" + end + SMUGGLED + b".\r\n")
        assert session.read() == replies.BARE_NEWLINE
        # Exactly one answer: the smuggled commands were data, never commands.
        assert session.command(b"NOOP") == "250 OK"
    finally:
        session.close()
    assert queued_count(relay) == 0


@pytest.mark.parametrize("body", [b"line one\nline two\r\n", b"line one\rline two\r\n", b"ends in CR\r\r\n"])
def test_bare_lf_or_cr_in_data_is_refused(relay: RelayThread, body: bytes) -> None:
    with relay.smtp() as smtp:
        # smtplib would turn a bare LF of a str message into CRLF; bytes go as they are.
        assert send(smtp, "info@contoso.com", ["alice@example.com"], RAW + body) == replies.BARE_NEWLINE
    assert queued_count(relay) == 0


def test_more_recipients_than_the_limit_are_refused_at_rcpt(relay: RelayThread) -> None:
    limit = relay.settings.relay.max_recipients
    with relay.smtp() as smtp:
        smtp.ehlo()
        assert reply(smtp.mail("info@contoso.com")) == replies.SENDER_OK
        for n in range(limit):
            assert smtp.rcpt(f"user{n}@example.com")[0] == 250
        assert reply(smtp.rcpt("one.too.many@example.com")) == replies.TOO_MANY_RECIPIENTS
        qid = queue_id(reply(smtp.data(RAW)))
    assert len(stored(relay, qid)[0].recipients) == limit


def test_a_recipient_without_a_domain_is_refused_at_rcpt(relay: RelayThread) -> None:
    with relay.smtp() as smtp:
        smtp.ehlo()
        smtp.mail("info@contoso.com")
        assert reply(smtp.rcpt("root")) == replies.BAD_RECIPIENT.format(recipient="root")
        assert reply(smtp.rcpt("alice@example.com")) == replies.RECIPIENT_OK


def test_auth_is_not_enabled_without_users(tmp_path: Path) -> None:
    thread = RelayThread(relay_settings(tmp_path, users=[], auth_without_tls_on_loopback=True))
    try:
        with thread.smtp() as smtp:
            smtp.ehlo()
            assert "auth" not in smtp.esmtp_features
            assert reply(smtp.docmd("AUTH", "PLAIN AHByaW50ZXIAeA==")) == replies.AUTH_NOT_ENABLED
    finally:
        thread.close()


def test_an_oversize_message_is_refused_at_mail_from(tmp_path: Path) -> None:
    thread = RelayThread(relay_settings(tmp_path, max_message_size=2000))
    try:
        with thread.smtp() as smtp:
            smtp.ehlo()
            assert smtp.esmtp_features["size"] == "2000"
            assert reply(smtp.mail("info@contoso.com", ["SIZE=2001"])) == replies.MESSAGE_TOO_BIG
            # A client that does not declare SIZE is stopped at the end of DATA.
            answer = send(smtp, "info@contoso.com", ["alice@example.com"], RAW + b"x" * 2000 + b"\r\n")
            assert answer == replies.MESSAGE_TOO_BIG
            queue_id(send(smtp, "info@contoso.com", ["alice@example.com"], RAW))
        assert queued_count(thread) == 1
    finally:
        thread.close()


def test_long_lines_are_accepted(relay: RelayThread) -> None:
    raw = RAW + b"<p>" + b"x" * 20_000 + b"</p>\r\n"
    with relay.smtp() as smtp:
        qid = queue_id(send(smtp, "info@contoso.com", ["alice@example.com"], raw))
    assert stored(relay, qid)[1] == raw


def test_a_store_failure_answers_451_and_the_client_keeps_the_message(tmp_path: Path) -> None:
    store = FailingStore()
    thread = RelayThread(relay_settings(tmp_path), store=store)
    try:
        with thread.smtp() as smtp:
            assert send(smtp, "info@contoso.com", ["alice@example.com"], RAW) == replies.STORE_UNAVAILABLE
            # The session survives for the client's retry.
            assert smtp.noop()[0] == 250
        assert store.calls == 1
    finally:
        thread.close()


def test_one_log_line_per_accepted_message_starts_with_its_queue_id(
        relay: RelayThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay365")
    with relay.smtp() as smtp:
        qid = queue_id(send(smtp, "info@contoso.com", ["alice@example.com"], RAW))
    lines = [r.getMessage() for r in caplog.records
             if r.name.startswith("relay365.ingress") and qid in r.getMessage()]
    assert lines == [f"{qid}: client=[127.0.0.1], from=<info@contoso.com>, to=1, size={len(RAW)}, "
                     "connection=contoso, source=smtp"]


def test_a_listener_that_cannot_start_says_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(relay365.errors.ConfigError, match=f"cannot listen for SMTP on 127.0.0.1:{port}"):
            RelayThread(relay_settings(tmp_path, smtp=[{"host": "127.0.0.1", "port": port}]), FailingStore())


# -- reading DATA ---------------------------------------------------------------------------------


def data_session(port: int) -> RawSession:
    """A raw session up to the 354 of DATA."""
    session = RawSession(port)
    session.command(b"EHLO client.example")
    assert session.command(b"MAIL FROM:<info@contoso.com>") == replies.SENDER_OK
    assert session.command(b"RCPT TO:<alice@example.com>") == replies.RECIPIENT_OK
    assert session.command(b"DATA").startswith("354 ")
    return session


def dot_stuff(raw: bytes) -> bytes:
    """``raw`` as on the wire: a dot added to every line that starts with one, and the end."""
    stuffed = raw.replace(b"\r\n.", b"\r\n..")
    return (b"." + stuffed if stuffed.startswith(b".") else stuffed) + b".\r\n"


DOTTED = (b".From: Contoso <info@contoso.com>\r\n"  # not a header field, but a message must arrive as sent
          b"To: alice@example.com\r\n"
          b"\r\n"
          b".\r\n"
          b"..\r\n"
          b"...and three\r\n"
          b". \r\n"
          b"a.\r\n"
          b".\r\n")


@pytest.mark.parametrize("raw", [RAW + b".\r\n..\r\n...\r\n", DOTTED.replace(b".From", b"From", 1),
                                 RAW + b"\r\n.\r\n"], ids=["dots", "dot-lines", "ends-with-a-dot-line"])
def test_dot_stuffed_lines_arrive_byte_for_byte(relay: RelayThread, raw: bytes) -> None:
    with relay.smtp() as smtp:  # smtplib does the dot-stuffing
        qid = queue_id(send(smtp, "info@contoso.com", ["alice@example.com"], raw))
    assert stored(relay, qid)[1] == raw


def test_data_split_anywhere_across_packets(relay: RelayThread) -> None:
    raw = RAW + b".\r\n..\r\n"
    wire = dot_stuff(raw)
    for split in (1, 2, 3, len(wire) - 5, len(wire) - 4, len(wire) - 3, len(wire) - 2, len(wire) - 1):
        session = data_session(relay.port)
        try:
            session.send(wire[:split])
            time.sleep(0.02)
            session.send(wire[split:])
            qid = queue_id(session.read())
        finally:
            session.close()
        assert stored(relay, qid)[1] == raw


def test_pipelined_commands_right_after_the_end_of_data(relay: RelayThread) -> None:
    session = RawSession(relay.port)
    try:
        assert session.command(b"EHLO client.example").startswith("250-")
        transaction = b"MAIL FROM:<info@contoso.com>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n"
        # RFC 2920: the client may not send past DATA before the 354, but may right after the end.
        session.send(transaction)
        assert [session.read() for _ in range(3)][-1].startswith("354 ")
        session.send(dot_stuff(RAW) + transaction)
        first = queue_id(session.read())
        assert [session.read() for _ in range(3)] == [
            replies.SENDER_OK, replies.RECIPIENT_OK, "354 End data with <CR><LF>.<CR><LF>"]
        session.send(dot_stuff(DOTTED.replace(b".From", b"From", 1)) + b"NOOP\r\n")
        second = queue_id(session.read())
        assert session.read() == "250 OK"
    finally:
        session.close()
    assert stored(relay, first)[1] == RAW
    assert stored(relay, second)[1] == DOTTED.replace(b".From", b"From", 1)


def test_an_empty_message_ends_at_once_and_keeps_the_session_in_step(relay: RelayThread) -> None:
    session = data_session(relay.port)
    try:
        session.send(b".\r\nNOOP\r\n")
        qid = queue_id(session.read())
        assert session.read() == "250 OK"
    finally:
        session.close()
    assert stored(relay, qid)[1] == b""


def test_a_message_over_the_size_limit_is_refused_after_data_and_the_session_goes_on(tmp_path: Path) -> None:
    thread = RelayThread(relay_settings(tmp_path, max_message_size=3000))
    try:
        # The limit counts the data as sent, dot-stuffing included (RAW has two lines to stuff).
        for size in (3000 - len(RAW) - 2, 3001 - len(RAW) - 2, 3_000_000):
            body = RAW + b"x" * (size - 2) + b"\r\n"
            session = data_session(thread.port)
            try:
                session.send(dot_stuff(body) + b"NOOP\r\n")
                answer = session.read()
                assert session.read() == "250 OK"
                if len(dot_stuff(body)) - len(b".\r\n") <= 3000:
                    assert stored(thread, queue_id(answer))[1] == body
                else:
                    assert answer == replies.MESSAGE_TOO_BIG
                    assert session.command(b"MAIL FROM:<info@contoso.com>") == replies.SENDER_OK
            finally:
                session.close()
        assert queued_count(thread) == 1
    finally:
        thread.close()


def test_a_large_message_arrives_byte_for_byte(relay: RelayThread) -> None:
    line = b"." + b"x" * 70 + b"\r\n"
    raw = RAW + line * 60_000  # 4.3 MB, over the reader's 1 MiB limit: read in several chunks
    with relay.smtp() as smtp:
        qid = queue_id(send(smtp, "info@contoso.com", ["alice@example.com"], raw))
    assert stored(relay, qid)[1] == raw


@pytest.mark.parametrize("data", [b".\n.\n" + SMUGGLED + b".\r\n", b"\n.\n" + SMUGGLED + b".\r\n",
                                  b"x\r\n.\nrest\r\n.\r\n",
                                  RAW + b"x" * 2_000_000 + b"\n.\n" + SMUGGLED + b".\r\n"],
                         ids=["dot-LF-first", "LF.LF-first", "CRLF.LF", "LF.LF-after-2MB"])
def test_smuggling_anywhere_in_data_is_refused(relay: RelayThread, data: bytes) -> None:
    session = data_session(relay.port)
    try:
        session.send(data)
        assert session.read() == replies.BARE_NEWLINE
        assert session.command(b"NOOP") == "250 OK"
    finally:
        session.close()
    assert queued_count(relay) == 0


# -- the policy, without sockets ----------------------------------------------------------------


def test_policy_allowed_networks(tmp_path: Path) -> None:
    policy = Policy(relay_settings(tmp_path, allowed_networks=["127.0.0.0/8", "192.168.1.0/24", "::1/128"]))
    assert policy.client_allowed("127.0.0.1")
    assert policy.client_allowed("::ffff:192.168.1.20")  # an IPv4 client on a dual-stack socket
    assert policy.client_allowed("::1")
    assert not policy.client_allowed("192.168.2.1")
    assert not policy.client_allowed(None)
    assert not policy.client_allowed("not an address")
    assert policy.check_client("192.168.2.1", Client("user", "printer")) is None


def test_policy_routes_and_refuses(tmp_path: Path) -> None:
    policy = Policy(relay_settings(tmp_path))
    route = policy.route("News@Fabrikam.com")
    assert isinstance(route, Route) and route.connection.name == "fabrikam" and not route.forced
    refusal = policy.route("x@evil.example")
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.reason, refusal.reply) == (
        "sender", "sender_not_owned", replies.SENDER_NOT_OWNED.format(sender="x@evil.example"))
    assert refusal.message == "<x@evil.example>: sender not owned by any connection (not an open relay)"
    assert "x@evil.example" in refusal.fix
    key = Client("api-key", "wordpress", ("info@contoso.com",))
    assert isinstance(policy.route("admin@contoso.com", key), Refusal)
    assert isinstance(policy.route("INFO@contoso.com", key), Route)
    assert policy.default_sender(key) == "info@contoso.com"
    assert policy.default_sender() == "info@contoso.com"
    assert policy.check_recipients(0) is not None and policy.check_recipients(1) is None
    assert policy.check_recipients(501) == Refusal(
        "recipients", "too_many_recipients", replies.TOO_MANY_RECIPIENTS,
        replies.TOO_MANY_RECIPIENTS_FIX.format(limit=500))
    assert policy.check_size(35 * 1024 * 1024) is None
    assert policy.check_size(35 * 1024 * 1024 + 1) is not None


def test_policy_routes_to_a_named_connection_and_holds_it_to_its_recipient_limit(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path)
    fabrikam_settings = settings.connections[1].model_copy(update={"recipients_per_message": 3})
    policy = Policy(settings.model_copy(update={"connections": [settings.connections[0], fabrikam_settings]}))
    named = policy.route_to("contoso", "Admin@Contoso.com")
    assert isinstance(named, Route) and named.connection.name == "contoso"
    refused = policy.route_to("fabrikam", "info@contoso.com")
    assert isinstance(refused, Refusal) and refused.reason == "sender_not_owned"
    assert refused.message == "<info@contoso.com>: connection fabrikam does not send as this address"
    assert "news@fabrikam.com" in refused.fix
    fabrikam = policy.route("news@fabrikam.com")
    assert isinstance(fabrikam, Route)
    assert policy.check_recipients(3, fabrikam) is None
    assert policy.check_recipients(4, fabrikam) == Refusal(
        "recipients", "too_many_recipients", replies.TOO_MANY_RECIPIENTS,
        replies.TOO_MANY_RECIPIENTS_CONNECTION_FIX.format(limit=3, connection="fabrikam"))
    assert policy.check_recipients(4, named) is None  # contoso keeps Exchange's 500


# -- the header reader -------------------------------------------------------------------------


def test_header_reader_unfolds_and_finds_addresses() -> None:
    raw = (b"From: \"Doe, Jane\" <Jane@Contoso.com>\r\nTo: a@example.com,\r\n b@example.com\r\n"
           b"Subject: =?utf-8?b?w6ljaGVj?=\r\n\tand more\r\nBcc: hidden@example.com\r\n"
           b"\r\nTo: body@example.com\r\n")
    header = read_head(raw)
    assert header.addresses("From") == ["Jane@Contoso.com"]
    assert header.addresses("To", "Bcc") == ["a@example.com", "b@example.com", "hidden@example.com"]
    assert header.subject == "échec\tand more"  # unfolding removes the CRLF only (RFC 5322 2.2.3)
    assert raw[header.end:header.end + 2] == b"\r\n"
    without = without_fields(raw, header, "bcc")
    assert b"hidden@example.com" not in without and without.endswith(b"\r\n\r\nTo: body@example.com\r\n")
    added = with_fields(without, read_head(without), [("Date", "now")])
    assert added == without.replace(b"\r\n\r\n", b"\r\nDate: now\r\n\r\n", 1)
    # No header at all, and a header without a body.
    assert with_fields(b"just text\r\n", read_head(b"just text\r\n"), [("From", "a@b.c")]) == (
        b"From: a@b.c\r\n\r\njust text\r\n")
    assert with_fields(b"Subject: x", read_head(b"Subject: x"), [("From", "a@b.c")]) == (
        b"Subject: x\r\nFrom: a@b.c\r\n\r\n")


def test_bare_newline_detection_and_normalising() -> None:
    assert not has_bare_newline(b"a\r\nb\r\n")
    assert has_bare_newline(b"a\nb\r\n") and has_bare_newline(b"a\rb\r\n") and has_bare_newline(b"a\r\r\n")
    assert normalise_newlines(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd"


def test_public_names() -> None:
    assert sorted(relay365.ingress.__all__) == relay365.ingress.__all__
    for name in relay365.ingress.__all__:
        assert hasattr(relay365.ingress, name), name
