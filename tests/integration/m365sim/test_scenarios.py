"""Each shipped scenario gives Microsoft's exact answer, through real clients."""

from __future__ import annotations

import base64
import smtplib
import ssl
from email.message import EmailMessage

import httpx
import pytest

from m365sim import Simulator

from .conftest import (
    GRAPH,
    SEED_APP_ONLY,
    SEED_APP_ONLY_SECRET,
    SEED_DELEGATED_APP,
    app_only_token,
    confidential,
    delegated_token,
    freeze_clock,
    https,
)

SEND_SCOPES = [f"{GRAPH}/Mail.Send", f"{GRAPH}/Mail.Send.Shared"]


def mime(sender: str, to: str = "customer@example.org") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "scenario"
    msg.set_content("hello")
    return base64.b64encode(msg.as_bytes())


def send_me(sim: Simulator, token: str, sender: str) -> tuple[int, dict[str, object]]:
    with https(sim) as client:
        r = client.post(f"{sim.graph_url}/me/sendMail", content=mime(sender),
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"})
    return r.status_code, (r.json()["error"] if r.content else {})


def test_seed_sends_from_the_shared_mailbox(m365sim: Simulator) -> None:
    status, _ = send_me(m365sim, delegated_token(m365sim, SEND_SCOPES), "info@contoso.com")
    delivered = m365sim.mailbox("customer@example.org").messages
    assert status == 202
    assert delivered[0].identity == "admin@contoso.com"
    assert delivered[0].parsed()["From"] == "info@contoso.com"


@pytest.mark.m365sim("no-mailbox")
def test_no_mailbox_is_404_on_me_sendmail(m365sim: Simulator) -> None:
    status, error = send_me(m365sim, delegated_token(m365sim, SEND_SCOPES), "admin@contoso.com")
    assert status == 404
    assert error["code"] == "MailboxNotEnabledForRESTAPI"
    assert error["message"] == "The mailbox is either inactive, soft-deleted, or is hosted on-premise."


@pytest.mark.m365sim("no-mail-send-permission")
def test_no_mail_send_is_403_access_denied(m365sim: Simulator) -> None:
    status, error = send_me(m365sim, delegated_token(m365sim, [f"{GRAPH}/User.Read"]), "admin@contoso.com")
    assert (status, error["code"], error["message"]) == (
        403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    with https(m365sim) as client:
        app_only = client.post(f"{m365sim.graph_url}/users/admin@contoso.com/sendMail",
                               content=mime("admin@contoso.com"),
                               headers={"Authorization": f"Bearer {app_only_token(m365sim)}",
                                        "Content-Type": "text/plain"})
    assert (app_only.status_code, app_only.json()["error"]["code"]) == (403, "ErrorAccessDenied")


@pytest.mark.m365sim("no-send-as")
def test_no_send_as_is_403_send_as_denied_and_550_over_smtp(m365sim: Simulator) -> None:
    status, error = send_me(m365sim, delegated_token(m365sim, SEND_SCOPES), "info@contoso.com")
    assert (status, error["code"]) == (403, "ErrorSendAsDenied")
    assert error["message"] == ("The user account which was used to submit this request does not have "
                                "the right to send mail on behalf of the specified sending account., "
                                "Cannot submit message.")
    smtp_token = delegated_token(m365sim, ["https://outlook.office.com/SMTP.Send"])
    with smtplib.SMTP(m365sim.host, m365sim.smtp_port, timeout=30) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=str(m365sim.ca_file)))
        smtp.ehlo()
        code, _ = smtp.docmd("AUTH", "XOAUTH2 " + base64.b64encode(
            f"user=admin@contoso.com\x01auth=Bearer {smtp_token}\x01\x01".encode()).decode())
        assert code == 235
        code, reply = smtp.docmd("MAIL", "FROM:<info@contoso.com>")
    assert (code, reply.decode()) == (
        550, "5.7.60 SMTP; Client does not have permissions to send as this sender")


@pytest.mark.m365sim("security-defaults")
def test_security_defaults_refuse_basic_smtp_auth(m365sim: Simulator) -> None:
    with smtplib.SMTP(m365sim.host, m365sim.smtp_port, timeout=30) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=str(m365sim.ca_file)))
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            smtp.login("admin@contoso.com", "Adele-Pa55word")
    assert info.value.smtp_code == 535
    assert info.value.smtp_error.decode().startswith(
        "5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults "
        "policy. Contact your administrator.")


@pytest.mark.m365sim("secret-expired")
def test_secret_expired_for_both_apps(m365sim: Simulator) -> None:
    for client_id, secret in ((SEED_APP_ONLY, SEED_APP_ONLY_SECRET),
                              (SEED_DELEGATED_APP, "seed~Delegated.Secret-0123456789abcdefghij")):
        result = confidential(m365sim, client_id, secret).acquire_token_for_client([f"{GRAPH}/.default"])
        assert result["error_codes"] == [7000222], client_id


@pytest.mark.m365sim("throttled")
def test_throttled_answers_429_past_thirty_messages_a_compressed_minute(m365sim: Simulator) -> None:
    token = app_only_token(m365sim)
    freeze_clock(m365sim)  # the 31 requests fall in one window however long they take
    statuses = []
    retry_after = None
    error: dict[str, str] = {}
    with https(m365sim) as client:

        def send() -> httpx.Response:
            return client.post(f"{m365sim.graph_url}/users/info@contoso.com/sendMail",
                               content=mime("info@contoso.com"),
                               headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"})

        for _ in range(31):
            r = send()
            statuses.append(r.status_code)
            if r.status_code == 429:
                retry_after = r.headers["retry-after"]
                error = r.json()["error"]
        m365sim.advance(60)  # a minute of the scenario's compressed time (one real second)
        after_a_minute = send().status_code
    assert statuses == [202] * 30 + [429]
    assert error["code"] == "ApplicationThrottled"
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1
    assert after_a_minute == 202
