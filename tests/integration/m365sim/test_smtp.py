"""Exchange Online SMTP submission, spoken to over a real socket with smtplib.

Tokens come from the emulator's token endpoint through MSAL (see conftest), except
where a test needs a token Entra would not issue (wrong permission), which is minted
in-process.  Every reply is compared with its text in data/smtp_replies.toml.
"""

from __future__ import annotations

import base64
import email.utils
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from m365sim import Scenario, Simulator
from m365sim._grants import issue_access_token
from m365sim._knowledge import resources_by_name, smtp_replies
from m365sim._smtp import HOST, without_bcc
from m365sim._state import SimState

from .conftest import (
    GRAPH,
    MEGAN,
    SEED_APP_ONLY,
    SEED_DELEGATED_APP,
    app_only_token,
    delegated_token,
    freeze_clock,
    ropc_token,
)

SMTP_SEND = "https://outlook.office.com/SMTP.Send"
EXCHANGE_DEFAULT = "https://outlook.office365.com"
CLIENT_HELLO = "client.example"


# ---- helpers -----------------------------------------------------------------------------
def expected(key: str, **fmt: str) -> str:
    return smtp_replies()[key].format(host=HOST, **fmt)


def said(reply: tuple[int, bytes | str]) -> str:
    """A one-line reply as the server wrote it: "535 5.7.3 ..."."""
    text = reply[1]
    return f"{reply[0]} {text.decode() if isinstance(text, bytes) else text}"


def refused(e: pytest.ExceptionInfo[smtplib.SMTPResponseException]) -> str:
    return said((e.value.smtp_code, e.value.smtp_error))


def sasl(user: str, token: str) -> str:
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


@contextmanager
def session(sim: Simulator, *, tls: bool = True) -> Iterator[smtplib.SMTP]:
    smtp = smtplib.SMTP(sim.host, sim.smtp_port, local_hostname=CLIENT_HELLO, timeout=10)
    try:
        smtp.ehlo()
        if tls:
            smtp.starttls(context=ssl.create_default_context(cafile=str(sim.ca_file)))
            smtp.ehlo()
        yield smtp
    finally:
        smtp.close()


def xoauth2(smtp: smtplib.SMTP, user: str, token: str) -> tuple[int, bytes | str]:
    """AUTH XOAUTH2 with the initial response on the AUTH line, as smtplib sends it."""
    try:
        return smtp.auth("XOAUTH2", lambda challenge=None: sasl(user, token),
                         initial_response_ok=True)
    except smtplib.SMTPAuthenticationError as e:
        return e.smtp_code, e.smtp_error


def megan_token(sim: Simulator) -> str:
    return ropc_token(sim, [SMTP_SEND])


def minted(sim: Simulator, upn: str, permissions: list[str], resource: str = "exchange") -> str:
    """A token Entra would not issue (say, an Exchange token without SMTP.Send)."""
    def mint(s: SimState) -> str:
        app, user = s.app(SEED_DELEGATED_APP), s.user(upn)
        assert app is not None
        assert user is not None
        return issue_access_token(s, app=app, user=user, permissions=permissions,
                                  resource=resources_by_name()[resource], appidacr=0)[0]
    return sim._call(mint)


def edit_tenant(sim: Simulator, **changes: Any) -> None:
    sim.edit_scenario(lambda s: replace(s, tenant=replace(s.tenant, **changes)))


def edit_limits(sim: Simulator, **changes: Any) -> None:
    sim.edit_scenario(lambda s: replace(s, limits=replace(s.limits, **changes)))


def edit_user(sim: Simulator, upn: str, **changes: Any) -> None:
    def change(s: Scenario) -> Scenario:
        users = tuple(replace(u, **changes) if u.upn == upn else u for u in s.users)
        return replace(s, users=users)
    sim.edit_scenario(change)


def message(sender: str, to: str, *, subject: str = "Hello", extra: str = "",
            body: str = "Hi there.\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\n{extra}Subject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@relay.example>\r\n\r\n{body}").encode()


def send(smtp: smtplib.SMTP, sender: str, recipients: list[str],
         raw: bytes | None = None) -> tuple[int, bytes]:
    """MAIL, RCPT..., DATA; the reply to the first command that failed, or to DATA."""
    code, text = smtp.mail(sender)
    if code != 250:
        return code, text
    for r in recipients:
        code, text = smtp.rcpt(r)
        if code != 250:
            return code, text
    return smtp.data(raw if raw is not None else message(sender, ", ".join(recipients)))


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# ---- connection, EHLO, STARTTLS ----------------------------------------------------------------
def test_banner_names_host_and_emulator_clock(m365sim: Simulator) -> None:
    smtp = smtplib.SMTP(local_hostname=CLIENT_HELLO, timeout=10)
    try:
        code, banner = smtp.connect(m365sim.host, m365sim.smtp_port)
    finally:
        smtp.close()
    text = f"{code} {banner.decode()}"
    prefix = expected("banner", date="").removesuffix(" at ")
    assert text.startswith(prefix)
    match = re.fullmatch(re.escape(prefix) + r" at (.+)", text)
    assert match is not None
    stamp = email.utils.parsedate_to_datetime(match.group(1))
    assert abs((stamp - datetime.now(UTC)).total_seconds()) < 10


def test_ehlo_offers_auth_only_after_starttls(m365sim: Simulator) -> None:
    smtp = smtplib.SMTP(m365sim.host, m365sim.smtp_port, local_hostname=CLIENT_HELLO, timeout=10)
    try:
        code, before = smtp.ehlo()
        assert code == 250
        assert before.decode().splitlines() == [
            f"{HOST} Hello [127.0.0.1]", "SIZE 157286400", "PIPELINING", "DSN",
            "ENHANCEDSTATUSCODES", "STARTTLS", "8BITMIME", "SMTPUTF8"]
        assert said(smtp.docmd("STARTTLS")) == expected("starttls_ready")
        assert smtp.sock is not None
        smtp.sock = ssl.create_default_context(cafile=str(m365sim.ca_file)).wrap_socket(
            smtp.sock, server_hostname=m365sim.host)
        smtp.file = None
        code, after = smtp.ehlo()
        assert code == 250
        assert after.decode().splitlines() == [
            f"{HOST} Hello [127.0.0.1]", "SIZE 157286400", "PIPELINING", "DSN",
            "ENHANCEDSTATUSCODES", "AUTH LOGIN XOAUTH2", "8BITMIME", "SMTPUTF8"]
        assert smtp.esmtp_features["auth"].split() == ["LOGIN", "XOAUTH2"]
    finally:
        smtp.close()


def test_auth_before_starttls_is_refused(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    with session(m365sim, tls=False) as smtp:
        assert "auth" not in smtp.esmtp_features
        reply = smtp.docmd("AUTH", "XOAUTH2 " + b64(sasl(MEGAN[0], token)))
        assert said(reply) == expected("auth_needs_tls")
        assert said(smtp.docmd("AUTH", "LOGIN")) == expected("auth_needs_tls")


def test_mail_without_auth_is_refused(m365sim: Simulator) -> None:
    with session(m365sim) as smtp:
        assert said(smtp.mail(MEGAN[0])) == expected("not_authenticated")
    with session(m365sim, tls=False) as smtp:
        assert said(smtp.mail(MEGAN[0])) == expected("not_authenticated")
    record = [r for r in m365sim.requests() if r.protocol == "smtp"][-1]
    assert (record.method, record.status) == ("MAIL", 530)


def test_sequence_errors_use_exchange_wording(m365sim: Simulator) -> None:
    with session(m365sim) as smtp:
        assert said(smtp.docmd("RCPT", "TO:<x@example.org>")) == expected("need_mail")
        assert said(smtp.docmd("DATA")) == expected("need_rcpt")
        assert said(smtp.noop()) == expected("noop_ok")
        assert said(smtp.rset()) == expected("reset_ok")
        assert said(smtp.docmd("AUTH", "CRAM-MD5")) == expected("auth_unrecognized")
        assert said(smtp.quit()) == expected("closing")


# ---- XOAUTH2 -------------------------------------------------------------------------------
def test_xoauth2_initial_response_delivers_message(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    raw = message(MEGAN[0], "Rcpt <rcpt@example.org>", subject="Quarterly report",
                  extra="Cc: cc@contoso.com\r\nBcc: hidden@example.net,\r\n other@example.net\r\n",
                  body="Line one\r\n.Line starting with a dot\r\n\r\nCaf\u00e9 au lait\r\n")
    with session(m365sim) as smtp:
        assert said(xoauth2(smtp, MEGAN[0], token)) == expected("auth_ok")
        recipients = ["rcpt@example.org", "cc@contoso.com", "hidden@example.net",
                      "other@example.net"]
        code, text = send(smtp, MEGAN[0], recipients, raw)
        assert f"{code} {text.decode()}" == expected(
            "accepted", message_id="Quarterly.report@relay.example")
    seen = without_bcc(raw)
    assert b"Bcc" not in seen
    assert b"other@example.net" not in seen
    for address in recipients:
        [got] = m365sim.mailbox(address).messages
        assert got.raw == seen
        assert got.path == "smtp"
        assert got.identity == MEGAN[0]
        assert got.sender == MEGAN[0]
        assert set(got.recipients) == set(recipients)
    assert got.parsed()["Subject"] == "Quarterly report"
    assert "Caf\u00e9 au lait\r\n".encode() in got.raw  # 8-bit body as sent


def test_xoauth2_two_step_exchange(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    with session(m365sim) as smtp:
        assert smtp.docmd("AUTH", "XOAUTH2") == (334, b"")
        assert said(smtp.docmd(b64(sasl(MEGAN[0], token)))) == expected("auth_ok")
        code, _ = send(smtp, MEGAN[0], ["someone@example.org"])
        assert code == 250
    assert len(m365sim.mailbox("someone@example.org").messages) == 1


def test_message_without_message_id_gets_one(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], token)
        raw = f"From: {MEGAN[0]}\r\nTo: a@example.org\r\nSubject: s\r\n\r\nbody\r\n".encode()
        code, text = send(smtp, MEGAN[0], ["a@example.org"], raw)
    assert code == 250
    [got] = m365sim.mailbox("a@example.org").messages
    message_id = got.parsed()["Message-ID"].strip("<>")
    assert text.decode() == expected("accepted", message_id=message_id)[4:]
    assert got.raw.endswith(raw)


def test_pipelined_commands(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], token)
        smtp.send(f"MAIL FROM:<{MEGAN[0]}>\r\nRCPT TO:<p@example.org>\r\nDATA\r\n")
        assert said(smtp.getreply()) == expected("sender_ok")
        assert said(smtp.getreply()) == expected("recipient_ok")
        assert said(smtp.getreply()) == expected("data_go")
        smtp.send(message(MEGAN[0], "p@example.org") + b".\r\n")
        assert smtp.getreply()[0] == 250


def test_dsn_parameters_are_accepted(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], token)
        assert said(smtp.mail(MEGAN[0], ["RET=HDRS", "ENVID=abc123", "BODY=8BITMIME"])) == \
            expected("sender_ok")
        assert said(smtp.rcpt("d@example.org", ["NOTIFY=SUCCESS,FAILURE",
                                                "ORCPT=rfc822;d@example.org"])) == \
            expected("recipient_ok")


def test_app_only_token_sends_as_the_user_mailbox(m365sim: Simulator) -> None:
    token = app_only_token(m365sim, EXCHANGE_DEFAULT)
    with session(m365sim) as smtp:
        assert said(xoauth2(smtp, MEGAN[0], token)) == expected("auth_ok")
        assert said(smtp.mail("admin@contoso.com")) == expected("send_as_denied_mail")
        smtp.rset()
        code, _ = send(smtp, MEGAN[0], ["app@example.org"])
        assert code == 250
    [got] = m365sim.mailbox("app@example.org").messages
    assert got.identity == f"app:{SEED_APP_ONLY}"
    assert got.sender == MEGAN[0]


def test_app_only_token_outside_mailbox_scope_is_refused(m365sim: Simulator) -> None:
    token = app_only_token(m365sim, EXCHANGE_DEFAULT)
    def scope_to_admin(s: Scenario) -> Scenario:
        app = s.app(SEED_APP_ONLY)
        assert app is not None
        return s.replace_app(replace(app, mailbox_scope=("admin@contoso.com",)))

    m365sim.edit_scenario(scope_to_admin)
    with session(m365sim) as smtp:
        assert said(xoauth2(smtp, MEGAN[0], token)) == expected("auth_failed")
    with session(m365sim) as smtp:
        assert said(xoauth2(smtp, "admin@contoso.com", token)) == expected("auth_ok")


def test_graph_token_is_refused(m365sim: Simulator) -> None:
    token = ropc_token(m365sim, [f"{GRAPH}/Mail.Send"])
    with session(m365sim) as smtp:
        assert said(xoauth2(smtp, MEGAN[0], token)) == expected("auth_failed")
    record = [r for r in m365sim.requests() if r.protocol == "smtp"][-1]
    assert (record.method, record.status) == ("AUTH", 535)


@pytest.mark.parametrize("case", ["no SMTP.Send", "other user", "expired", "garbage", "no user"])
def test_xoauth2_refusals(m365sim: Simulator, case: str) -> None:
    user, token = MEGAN[0], megan_token(m365sim)
    if case == "no SMTP.Send":
        token = minted(m365sim, MEGAN[0], ["EWS.AccessAsUser.All"])
    elif case == "other user":
        user = "admin@contoso.com"
    elif case == "expired":
        m365sim.advance(6 * 3600)
    elif case == "garbage":
        token = token[:-8] + "AAAAAAAA"
    with session(m365sim) as smtp:
        if case == "no user":
            reply = said(smtp.docmd("AUTH", "XOAUTH2 " + b64(f"auth=Bearer {token}\x01\x01")))
        else:
            reply = said(xoauth2(smtp, user, token))
        assert reply == expected("auth_failed")


def test_shared_mailbox_login_needs_full_access(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    with session(m365sim) as smtp:
        assert said(xoauth2(smtp, "info@contoso.com", token)) == expected("auth_failed")
    m365sim.edit_scenario(lambda s: replace(s, shared_mailboxes=tuple(
        replace(m, full_access=(MEGAN[0],)) for m in s.shared_mailboxes)))
    with session(m365sim) as smtp:
        assert said(xoauth2(smtp, "info@contoso.com", token)) == expected("auth_ok")
        code, _ = send(smtp, "info@contoso.com", ["shared@example.org"])
        assert code == 250
    [got] = m365sim.mailbox("shared@example.org").messages
    assert (got.identity, got.sender) == (MEGAN[0], "info@contoso.com")


# ---- SMTP AUTH switched off, basic auth ------------------------------------------------------
def test_smtp_auth_disabled_for_tenant_and_mailbox(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    edit_tenant(m365sim, smtp_client_authentication=False)
    with session(m365sim) as smtp:
        assert said(xoauth2(smtp, MEGAN[0], token)) == expected("auth_tenant_disabled")
    edit_user(m365sim, MEGAN[0], smtp_client_authentication=True)  # the mailbox overrides
    with session(m365sim) as smtp:
        assert said(xoauth2(smtp, MEGAN[0], token)) == expected("auth_ok")
    edit_tenant(m365sim, smtp_client_authentication=True)
    edit_user(m365sim, MEGAN[0], smtp_client_authentication=False)
    with session(m365sim) as smtp:
        assert said(xoauth2(smtp, MEGAN[0], token)) == expected("auth_mailbox_disabled")


def test_auth_login_refused_by_security_defaults(m365sim: Simulator) -> None:
    assert m365sim.scenario.tenant.security_defaults
    with session(m365sim) as smtp, pytest.raises(smtplib.SMTPAuthenticationError) as e:
        smtp.login(*MEGAN)
    assert refused(e) == expected("auth_security_defaults")
    with session(m365sim) as smtp:
        # The two-step form: Exchange asks for both before it judges.
        assert smtp.docmd("AUTH", "LOGIN") == (334, b64("Username:").encode())
        assert smtp.docmd(b64(MEGAN[0])) == (334, b64("Password:").encode())
        assert said(smtp.docmd(b64(MEGAN[1]))) == expected("auth_security_defaults")
        plain = b64(f"\0{MEGAN[0]}\0{MEGAN[1]}")
        assert said(smtp.docmd("AUTH", "PLAIN " + plain)) == expected("auth_security_defaults")


@pytest.mark.parametrize(("rejection", "key"), [
    ("security-defaults", "auth_security_defaults"),
    ("tenant-disabled", "auth_tenant_disabled"),
    ("mailbox-disabled", "auth_mailbox_disabled"),
    ("basic-disabled", "auth_basic_disabled"),
    ("retired", "auth_retired"),
    ("conditional-access", "auth_conditional_access"),
])
def test_basic_auth_rejection_follows_scenario(m365sim: Simulator, rejection: str,
                                               key: str) -> None:
    edit_tenant(m365sim, security_defaults=False, basic_auth_rejection=rejection)
    with session(m365sim) as smtp:
        assert smtp.docmd("AUTH", "PLAIN") == (334, b"")
        assert said(smtp.docmd(b64(f"\0{MEGAN[0]}\0{MEGAN[1]}"))) == expected(key)


def test_basic_auth_with_smtp_auth_disabled(m365sim: Simulator) -> None:
    edit_tenant(m365sim, security_defaults=False, smtp_client_authentication=False)
    with session(m365sim) as smtp, pytest.raises(smtplib.SMTPAuthenticationError) as e:
        smtp.login(*MEGAN)
    assert refused(e) == expected("auth_tenant_disabled")


def test_request_log_keeps_no_credentials(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], token)
        send(smtp, MEGAN[0], ["log@example.org"])
    with session(m365sim) as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.login(*MEGAN)
    records = [r for r in m365sim.requests() if r.protocol == "smtp"]
    assert [(r.method, r.status) for r in records] == [("AUTH", 235), ("DATA", 250),
                                                        ("AUTH", 535)]
    assert records[0].client_id == SEED_DELEGATED_APP
    for r in records:
        dumped = repr(r.to_json())
        assert token not in dumped
        assert token[-20:] not in dumped
        assert MEGAN[1] not in dumped


# ---- who may send as whom --------------------------------------------------------------------
def test_mail_from_someone_else_is_refused(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], token)
        assert said(smtp.mail("admin@contoso.com")) == expected("send_as_denied_mail")
        assert said(smtp.mail("info@contoso.com")) == expected("send_as_denied_mail")


def test_admin_sends_as_shared_mailbox(m365sim: Simulator) -> None:
    # Seed: admin@ has Send As on info@; the admin is the browser's signed-in user.
    token = delegated_token(m365sim, [SMTP_SEND])
    with session(m365sim) as smtp:
        assert said(xoauth2(smtp, "admin@contoso.com", token)) == expected("auth_ok")
        code, _ = send(smtp, "info@contoso.com", ["customer@example.org"])
        assert code == 250
    [got] = m365sim.mailbox("customer@example.org").messages
    assert (got.identity, got.sender) == ("admin@contoso.com", "info@contoso.com")


def test_send_as_granted_at_run_time(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    m365sim.grant_send_as("info@contoso.com", MEGAN[0])
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], token)
        code, _ = send(smtp, "info@contoso.com", ["c2@example.org"])
        assert code == 250


def test_from_header_not_permitted(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], token)
        raw = message("Contoso Info <info@contoso.com>", "f@example.org")
        reply = send(smtp, MEGAN[0], ["f@example.org"], raw)
        assert said(reply) == expected("send_as_denied_data", user=MEGAN[0],
                                       sender="info@contoso.com")
        # 5xx at end of DATA leaves the session usable.
        assert send(smtp, MEGAN[0], ["f@example.org"])[0] == 250
    assert len(m365sim.mailbox("f@example.org").messages) == 1


# ---- limits ----------------------------------------------------------------------------------
def test_too_many_recipients(m365sim: Simulator) -> None:
    edit_limits(m365sim, recipients_per_message=2)
    token = megan_token(m365sim)
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], token)
        smtp.mail(MEGAN[0])
        assert smtp.rcpt("r1@example.org")[0] == 250
        assert smtp.rcpt("r2@example.org")[0] == 250
        assert said(smtp.rcpt("r3@example.org")) == expected("too_many_recipients")
        assert smtp.data(message(MEGAN[0], "r1@example.org"))[0] == 250
    assert m365sim.mailbox("r2@example.org").messages[0].recipients == (
        "r1@example.org", "r2@example.org")


def test_message_over_max_send_size(m365sim: Simulator) -> None:
    edit_limits(m365sim, max_send_size=4000)
    token = megan_token(m365sim)
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], token)
        big = message(MEGAN[0], "big@example.org", body=("y" * 76 + "\r\n") * 60)
        assert said(send(smtp, MEGAN[0], ["big@example.org"], big)) == expected("size_exceeded")
        assert said(smtp.mail(MEGAN[0], ["SIZE=200000000"])) == expected("size_exceeded")
    assert m365sim.mailbox("big@example.org").messages == []


def test_daily_recipient_quota(m365sim: Simulator) -> None:
    edit_limits(m365sim, recipients_per_day=3)
    token = megan_token(m365sim)
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], token)
        assert send(smtp, MEGAN[0], ["q1@example.org", "q2@example.org"])[0] == 250
        reply = send(smtp, MEGAN[0], ["q3@example.org", "q4@example.org"])
        assert said(reply) == expected("quota_exceeded")
    m365sim.advance(86400)  # the rolling day slides on (and the token expires)
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], megan_token(m365sim))
        assert send(smtp, MEGAN[0], ["q3@example.org", "q4@example.org"])[0] == 250


def test_message_rate_limit_defers_and_recovers(m365sim: Simulator) -> None:
    # time_scale 60: the 30-a-minute window lasts one real second.
    edit_limits(m365sim, time_scale=60.0, messages_per_minute=2)
    freeze_clock(m365sim)  # the three sends fall in one window however long they take
    token = megan_token(m365sim)
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], token)
        assert send(smtp, MEGAN[0], ["t@example.org"])[0] == 250
        assert send(smtp, MEGAN[0], ["t@example.org"])[0] == 250
        assert said(send(smtp, MEGAN[0], ["t@example.org"])) == expected("rate_exceeded")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.noop()  # a 421 ends the session
    m365sim.advance(60)  # a minute of limit time later
    with session(m365sim) as smtp:
        xoauth2(smtp, MEGAN[0], token)
        assert send(smtp, MEGAN[0], ["t@example.org"])[0] == 250
    assert len(m365sim.mailbox("t@example.org").messages) == 3


def test_fourth_concurrent_connection_is_refused(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    with session(m365sim) as a, session(m365sim) as b, session(m365sim) as c:
        for smtp in (a, b, c):
            assert xoauth2(smtp, MEGAN[0], token)[0] == 235
        with session(m365sim) as d:
            assert said(xoauth2(d, MEGAN[0], token)) == expected("concurrent_connections")
            with pytest.raises(smtplib.SMTPServerDisconnected):
                d.noop()  # Exchange hangs up
        with session(m365sim) as other:  # the limit is per mailbox
            assert xoauth2(other, "admin@contoso.com",
                           delegated_token(m365sim, [SMTP_SEND]))[0] == 235
        a.quit()

        def fourth_gets_in() -> bool:
            with session(m365sim) as e:
                return xoauth2(e, MEGAN[0], token)[0] == 235
        eventually(fourth_gets_in)  # the server counts the QUIT once it has hung up


def test_stop_hangs_up_open_sessions(m365sim: Simulator) -> None:
    token = megan_token(m365sim)
    smtp = smtplib.SMTP(m365sim.host, m365sim.smtp_port, timeout=10)
    smtp.starttls(context=ssl.create_default_context(cafile=str(m365sim.ca_file)))
    smtp.ehlo()
    xoauth2(smtp, MEGAN[0], token)
    m365sim.stop()
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError, socket.timeout)):
        smtp.noop()
    smtp.close()


# ---- pure helpers ------------------------------------------------------------------------------
def test_without_bcc_removes_folded_field_only() -> None:
    raw = (b"From: a@x\r\nBcc: b@y,\r\n\tc@z\r\nTo: d@w,\r\n e@v\r\nbcc:f@u\r\n\r\n"
           b"Bcc: in the body stays\r\n")
    assert without_bcc(raw) == b"From: a@x\r\nTo: d@w,\r\n e@v\r\n\r\nBcc: in the body stays\r\n"
