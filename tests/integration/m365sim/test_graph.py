"""Graph sendMail, users and applications, over HTTPS with tokens MSAL got from m365sim.

Errors are compared with data/graph_errors.toml: status, code and message text.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from m365sim import Certificate, Scenario, SharedMailbox, Simulator, User
from m365sim._knowledge import graph_error

from .conftest import (
    GRAPH,
    SEED_APP_ONLY,
    SEED_DELEGATED_APP,
    app_only_token,
    delegated_token,
    freeze_clock,
    https,
    ropc_token,
)

ADMIN, MEGAN, SHARED = "admin@contoso.com", "megan@contoso.com", "info@contoso.com"
ALL_DELEGATED = ("Mail.Send", "Mail.Send.Shared", "Mail.ReadWrite", "User.Read")


# ---- helpers ------------------------------------------------------------------------------
def edit_app(sim: Simulator, client_id: str, **changes: Any) -> None:
    def change(s: Scenario) -> Scenario:
        app = s.app(client_id)
        assert app is not None
        return s.replace_app(replace(app, **changes))

    sim.edit_scenario(change)


def parts(msg: EmailMessage) -> list[EmailMessage]:
    return [p for p in msg.iter_parts() if isinstance(p, EmailMessage)]


def user_token(sim: Simulator, upn: str, permissions: tuple[str, ...] = ALL_DELEGATED) -> str:
    """A delegated Graph token for ``upn``, through MSAL's authorization-code flow.

    Entra puts every consented permission in ``scp``, so the app's consented
    permissions are set to ``permissions`` first; ``upn`` is the signed-in browser user.
    """
    sim.edit_scenario(lambda s: replace(s, browser_user=upn))
    edit_app(sim, SEED_DELEGATED_APP, delegated_permissions=(*permissions, "offline_access"))
    return delegated_token(sim, [f"{GRAPH}/{p}" for p in permissions])


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def mime(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def text_message(to: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "message": {
            "subject": "Meet for lunch?",
            "body": {"contentType": "Text", "content": "The new cafeteria is open."},
            "toRecipients": [{"emailAddress": {"address": a}} for a in to],
            **extra,
        },
        "saveToSentItems": "false",
    }


def assert_error(response: httpx.Response, key: str, **fmt: Any) -> None:
    expected = graph_error(key)
    assert response.status_code == expected.status, response.text
    error = response.json()["error"]
    assert error["code"] == expected.code
    assert error["message"] == expected.message.format(**fmt)
    assert error["innerError"]["request-id"] == response.headers["request-id"]


def add_user(sim: Simulator, user: User) -> None:
    sim.edit_scenario(lambda s: replace(s, users=(*s.users, user)))


def edit_limits(sim: Simulator, **changes: Any) -> Scenario:
    scenario = sim.scenario
    new = replace(scenario, limits=replace(scenario.limits, **changes))
    sim.set_scenario(new)
    return new


MIME_MESSAGE = (
    b"From: Megan Bowen <megan@contoso.com>\r\n"
    b"To: Fran <fran@example.org>\r\n"
    b"Cc: dana@contoso.com\r\n"
    b"Bcc: secret@example.net,\r\n hidden@example.com\r\n"
    b"Subject: Quarterly report\r\n"
    b"Date: Tue, 01 Jul 2025 09:00:00 +0000\r\n"
    b"Message-ID: <report-1@contoso.com>\r\n"
    b"List-Unsubscribe: <mailto:unsub@contoso.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Numbers attached.\r\n"
)


@pytest.fixture
def app_token(m365sim: Simulator) -> str:
    return app_only_token(m365sim)


@pytest.fixture
def megan(m365sim: Simulator) -> str:
    """Megan's token through the password grant (ROPC), with the seed's consented scopes."""
    return ropc_token(m365sim, [f"{GRAPH}/{p}" for p in ALL_DELEGATED])


@pytest.fixture
def graph(m365sim: Simulator) -> Iterator[httpx.Client]:
    with https(m365sim, base_url=m365sim.graph_url) as client:
        yield client


# ---- sendMail: delivery -------------------------------------------------------------------
def test_json_send_mail_is_delivered_as_mime(m365sim: Simulator, graph: httpx.Client,
                                             app_token: str) -> None:
    body = text_message(["fran@example.org"], ccRecipients=[
        {"emailAddress": {"address": "dana@contoso.com", "name": "Dana"}}],
        internetMessageHeaders=[{"name": "x-custom-header-group-name", "value": "Nevada"}])
    response = graph.post(f"/users/{ADMIN}/sendMail", json=body, headers=bearer(app_token))
    assert response.status_code == 202
    assert response.content == b""
    assert response.headers["request-id"]
    [delivered] = m365sim.mailbox("fran@example.org").messages
    assert delivered.path == "graph-json"
    assert delivered.identity == f"app:{SEED_APP_ONLY}"
    assert delivered.sender == ADMIN
    assert delivered.recipients == ("fran@example.org", "dana@contoso.com")
    msg = delivered.parsed()
    assert msg["From"] == f"Adele Vance <{ADMIN}>"
    assert msg["Cc"] == "Dana <dana@contoso.com>"
    assert msg["Subject"] == "Meet for lunch?"
    assert msg["x-custom-header-group-name"] == "Nevada"
    assert msg["Message-ID"] and msg["Date"]
    assert msg.get_content().strip() == "The new cafeteria is open."
    assert m365sim.mailbox("dana@contoso.com").messages == [delivered]


def test_json_attachments_inline_and_file(m365sim: Simulator, graph: httpx.Client,
                                          megan: str) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    body = text_message(["fran@example.org"], body={
        "contentType": "HTML", "content": '<p>Logo: <img src="cid:logo1"></p>'}, attachments=[
        {"@odata.type": "#microsoft.graph.fileAttachment", "name": "logo.png",
         "contentType": "image/png", "contentBytes": base64.b64encode(png).decode(),
         "contentId": "logo1", "isInline": True},
        {"@odata.type": "#microsoft.graph.fileAttachment", "name": "attachment.txt",
         "contentType": "text/plain", "contentBytes": "SGVsbG8gV29ybGQh"},
    ])
    assert graph.post("/me/sendMail", json=body, headers=bearer(megan)).status_code == 202
    msg = m365sim.mailbox("fran@example.org").messages[0].parsed()
    assert msg.get_content_type() == "multipart/mixed"
    related, text = parts(msg)
    assert related.get_content_type() == "multipart/related"
    html, logo = parts(related)
    assert html.get_content_type() == "text/html"
    assert logo["Content-ID"] == "<logo1>"
    assert logo.get_payload(decode=True) == png
    assert text.get_filename() == "attachment.txt"
    assert text.get_payload(decode=True) == b"Hello World!"


def test_mime_send_mail_keeps_the_message_as_submitted(m365sim: Simulator, graph: httpx.Client,
                                                       megan: str) -> None:
    response = graph.post("/me/sendMail", content=mime(MIME_MESSAGE),
                          headers=bearer(megan, **{"Content-Type": "text/plain"}))
    assert response.status_code == 202, response.text
    [delivered] = m365sim.mailbox("fran@example.org").messages
    assert delivered.path == "graph-mime"
    assert delivered.identity == MEGAN
    assert delivered.sender == MEGAN
    assert delivered.raw == MIME_MESSAGE.replace(
        b"Bcc: secret@example.net,\r\n hidden@example.com\r\n", b"")
    assert delivered.parsed()["List-Unsubscribe"] == "<mailto:unsub@contoso.com>"


def test_mime_send_mail_gets_date_message_id_and_from(m365sim: Simulator, graph: httpx.Client,
                                                      megan: str) -> None:
    raw = b"To: fran@example.org\nSubject: bare\n\nhello\n"
    response = graph.post("/me/sendMail", content=base64.encodebytes(raw),  # line-wrapped base64
                          headers=bearer(megan, **{"Content-Type": "text/plain"}))
    assert response.status_code == 202, response.text
    delivered = m365sim.mailbox("fran@example.org").messages[0]
    msg = delivered.parsed()
    assert msg["From"] == f"Megan Bowen <{MEGAN}>"
    assert msg["Date"] and msg["Message-ID"]
    assert delivered.raw.endswith(raw)


@pytest.mark.parametrize("kind", ["mime", "json"])
def test_bcc_recipients_receive_a_copy_without_bcc(m365sim: Simulator, graph: httpx.Client,
                                                   megan: str, kind: str) -> None:
    if kind == "mime":
        response = graph.post("/me/sendMail", content=mime(MIME_MESSAGE),
                              headers=bearer(megan, **{"Content-Type": "text/plain"}))
    else:
        body = text_message(["fran@example.org"], bccRecipients=[
            {"emailAddress": {"address": "secret@example.net"}},
            {"emailAddress": {"address": "hidden@example.com"}}])
        response = graph.post("/me/sendMail", json=body, headers=bearer(megan))
    assert response.status_code == 202, response.text
    for address in ("fran@example.org", "secret@example.net", "hidden@example.com"):
        [delivered] = m365sim.mailbox(address).messages
        assert "Bcc" not in delivered.parsed()
        assert b"\nbcc:" not in delivered.raw.lower()
        assert b"hidden@example.com" not in delivered.raw


# ---- drafts from MIME ----------------------------------------------------------------------
def test_mime_draft_at_me_is_sent_as_its_mime(m365sim: Simulator, graph: httpx.Client,
                                              megan: str) -> None:
    created = graph.post("/me/messages", content=mime(MIME_MESSAGE),
                         headers=bearer(megan, **{"Content-Type": "text/plain"}))
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["isDraft"], body["subject"], body["body"]) == (
        True, "Quarterly report", {"contentType": "text", "content": "Numbers attached.\r\n"})
    assert [r["emailAddress"]["address"] for r in body["bccRecipients"]] == [
        "secret@example.net", "hidden@example.com"]
    assert body["from"] == {"emailAddress": {"address": MEGAN, "name": "Megan Bowen"}}
    sent = graph.post(f"/me/messages/{body['id']}/send", headers=bearer(megan))
    assert sent.status_code == 202, sent.text
    [delivered] = m365sim.mailbox("fran@example.org").messages
    assert (delivered.path, delivered.identity, delivered.sender) == ("graph-draft", MEGAN, MEGAN)
    assert delivered.recipients == ("fran@example.org", "dana@contoso.com", "secret@example.net",
                                    "hidden@example.com")
    assert delivered.raw == MIME_MESSAGE.replace(
        b"Bcc: secret@example.net,\r\n hidden@example.com\r\n", b"")


def test_mime_draft_send_as_is_checked_at_send(m365sim: Simulator, graph: httpx.Client,
                                               megan: str) -> None:
    raw = MIME_MESSAGE.replace(b"From: Megan Bowen <megan@contoso.com>", b"From: info@contoso.com")
    created = graph.post("/me/messages", content=mime(raw),
                         headers=bearer(megan, **{"Content-Type": "text/plain"}))
    assert created.status_code == 201, created.text
    assert_error(graph.post(f"/me/messages/{created.json()['id']}/send", headers=bearer(megan)),
                 "send_as_denied")
    assert m365sim.mailbox("fran@example.org").messages == []


def test_mime_draft_over_four_megabytes_is_refused(m365sim: Simulator, graph: httpx.Client,
                                                   megan: str) -> None:
    response = graph.post("/me/messages", content=mime(MIME_MESSAGE + b"x" * (3 * 1024 * 1024)),
                          headers=bearer(megan, **{"Content-Type": "text/plain"}))
    assert_error(response, "request_too_large")


# ---- sendMail: permissions and mailboxes ------------------------------------------------------
def test_send_as_shared_mailbox(m365sim: Simulator, graph: httpx.Client) -> None:
    token = user_token(m365sim, ADMIN)
    body = text_message(["fran@example.org"], **{"from": {"emailAddress": {"address": SHARED}}})
    assert graph.post("/me/sendMail", json=body, headers=bearer(token)).status_code == 202
    delivered = m365sim.mailbox("fran@example.org").messages[0]
    msg = delivered.parsed()
    assert msg["From"] == SHARED
    assert "Sender" not in msg
    assert delivered.sender == SHARED
    assert delivered.identity == ADMIN


def test_send_on_behalf_stamps_sender(m365sim: Simulator, graph: httpx.Client) -> None:
    m365sim.edit_scenario(lambda s: replace(s, shared_mailboxes=(
        SharedMailbox(address="sales@contoso.com", name="Sales", id="sales-id",
                      send_on_behalf=(MEGAN,)),)))
    token = user_token(m365sim, MEGAN)
    raw = b"From: Sales <sales@contoso.com>\r\nTo: fran@example.org\r\nSubject: q\r\n\r\nhi\r\n"
    response = graph.post("/me/sendMail", content=mime(raw),
                          headers=bearer(token, **{"Content-Type": "text/plain"}))
    assert response.status_code == 202, response.text
    msg = m365sim.mailbox("fran@example.org").messages[0].parsed()
    assert msg["From"] == "Sales <sales@contoso.com>"
    assert msg["Sender"] == f"Megan Bowen <{MEGAN}>"


@pytest.mark.parametrize("kind", ["mime", "json"])
def test_send_as_without_grant_is_denied(m365sim: Simulator, graph: httpx.Client, megan: str,
                                         kind: str) -> None:
    if kind == "json":
        body = text_message(["fran@example.org"], **{"from": {"emailAddress": {"address": SHARED}}})
        response = graph.post("/me/sendMail", json=body, headers=bearer(megan))
    else:
        raw = MIME_MESSAGE.replace(b"From: Megan Bowen <megan@contoso.com>", b"From: info@contoso.com")
        response = graph.post("/me/sendMail", content=mime(raw),
                              headers=bearer(megan, **{"Content-Type": "text/plain"}))
    assert_error(response, "send_as_denied")
    assert response.json()["error"]["message"] == (
        "The user account which was used to submit this request does not have the right to "
        "send mail on behalf of the specified sending account., Cannot submit message.")
    assert m365sim.mailbox("fran@example.org").messages == []


def test_send_as_needs_mail_send_shared(m365sim: Simulator, graph: httpx.Client) -> None:
    token = user_token(m365sim, ADMIN, ("Mail.Send",))
    body = text_message(["fran@example.org"], **{"from": {"emailAddress": {"address": SHARED}}})
    assert_error(graph.post("/me/sendMail", json=body, headers=bearer(token)), "send_as_denied")


def test_without_mail_send_access_is_denied(m365sim: Simulator, graph: httpx.Client) -> None:
    token = user_token(m365sim, MEGAN, ("User.Read",))
    response = graph.post("/me/sendMail", json=text_message(["fran@example.org"]),
                          headers=bearer(token))
    assert_error(response, "access_denied")
    assert response.json()["error"]["message"] == "Access is denied. Check credentials and try again."


def test_shared_mailbox_url_needs_full_access(m365sim: Simulator, graph: httpx.Client) -> None:
    token = user_token(m365sim, ADMIN)
    url = f"/users/{SHARED}/sendMail"
    assert_error(graph.post(url, json=text_message(["a@example.org"]), headers=bearer(token)),
                 "access_denied")
    m365sim.edit_scenario(lambda s: replace(s, shared_mailboxes=tuple(
        replace(m, full_access=(ADMIN,)) for m in s.shared_mailboxes)))
    assert graph.post(url, json=text_message(["a@example.org"]),
                      headers=bearer(token)).status_code == 202
    assert m365sim.mailbox("a@example.org").messages[0].parsed()["From"] == f"Contoso Info <{SHARED}>"


def test_unlicensed_user_has_no_mailbox(m365sim: Simulator, graph: httpx.Client) -> None:
    add_user(m365sim, User(upn="nomail@contoso.com", name="No Mail", id="nomail-id", mailbox=False))
    token = user_token(m365sim, "nomail@contoso.com")
    response = graph.post("/me/sendMail", json=text_message(["fran@example.org"]),
                          headers=bearer(token))
    assert_error(response, "mailbox_not_enabled")
    assert response.json()["error"]["code"] == "MailboxNotEnabledForRESTAPI"


def test_unknown_user_is_invalid(graph: httpx.Client, app_token: str) -> None:
    response = graph.post("/users/ghost@contoso.com/sendMail",
                          json=text_message(["a@example.org"]), headers=bearer(app_token))
    assert_error(response, "invalid_user", user="ghost@contoso.com")


def test_me_needs_a_delegated_token(graph: httpx.Client, app_token: str) -> None:
    response = graph.post("/me/sendMail", json=text_message(["a@example.org"]),
                          headers=bearer(app_token))
    assert_error(response, "me_app_only")


def test_app_only_outside_mailbox_scope_is_refused(m365sim: Simulator, graph: httpx.Client,
                                                   app_token: str) -> None:
    edit_app(m365sim, SEED_APP_ONLY, mailbox_scope=(MEGAN,))
    body = text_message(["a@example.org"])
    response = graph.post(f"/users/{ADMIN}/sendMail", json=body, headers=bearer(app_token))
    assert_error(response, "odata_disabled")
    assert response.json()["error"]["message"] == "Access to OData is disabled."
    assert graph.post(f"/users/{MEGAN}/sendMail", json=body,
                      headers=bearer(app_token)).status_code == 202


def test_app_only_needs_the_mail_send_role(m365sim: Simulator, graph: httpx.Client) -> None:
    edit_app(m365sim, SEED_APP_ONLY, application_permissions=("Application.Read.All",))
    token = app_only_token(m365sim)
    response = graph.post(f"/users/{ADMIN}/sendMail", json=text_message(["a@example.org"]),
                          headers=bearer(token))
    assert_error(response, "access_denied")


# ---- sendMail: tokens ------------------------------------------------------------------------
def test_expired_token_is_refused(m365sim: Simulator, graph: httpx.Client, app_token: str) -> None:
    m365sim.advance(6000)
    response = graph.post(f"/users/{ADMIN}/sendMail", json=text_message(["a@example.org"]),
                          headers=bearer(app_token))
    assert_error(response, "token_expired")
    assert response.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize(("headers", "key"), [
    ({}, "token_missing"),
    ({"Authorization": "Bearer not.a.jwt"}, "token_invalid"),
    ({"Authorization": "Basic bWVnYW46cHc="}, "token_missing"),
])
def test_missing_or_garbled_token(graph: httpx.Client, headers: dict[str, str], key: str) -> None:
    response = graph.post(f"/users/{ADMIN}/sendMail", json=text_message(["a@example.org"]),
                          headers=headers)
    assert_error(response, key)


def test_token_for_another_resource_is_refused(m365sim: Simulator, graph: httpx.Client) -> None:
    token = app_only_token(m365sim, "https://outlook.office.com")
    response = graph.post(f"/users/{ADMIN}/sendMail", json=text_message(["a@example.org"]),
                          headers=bearer(token))
    assert_error(response, "token_bad_signature")


# ---- sendMail: payload ---------------------------------------------------------------------
@pytest.mark.parametrize(("content", "key", "fmt"), [
    (b"", "empty_payload", {}),
    (b"{not json", "invalid_json", {}),
    (b"[]", "invalid_json", {}),
    (b'{"saveToSentItems": true}', "missing_message", {}),
    (b'{"message": {"subject": "x"}}', "invalid_recipients_none", {}),
    (b'{"message": {"toRecipients": [{"emailAddress": {"address": "bad"}}]}}',
     "invalid_recipients_unresolved", {"address": "bad"}),
    (b'{"message": {"toRecipients": "a@example.org"}}', "invalid_property",
     {"name": "toRecipients"}),
    (b'{"message": {"toRecipients": [{"emailAddress": {"address": "a@example.org"}}]},'
     b' "saveToSentItems": "maybe"}', "invalid_property", {"name": "saveToSentItems"}),
])
def test_json_payload_errors(graph: httpx.Client, app_token: str, content: bytes, key: str,
                             fmt: dict[str, Any]) -> None:
    response = graph.post(f"/users/{ADMIN}/sendMail", content=content,
                          headers=bearer(app_token, **{"Content-Type": "application/json"}))
    assert_error(response, key, **fmt)


@pytest.mark.parametrize(("headers", "key", "fmt"), [
    ([{"name": "List-Unsubscribe", "value": "<mailto:u@x.org>"}], "invalid_header",
     {"name": "List-Unsubscribe"}),
    ([{"name": f"x-h{i}", "value": "v"} for i in range(6)], "invalid_header_collection", {}),
    ([], "invalid_header_collection", {}),
])
def test_internet_message_header_rules(graph: httpx.Client, app_token: str,
                                       headers: list[dict[str, str]], key: str,
                                       fmt: dict[str, str]) -> None:
    body = text_message(["a@example.org"], internetMessageHeaders=headers)
    response = graph.post(f"/users/{ADMIN}/sendMail", json=body, headers=bearer(app_token))
    assert_error(response, key, **fmt)


@pytest.mark.parametrize(("content", "key", "fmt"), [
    (b"!!! not base64 !!!", "mime_invalid_base64", {}),
    (base64.b64encode(b"just some text, not a message\r\n"), "mime_invalid_base64", {}),
    (mime(b"Subject: nobody\r\n\r\nhi\r\n"), "invalid_recipients_none", {}),
    (mime(b"To: undisclosed-recipients:;\r\n\r\nhi\r\n"), "invalid_recipients_none", {}),
    (mime(b"To: fran@example.org, bad\r\n\r\nhi\r\n"), "invalid_recipients_unresolved",
     {"address": "bad"}),
])
def test_mime_payload_errors(graph: httpx.Client, megan: str, content: bytes, key: str,
                             fmt: dict[str, str]) -> None:
    response = graph.post("/me/sendMail", content=content,
                          headers=bearer(megan, **{"Content-Type": "text/plain"}))
    assert_error(response, key, **fmt)


def test_too_many_recipients(m365sim: Simulator, graph: httpx.Client, app_token: str) -> None:
    edit_limits(m365sim, recipients_per_message=3)
    body = text_message([f"r{i}@example.org" for i in range(4)])
    response = graph.post(f"/users/{ADMIN}/sendMail", json=body, headers=bearer(app_token))
    assert_error(response, "too_many_recipients", count=4, limit=3)


def test_oversize_mime_request_is_refused(m365sim: Simulator, graph: httpx.Client,
                                          megan: str) -> None:
    body = mime(MIME_MESSAGE + b"x" * (5 * 1024 * 1024))
    headers = bearer(megan, **{"Content-Type": "text/plain"})
    response = graph.post("/me/sendMail", content=body, headers=headers)
    assert_error(response, "request_too_large")
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "The maximum request length supported is 4MB."
    edit_limits(m365sim, oversize_status=400)
    response = graph.post("/me/sendMail", content=body, headers=headers)
    assert_error(response, "request_too_large_400")
    assert response.json()["error"]["code"] == "BadRequest"
    assert m365sim.mailbox("fran@example.org").messages == []


def test_message_over_max_send_size(m365sim: Simulator, graph: httpx.Client, app_token: str) -> None:
    add_user(m365sim, User(upn="small@contoso.com", name="Small", id="small-id",
                           max_send_size=1000))
    raw = MIME_MESSAGE.replace(b"megan@", b"small@") + b"x" * 2000
    response = graph.post("/users/small@contoso.com/sendMail", content=mime(raw),
                          headers=bearer(app_token, **{"Content-Type": "text/plain"}))
    assert_error(response, "message_size_exceeded")


# ---- sendMail: limits ------------------------------------------------------------------------
def test_rate_limit_answers_429_with_whole_seconds(m365sim: Simulator, graph: httpx.Client,
                                                   app_token: str) -> None:
    edit_limits(m365sim, time_scale=20)  # a minute of limit time lasts 3 real seconds
    freeze_clock(m365sim)  # the 31 requests fall in one window however long they take
    url, body = f"/users/{ADMIN}/sendMail", text_message(["a@example.org"])
    for _ in range(30):
        assert graph.post(url, json=body, headers=bearer(app_token)).status_code == 202
    response = graph.post(url, json=body, headers=bearer(app_token))
    assert_error(response, "throttled_rate")
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 3
    m365sim.advance(int(retry_after) * 20)  # Retry-After's real seconds, in limit time
    assert graph.post(url, json=body, headers=bearer(app_token)).status_code == 202
    assert len(m365sim.mailbox("a@example.org").messages) == 31


def test_daily_recipient_quota(m365sim: Simulator, graph: httpx.Client, app_token: str) -> None:
    edit_limits(m365sim, recipients_per_day=3)
    url = f"/users/{ADMIN}/sendMail"
    assert graph.post(url, json=text_message(["a@x.org", "b@x.org"]),
                      headers=bearer(app_token)).status_code == 202
    response = graph.post(url, json=text_message(["c@x.org", "d@x.org"]), headers=bearer(app_token))
    assert_error(response, "submission_quota", limit=3)
    assert int(response.headers["Retry-After"]) > 3600


def test_fifth_concurrent_request_is_throttled(m365sim: Simulator, graph: httpx.Client,
                                               app_token: str) -> None:
    release = threading.Event()
    statuses: list[int] = []

    def slow_body() -> Iterator[bytes]:
        yield b'{"message": {"toRecipients": [{"emailAddress": '
        release.wait(10)
        yield b'{"address": "a@example.org"}}]}}'

    def send() -> None:
        with https(m365sim, base_url=m365sim.graph_url) as client:
            statuses.append(client.post(f"/users/{ADMIN}/sendMail", content=slow_body(),
                                        headers=bearer(app_token)).status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: m365sim._call(lambda s: sum(s.limits._in_flight.values())) == 4)
    response = graph.post(f"/users/{ADMIN}/sendMail", json=text_message(["b@example.org"]),
                          headers=bearer(app_token))
    release.set()
    for t in threads:
        t.join()
    assert_error(response, "throttled_concurrency")
    assert response.headers["Retry-After"] == "1"
    assert statuses == [202] * 4


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# ---- users, applications, unknown routes -------------------------------------------------------
def test_get_me_and_users(m365sim: Simulator, graph: httpx.Client, megan: str,
                          app_token: str) -> None:
    me = graph.get("/me", headers=bearer(megan)).json()
    assert (me["userPrincipalName"], me["mail"], me["displayName"]) == (
        MEGAN, MEGAN, "Megan Bowen")
    assert me["id"] == m365sim.scenario.user(MEGAN).id  # type: ignore[union-attr]
    assert_error(graph.get("/me", headers=bearer(app_token)), "me_app_only")
    assert_error(graph.get(f"/users/{ADMIN}", headers=bearer(app_token)),
                 "authorization_request_denied")
    edit_app(m365sim, SEED_APP_ONLY, application_permissions=("User.Read.All",))
    token = app_only_token(m365sim)
    assert graph.get(f"/users/{ADMIN}", headers=bearer(token)).json()["displayName"] == "Adele Vance"
    assert_error(graph.get("/users/ghost@contoso.com", headers=bearer(token)),
                 "resource_not_found", id="ghost@contoso.com")


def test_application_credentials(m365sim: Simulator, graph: httpx.Client, app_token: str) -> None:
    url = f"/applications(appId='{SEED_APP_ONLY}')"
    select = {"$select": "id,appId,displayName,passwordCredentials,keyCredentials"}
    body = graph.get(url, params=select, headers=bearer(app_token)).json()
    assert body["appId"] == SEED_APP_ONLY
    assert body["displayName"] == "Contoso App-only Sender"
    assert "signInAudience" not in body  # not selected
    [secret] = body["passwordCredentials"]
    assert secret == {
        "customKeyIdentifier": None, "displayName": "app-only (12 months)",
        "endDateTime": "2027-06-01T00:00:00Z", "hint": "see", "keyId": secret["keyId"],
        "secretText": None, "startDateTime": "2026-06-01T00:00:00Z",
    }
    assert body["keyCredentials"] == []
    by_object_id = graph.get(f"/applications/{body['id']}", headers=bearer(app_token)).json()
    assert by_object_id["signInAudience"] == "AzureADMyOrg"


def test_application_key_credentials(m365sim: Simulator, graph: httpx.Client,
                                     app_token: str) -> None:
    pem = m365sim.ca_file.read_text()
    edit_app(m365sim, SEED_APP_ONLY, certificates=(Certificate(pem=pem, display_name="CN=relay"),))
    body = graph.get(f"/applications(appId='{SEED_APP_ONLY}')", headers=bearer(app_token)).json()
    [key] = body["keyCredentials"]
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert key["customKeyIdentifier"] == cert.fingerprint(hashes.SHA1()).hex().upper()
    assert (key["type"], key["usage"], key["displayName"]) == ("AsymmetricX509Cert", "Verify",
                                                               "CN=relay")
    assert key["endDateTime"].endswith("Z")


def test_reading_applications_needs_permission(m365sim: Simulator, graph: httpx.Client) -> None:
    token = user_token(m365sim, MEGAN, ("Mail.Send",))
    response = graph.get(f"/applications(appId='{SEED_APP_ONLY}')", headers=bearer(token))
    assert_error(response, "authorization_request_denied")


@pytest.mark.parametrize(("method", "path", "segment"), [
    ("GET", "/v1.0/me/mailFolders", "mailFolders"),
    ("GET", "/v1.0/groups", "groups"),
    ("GET", "/v1.0/me/sendMail", "sendMail"),
    ("POST", f"/v1.0/users/{ADMIN}/messages/abc/forward", "forward"),
])
def test_unknown_routes(m365sim: Simulator, method: str, path: str, segment: str) -> None:
    with https(m365sim, base_url=m365sim.base_url) as client:
        response = client.request(method, path)
    assert_error(response, "not_found_route", segment=segment)


def test_segments_match_case_insensitively(m365sim: Simulator, graph: httpx.Client,
                                           megan: str) -> None:
    response = graph.post("/ME/sendmail", json=text_message(["a@example.org"]),
                          headers=bearer(megan))
    assert response.status_code == 202


def test_request_log_records_identity(m365sim: Simulator, graph: httpx.Client, megan: str) -> None:
    graph.post("/me/sendMail", json=text_message(["a@example.org"]), headers=bearer(megan))
    graph.post("/me/sendMail", json=text_message(["bad"]), headers=bearer(megan))
    sent, refused = m365sim.requests()[-2:]
    assert (sent.status, sent.identity, sent.client_id) == (202, MEGAN, SEED_DELEGATED_APP)
    assert sent.detail and sent.detail.startswith("delivered ")
    assert (refused.status, refused.detail) == (400, "invalid_recipients_unresolved")


def test_another_address_of_ones_own_mailbox_is_not_send_as(m365sim: Simulator,
                                                             graph: httpx.Client) -> None:
    token = user_token(m365sim, MEGAN, ("Mail.Send",))
    body = text_message(["a@example.org"],
                        **{"from": {"emailAddress": {"address": "megan@contoso.onmicrosoft.com"}}})
    assert graph.post("/me/sendMail", json=body, headers=bearer(token)).status_code == 202
