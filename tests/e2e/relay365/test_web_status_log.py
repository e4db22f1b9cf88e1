"""The admin page's status (/) and log (/log, /log/{id}): a real relay, m365sim, and HTTP.

Messages go in over SMTP and out to m365sim; the pages are read as the admin's browser
gets them.  In the ``no-send-as`` scenario a message from info@contoso.com is refused
with ErrorSendAsDenied (a dead letter) until the test grants Send As.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import smtplib
import tomllib
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from m365sim import Simulator
from relay365.config import settings_from_dict, write_settings
from relay365.web._log_page import read_message, readdressed, typed_recipients
from relay365.web._status import _expiry, token_valid_until

from .test_serve import eventually, free_port, send, sign_in, write_config
from .web_helpers import AdminClient, admin_relay

DEAD_LETTER_FIX = "Send As"  # words of M365-SEND-AS-DENIED's fix


def row(page: str, element_id: str) -> str:
    """The HTML of the element with ``element_id`` (a tr, article or section), up to its end tag."""
    found = re.search(rf'<(tr|article|section|div|dd)\b[^>]*id="{re.escape(element_id)}"[^>]*>(.*?)</\1>',
                      page, re.S)
    assert found, f"no element #{element_id} in the page"
    return found.group(2)


def counts(page: str, element_id: str) -> tuple[int, int]:
    cells = row(page, element_id)
    sent = re.search(r'<td class="sent">(\d+)</td>', cells)
    failed = re.search(r'<td class="failed">(\d+)</td>', cells)
    assert sent and failed, cells
    return int(sent.group(1)), int(failed.group(1))


def ids_found(admin: AdminClient, **query: str) -> list[str]:
    page = admin.get("/log", params=query)
    assert page.status_code == 200, page.text
    return re.findall(r'<tr id="row-([0-9A-F]{16})"', page.text)


def message_ids(admin: AdminClient, state: str) -> list[str]:
    return ids_found(admin, status=state)


def send_mail(port: int, message: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(message)


def api_status(ready: dict[str, object], message_id: str) -> dict[str, object]:
    url = str(ready["http_url"]).replace("127.0.0.1", "localhost")  # a local client needs no key
    answer = httpx.get(f"{url}/api/v1/messages/{message_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


@pytest.mark.m365sim("no-send-as")
def test_status_log_and_retry_of_a_dead_letter(m365sim: Simulator, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(m365sim, tmp_path, port)
    sign_in(m365sim, config)
    with admin_relay(config) as (admin, ready):
        send(port, "info@contoso.com", "quarterly report")  # refused: no Send As on info@
        send(port, "admin@contoso.com", "hello from admin")
        eventually(lambda: len(message_ids(admin, "failed")) == 1 and len(message_ids(admin, "sent")) == 1)
        [dead] = message_ids(admin, "failed")
        [sent] = message_ids(admin, "sent")

        status = admin.get("/")
        assert status.status_code == 200
        assert counts(status.text, "counts-24h") == (1, 1)
        assert counts(status.text, "counts-7d") == (1, 1)
        assert "<svg" in status.text and "<title id=\"chart-title\">" in status.text
        today = dt.datetime.now(dt.UTC).strftime("%a %d %b")
        assert f"{today}: 1 sent, 1 failed." in status.text  # the chart's text alternative
        card = row(status.text, "connection-demo")
        assert "Signed in as admin@contoso.com" in card and 'href="/setup/demo"' in card
        assert "no access token yet" not in card  # the relay holds a token after sending
        assert re.search(r'<span class="badge ok">in \d+ days</span>', card)  # secret_expires 2028
        failure = row(status.text, f"failure-{dead}")
        assert f'href="/log/{dead}"' in failure
        assert "M365-SEND-AS-DENIED" in failure and DEAD_LETTER_FIX in failure
        assert f"failure-{sent}" not in status.text

        # The search, by each field; every filter must hold.
        assert ids_found(admin, recipient="dl@example") == [sent, dead]
        assert ids_found(admin, sender="INFO@contoso") == [dead]
        assert ids_found(admin, subject="hello from") == [sent]
        assert ids_found(admin, subject="report", status="sent") == []
        assert ids_found(admin, recipient="nobody@") == []
        today_iso = dt.datetime.now(dt.UTC).date().isoformat()
        assert ids_found(admin, since=today_iso, until=today_iso) == [sent, dead]
        assert ids_found(admin, until="2020-01-01") == []
        bad = admin.get("/log", params={"since": "yesterday"})
        assert bad.status_code == 400 and "is not a date" in bad.text

        # The dead letter in detail: Microsoft's code, its request id and the fix.
        detail = admin.get(f"/log/{dead}")
        assert detail.status_code == 200
        request_id = api_status(ready, dead)["request_id"]
        assert isinstance(request_id, str) and request_id
        assert f'<code id="message-request-id">{request_id}</code>' in detail.text
        assert '<code id="message-code">ErrorSendAsDenied</code>' in detail.text
        assert DEAD_LETTER_FIX in row(detail.text, "last-failure")
        assert "Subject: quarterly report" not in detail.text  # headers are a table, not raw text
        assert re.search(r"<th scope=\"row\">Subject</th><td>quarterly report</td>", detail.text)
        assert 'id="retry-form"' in detail.text
        assert 'id="retry-form"' not in admin.get(f"/log/{sent}").text  # a sent message is not retried

        # Granted Send As, a retry delivers it.
        m365sim.grant_send_as("info@contoso.com", "admin@contoso.com")
        retried = admin.post(f"/log/{dead}/retry", form_page=f"/log/{dead}")
        assert retried.status_code == 303 and retried.headers["location"] == f"/log/{dead}"
        assert "is queued again" in admin.get(f"/log/{dead}").text  # the flash
        eventually(lambda: len(m365sim.mailbox("dl@example.org").messages) == 2)
        eventually(lambda: 'id="message-state">sent<' in admin.get(f"/log/{dead}").text)
        again = admin.post(f"/log/{dead}/retry", form_page=f"/log/{dead}")
        assert again.status_code == 303
        assert "was not retried" in admin.get(f"/log/{dead}").text
        status = admin.get("/")
        assert counts(status.text, "counts-24h") == (2, 1)  # the failure happened, then it was sent
        assert "All clear" in row(status.text, "failures")


def test_resend_delete_and_escaping(m365sim: Simulator, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(m365sim, tmp_path, port)
    sign_in(m365sim, config)
    with admin_relay(config) as (admin, _):
        hostile = EmailMessage()
        hostile["From"] = "admin@contoso.com"
        hostile["To"] = "dl@example.org"
        hostile["Subject"] = "<script>alert('subject')</script>"
        hostile.set_content("text <script>alert('text')</script>")
        hostile.add_alternative("<p>hi</p><script>alert('html')</script><img src=x onerror=alert(1)>",
                                subtype="html")
        send_mail(port, hostile)
        eventually(lambda: len(m365sim.mailbox("dl@example.org").messages) == 1)
        [original] = ids_found(admin, subject="<script>")

        for page in (admin.get(f"/log/{original}").text, admin.get("/log").text):
            assert "&lt;script&gt;alert(" in page
            assert "<script>alert" not in page and "<img src=x" not in page
        detail = admin.get(f"/log/{original}").text
        assert "&lt;img src=x onerror=alert(1)&gt;" in row(detail, "content")  # shown as source

        # Resend to someone else: a new message, delivered to them only.
        resent = admin.post(f"/log/{original}/resend",
                            {"recipients": "copy@example.org, Two <two@example.org>"},
                            form_page=f"/log/{original}")
        assert resent.status_code == 303
        copy = resent.headers["location"].removeprefix("/log/")
        assert re.fullmatch(r"[0-9A-F]{16}", copy) and copy != original
        shown = admin.get(f"/log/{copy}").text
        assert f"Queued a copy of {original} as {copy}" in shown
        eventually(lambda: len(m365sim.mailbox("copy@example.org").messages) == 1
                   and len(m365sim.mailbox("two@example.org").messages) == 1)
        got = m365sim.mailbox("copy@example.org").messages[0].parsed()
        assert got["Subject"] == "<script>alert('subject')</script>"
        assert "dl@example.org" not in str(got["To"])
        assert len(m365sim.mailbox("dl@example.org").messages) == 1  # the first recipient got no copy
        eventually(lambda: 'id="message-state">sent<' in admin.get(f"/log/{copy}").text)

        # Resend to the same recipients when none are typed; nonsense is refused.
        same = admin.post(f"/log/{original}/resend", {"recipients": ""}, form_page=f"/log/{original}")
        assert same.status_code == 303
        eventually(lambda: len(m365sim.mailbox("dl@example.org").messages) == 2)
        refused = admin.post(f"/log/{original}/resend", {"recipients": "not an address"},
                             form_page=f"/log/{original}")
        assert refused.headers["location"] == f"/log/{original}"
        assert "Not resent" in admin.get(f"/log/{original}").text

        # Delete: gone from the page and the search.
        deleted = admin.post(f"/log/{copy}/delete", form_page=f"/log/{copy}")
        assert deleted.status_code == 303 and deleted.headers["location"] == "/log"
        assert f"Deleted {copy}" in admin.get("/log").text
        missing = admin.get(f"/log/{copy}")
        assert missing.status_code == 404 and f"No message {copy}" in missing.text
        assert copy not in ids_found(admin)
        assert 'data-confirm="Delete message' in detail

        # Without the CSRF token nothing happens; without a session the pages send to the login.
        forged = admin.http.post(f"/log/{original}/delete", data={})
        assert forged.status_code == 403
        assert admin.get(f"/log/{original}").status_code == 200
        stranger = httpx.get(str(admin.http.base_url.join(f"/log/{original}")), follow_redirects=False)
        assert stranger.status_code == 303 and stranger.headers["location"].startswith("/login")


def test_status_without_a_connection_points_to_setup(m365sim: Simulator, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(m365sim, tmp_path, port)
    data = tomllib.loads(config.read_text(encoding="utf-8"))
    data["connections"] = []
    write_settings(settings_from_dict(data, env={}), config)
    with admin_relay(config) as (admin, _):
        status = admin.get("/")
        assert status.status_code == 200
        assert 'href="/setup/new"' in row(status.text, "no-connection")
        assert counts(status.text, "counts-24h") == (0, 0)


# -- the pieces, without a relay -----------------------------------------------------------------

def test_readdressed_replaces_every_recipient_field_and_keeps_the_body() -> None:
    raw = (b"From: a@contoso.com\r\nTo: old@example.org,\r\n other@example.org\r\nCC: cc@example.org\r\n"
           b"Bcc: hidden@example.org\r\nX-Original-To: kept@example.org\r\nSubject: s\r\n\r\nTo: body\r\n")
    out = readdressed(raw, ["new@example.org", "two@example.org"])
    assert out == (b"From: a@contoso.com\r\nX-Original-To: kept@example.org\r\nSubject: s\r\n"
                   b"To: new@example.org, two@example.org\r\n\r\nTo: body\r\n")
    assert readdressed(b"Subject: x\n", ["n@example.org"]) == b"Subject: x\nTo: n@example.org\n\n"


def test_typed_recipients_refuse_what_could_break_a_header() -> None:
    assert typed_recipients("a@example.org, B <b@example.org>") == ["a@example.org", "b@example.org"]
    assert typed_recipients("  ") == []
    for bad in ("not an address", "a@example.org\r\nBcc: evil@example.org", "x@y@z"):
        with pytest.raises(ValueError, match="address"):
            typed_recipients(bad)


def test_token_valid_until_reads_the_latest_access_token() -> None:
    cache = {"AccessToken": {"a": {"expires_on": "1900000000"}, "b": {"expires_on": "1800000000"}},
             "RefreshToken": {"r": {"secret": "x"}}}
    assert token_valid_until(json.dumps(cache)) == dt.datetime.fromtimestamp(1900000000, dt.UTC)
    assert token_valid_until(json.dumps({"RefreshToken": {}})) is None
    assert token_valid_until("not json") is None and token_valid_until(None) is None


def test_read_message_decodes_headers_and_keeps_markup_as_text() -> None:
    message = EmailMessage()
    message["Subject"] = "Grüße <b>"
    message.set_content("plain")
    message.add_alternative("<b>bold</b>", subtype="html")
    message.add_attachment(b"12345", maintype="application", subtype="pdf", filename="a.pdf")
    read = read_message(message.as_bytes())
    assert ("Subject", "Grüße <b>") in read.headers
    assert (read.text or "").strip() == "plain" and (read.html or "").strip() == "<b>bold</b>"
    assert [(p.filename, p.content_type, p.size) for p in read.attachments] == [
        ("a.pdf", "application/pdf", 5)]


def test_expiry_badges_turn_amber_at_30_days_and_red_at_7() -> None:
    def badge(days: int | None) -> str:
        return _expiry("client secret", None, days, "secret_expires in the configuration").badge

    assert [badge(d) for d in (400, 31, 30, 8, 7, 0, -3, None)] == [
        "ok", "ok", "warn", "warn", "bad", "bad", "bad", "warn"]
