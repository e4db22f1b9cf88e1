"""Drafts, attachments and Outlook upload sessions, over HTTPS as Graph clients use them."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import replace
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from email.policy import default as default_policy
from typing import Any

import httpx
import pytest

from m365sim import Simulator
from m365sim._knowledge import graph_error

from .conftest import SEED_APP_ONLY, app_only_token, https

ADMIN = "admin@contoso.com"
MiB = 1024 * 1024
DRAFT = {
    "subject": "The big file",
    "body": {"contentType": "HTML", "content": "<p>Attached.</p>"},
    "toRecipients": [{"emailAddress": {"address": "fran@example.org", "name": "Fran"}}],
    "bccRecipients": [{"emailAddress": {"address": "audit@example.net"}}],
}


def parts(msg: EmailMessage) -> list[EmailMessage]:
    return [p for p in msg.iter_parts() if isinstance(p, EmailMessage)]


def assert_error(response: httpx.Response, key: str, **fmt: Any) -> None:
    expected = graph_error(key)
    assert response.status_code == expected.status, response.text
    error = response.json()["error"]
    assert (error["code"], error["message"]) == (expected.code, expected.message.format(**fmt))


@pytest.fixture
def token(m365sim: Simulator) -> str:
    return app_only_token(m365sim)


@pytest.fixture
def graph(m365sim: Simulator, token: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {token}"}
    with https(m365sim, base_url=f"{m365sim.graph_url}/users/{ADMIN}", headers=headers) as client:
        yield client


@pytest.fixture
def uploader(m365sim: Simulator) -> Iterator[httpx.Client]:
    """A client without the Authorization header, as the upload URL wants."""
    with https(m365sim) as client:
        yield client


def create_draft(graph: httpx.Client, message: dict[str, Any] | None = None) -> str:
    response = graph.post("/messages", json=message or DRAFT)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["isDraft"] is True
    assert body["subject"] == (message or DRAFT)["subject"]
    return str(body["id"])


def open_session(graph: httpx.Client, draft: str, size: int, **item: Any) -> dict[str, Any]:
    response = graph.post(f"/messages/{draft}/attachments/createUploadSession", json={
        "AttachmentItem": {"attachmentType": "file", "name": "big.bin", "size": size, **item}})
    assert response.status_code == 201, response.text
    return dict(response.json())


def put(client: httpx.Client, url: str, data: bytes, start: int, total: int,
        **headers: str) -> httpx.Response:
    end = start + len(data) - 1
    return client.put(url, content=data, headers={
        "Content-Type": "application/octet-stream",
        "Content-Range": f"bytes {start}-{end}/{total}", **headers})


def upload(client: httpx.Client, url: str, data: bytes, chunk: int = 4 * MiB) -> httpx.Response:
    """PUT ``data`` in ranges; the last response (201 when complete)."""
    response = None
    for start in range(0, len(data), chunk):
        response = put(client, url, data[start:start + chunk], start, len(data))
        if start + chunk < len(data):
            assert response.status_code == 200, response.text
            assert response.json()["NextExpectedRanges"] == [str(start + chunk)]
    assert response is not None
    return response


# ---- the large-attachment flow ---------------------------------------------------------------
def test_ten_megabyte_attachment_arrives_byte_identical(m365sim: Simulator, graph: httpx.Client,
                                                         uploader: httpx.Client) -> None:
    data = os.urandom(10 * MiB)
    draft = create_draft(graph)
    session = open_session(graph, draft, len(data), contentType="application/pdf")
    assert session["nextExpectedRanges"] == ["0-"]
    assert session["expirationDateTime"].endswith("Z")
    url = session["uploadUrl"]
    assert "/api/v2.0/Users('" in url and "/AttachmentSessions('" in url and "?authtoken=" in url

    first = put(uploader, url, data[:4 * MiB], 0, len(data))
    assert first.status_code == 200
    assert first.json() == {
        "@odata.context": "https://outlook.office.com/api/v2.0/$metadata"
                          "#Microsoft.OutlookServices.UploadSession",
        "ExpirationDateTime": first.json()["ExpirationDateTime"],
        "NextExpectedRanges": [str(4 * MiB)],
    }
    assert put(uploader, url, data[4 * MiB:8 * MiB], 4 * MiB, len(data)).status_code == 200
    last = put(uploader, url, data[8 * MiB:], 8 * MiB, len(data))
    assert last.status_code == 201
    assert last.content == b""
    assert last.headers["Content-Length"] == "0"
    assert f"/Messages('{draft}')/Attachments('" in last.headers["Location"]

    assert graph.post(f"/messages/{draft}/send").status_code == 202
    [delivered] = m365sim.mailbox("fran@example.org").messages
    assert delivered.path == "graph-draft"
    assert delivered.recipients == ("fran@example.org", "audit@example.net")
    msg = delivered.parsed()
    assert "Bcc" not in msg
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "big.bin"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_payload(decode=True) == data
    assert m365sim.mailbox("audit@example.net").messages == [delivered]
    # Sent: the draft is gone.
    assert_error(graph.post(f"/messages/{draft}/send"), "item_not_found")


def test_small_attachments_and_inline_through_the_draft(m365sim: Simulator,
                                                        graph: httpx.Client) -> None:
    logo = os.urandom(500)
    draft = create_draft(graph, {**DRAFT, "body": {
        "contentType": "HTML", "content": '<img src="cid:logo">'}, "attachments": [
        {"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.txt",
         "contentType": "text/plain", "contentBytes": base64.b64encode(b"first").decode()}]})
    response = graph.post(f"/messages/{draft}/attachments", json={
        "@odata.type": "#microsoft.graph.fileAttachment", "name": "logo.png",
        "contentType": "image/png", "contentBytes": base64.b64encode(logo).decode(),
        "isInline": True, "contentId": "logo"})
    assert response.status_code == 201, response.text
    assert (response.json()["name"], response.json()["size"]) == ("logo.png", 500)
    assert graph.post(f"/messages/{draft}/send").status_code == 202
    msg = m365sim.mailbox("fran@example.org").messages[0].parsed()
    related, text = parts(msg)
    _, image = parts(related)
    assert (image["Content-ID"], image.get_payload(decode=True)) == ("<logo>", logo)
    assert text.get_payload(decode=True) == b"first"


def test_send_draft_checks_recipients(graph: httpx.Client) -> None:
    draft = create_draft(graph, {"subject": "nobody"})
    assert_error(graph.post(f"/messages/{draft}/send"), "invalid_recipients_none")


# ---- refusals -------------------------------------------------------------------------------
def test_bearer_on_the_upload_url_is_refused(graph: httpx.Client, uploader: httpx.Client,
                                             token: str) -> None:
    session = open_session(graph, create_draft(graph), 4 * MiB)
    response = put(uploader, session["uploadUrl"], b"x" * 1024, 0, 4 * MiB,
                   Authorization=f"Bearer {token}")
    assert_error(response, "upload_bearer_rejected")


def test_changed_authtoken_is_refused(graph: httpx.Client, uploader: httpx.Client) -> None:
    draft = create_draft(graph)
    first, second = open_session(graph, draft, 4 * MiB), open_session(graph, draft, 4 * MiB)
    # The second session's token on the first session's URL.
    swapped = first["uploadUrl"].split("?")[0] + "?" + second["uploadUrl"].split("?")[1]
    assert_error(put(uploader, swapped, b"x", 0, 4 * MiB), "upload_authtoken_invalid")
    no_token = first["uploadUrl"].split("?")[0]
    assert_error(put(uploader, no_token, b"x", 0, 4 * MiB), "upload_authtoken_invalid")


@pytest.mark.parametrize("content_range", [None, "bytes 100-199/4194304", "bytes 0-99/5000000",
                                           "bytes 0-99"])
def test_range_must_continue_the_upload(graph: httpx.Client, uploader: httpx.Client,
                                        content_range: str | None) -> None:
    session = open_session(graph, create_draft(graph), 4 * MiB)
    headers = {"Content-Range": content_range} if content_range else {}
    response = uploader.put(session["uploadUrl"], content=b"x" * 100, headers=headers)
    assert_error(response, "upload_bad_range", expected=0)


def test_body_shorter_than_range_is_refused(graph: httpx.Client, uploader: httpx.Client) -> None:
    session = open_session(graph, create_draft(graph), 4 * MiB)
    response = uploader.put(session["uploadUrl"], content=b"x" * 10,
                            headers={"Content-Range": f"bytes 0-99/{4 * MiB}"})
    assert_error(response, "upload_bad_range", expected=0)


def test_chunk_over_four_megabytes_is_refused(graph: httpx.Client, uploader: httpx.Client) -> None:
    session = open_session(graph, create_draft(graph), 6 * MiB)
    response = put(uploader, session["uploadUrl"], b"x" * (4 * MiB + 1), 0, 6 * MiB)
    assert_error(response, "request_too_large")


@pytest.mark.parametrize(("size", "key"), [(3 * MiB - 1, "attachment_too_small"),
                                           (150 * MiB + 1, "upload_too_large")])
def test_session_size_limits(graph: httpx.Client, size: int, key: str) -> None:
    response = graph.post(f"/messages/{create_draft(graph)}/attachments/createUploadSession",
                          json={"AttachmentItem": {"attachmentType": "file", "name": "f",
                                                   "size": size}})
    assert_error(response, key)


def test_delete_cancels_the_session(graph: httpx.Client, uploader: httpx.Client) -> None:
    url = open_session(graph, create_draft(graph), 4 * MiB)["uploadUrl"]
    response = uploader.delete(url)
    assert response.status_code == 204
    assert_error(put(uploader, url, b"x", 0, 4 * MiB), "item_not_found")


def test_session_expires_on_the_emulator_clock(m365sim: Simulator, graph: httpx.Client,
                                               uploader: httpx.Client) -> None:
    url = open_session(graph, create_draft(graph), 4 * MiB)["uploadUrl"]
    m365sim.advance(16 * 60)
    assert_error(put(uploader, url, b"x", 0, 4 * MiB), "item_not_found")


def test_unknown_draft(graph: httpx.Client) -> None:
    assert_error(graph.post("/messages/AAMkNoSuchDraft/attachments/createUploadSession",
                            json={"AttachmentItem": {"name": "f", "size": 4 * MiB}}),
                 "item_not_found")
    assert_error(graph.post("/messages/AAMkNoSuchDraft/send"), "item_not_found")


@pytest.mark.parametrize("mime", [False, True])
def test_drafts_need_mail_read_write(m365sim: Simulator, mime: bool) -> None:
    app = m365sim.scenario.app(SEED_APP_ONLY)
    assert app is not None
    m365sim.edit_scenario(lambda s: s.replace_app(replace(app, application_permissions=("Mail.Send",))))
    token = app_only_token(m365sim)
    headers = {"Authorization": f"Bearer {token}"}
    with https(m365sim, base_url=m365sim.graph_url) as client:
        if mime:
            response = client.post(f"/users/{ADMIN}/messages",
                                   content=base64.b64encode(mime_message()),
                                   headers={**headers, "Content-Type": "text/plain"})
        else:
            response = client.post(f"/users/{ADMIN}/messages", json=DRAFT, headers=headers)
    assert_error(response, "access_denied")


# ---- drafts created from MIME ---------------------------------------------------------------
def mime_message(*, image: bool = True, file: bool = True) -> bytes:
    """A text+HTML alternative; with ``image`` the HTML is in a related part with an
    inline image, with ``file`` all of it is in a mixed part with a CSV file."""
    msg = EmailMessage()
    msg["From"] = "Admin <admin@contoso.com>"
    msg["To"] = "Fran <fran@example.org>"
    msg["Cc"] = "dana@example.org"
    msg["Bcc"] = "audit@example.net"
    msg["Subject"] = "Résumé ✓"
    msg["Message-ID"] = "<mime-draft-1@app.example>"
    msg["Date"] = "Tue, 01 Jun 2027 09:00:00 +0000"
    for name, value in MIME_HEADERS.items():
        msg[name] = value
    msg.set_content("Text body é\n")
    msg.add_alternative('<p>HTML body é</p><img src="cid:logo@app.example">\n', subtype="html")
    if image:
        parts(msg)[1].add_related(b"\x89PNG small", "image", "png", cid="<logo@app.example>",
                                  filename="logo.png")
    if file:
        msg.add_attachment(b"first attachment", "text", "csv", filename="first.csv")
    return msg.as_bytes(policy=SMTP)


MIME_HEADERS = {"In-Reply-To": "<q1@app.example>", "References": "<q0@app.example> <q1@app.example>",
                "List-Unsubscribe": "<mailto:unsub@app.example>", "X-Job": "42"}


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=default_policy)
    assert isinstance(msg, EmailMessage)
    return msg


def structure(msg: EmailMessage) -> list[str]:
    return [p.get_content_type() for p in msg.walk()]


def leaves(msg: EmailMessage) -> list[tuple[str, str | None, str | None, bytes]]:
    out = []
    for p in msg.walk():
        if not p.is_multipart():
            payload = p.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out.append((p.get_content_type(), p.get_filename(), p.get("Content-ID"), payload))
    return out


def create_mime_draft(graph: httpx.Client, raw: bytes, path: str = "/messages") -> dict[str, Any]:
    response = graph.post(path, content=base64.b64encode(raw),
                          headers={"Content-Type": "text/plain"})
    assert response.status_code == 201, response.text
    return dict(response.json())


def attach(graph: httpx.Client, draft: str, name: str, data: bytes, content_type: str,
           content_id: str | None = None) -> None:
    item: dict[str, Any] = {"@odata.type": "#microsoft.graph.fileAttachment", "name": name,
                            "contentType": content_type,
                            "contentBytes": base64.b64encode(data).decode()}
    if content_id:
        item.update(isInline=True, contentId=content_id)
    response = graph.post(f"/messages/{draft}/attachments", json=item)
    assert response.status_code == 201, response.text


def without_bcc(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    return b"\r\n".join(line for line in head.split(b"\r\n")
                         if not line.lower().startswith(b"bcc:")) + sep + body


def test_mime_draft_keeps_the_message_and_adds_attachments_as_parts(
        m365sim: Simulator, graph: httpx.Client, uploader: httpx.Client) -> None:
    raw = mime_message()
    body = create_mime_draft(graph, raw)
    assert (body["isDraft"], body["subject"], body["internetMessageId"]) == (
        True, "Résumé ✓", "<mime-draft-1@app.example>")
    assert body["body"]["contentType"] == "html" and "HTML body é" in body["body"]["content"]
    assert body["toRecipients"] == [{"emailAddress": {"address": "fran@example.org",
                                                      "name": "Fran"}}]
    assert body["bccRecipients"] == [{"emailAddress": {"address": "audit@example.net"}}]
    assert body["from"] == {"emailAddress": {"address": ADMIN, "name": "Admin"}}
    assert body["hasAttachments"] is True
    draft = body["id"]
    big, chart = os.urandom(5 * MiB), os.urandom(3000)
    session = open_session(graph, draft, len(big), name="big.pdf", contentType="application/pdf")
    assert upload(uploader, session["uploadUrl"], big).status_code == 201
    attach(graph, draft, "chart.png", chart, "image/png", content_id="chart@app.example")
    assert graph.post(f"/messages/{draft}/send").status_code == 202

    [delivered] = m365sim.mailbox("fran@example.org").messages
    assert delivered.path == "graph-draft"
    assert delivered.recipients == ("fran@example.org", "dana@example.org", "audit@example.net")
    assert m365sim.mailbox("audit@example.net").messages == [delivered]
    msg, sent = delivered.parsed(), parse(raw)
    assert "Bcc" not in msg and b"audit@example.net" not in delivered.raw
    for name in ("From", "To", "Cc", "Subject", "Message-ID", "Date", *MIME_HEADERS):
        assert msg[name] == sent[name], name
    # The inline image joined the related part, the file the mixed one (at their ends).
    assert structure(msg) == ["multipart/mixed", "multipart/alternative", "text/plain",
                              "multipart/related", "text/html", "image/png", "image/png",
                              "text/csv", "application/pdf"]
    assert leaves(msg) == [*leaves(sent)[:3],
                           ("image/png", "chart.png", "<chart@app.example>", chart),
                           leaves(sent)[3], ("application/pdf", "big.pdf", None, big)]
    related = next(p for p in msg.walk() if p.get_content_type() == "multipart/related")
    assert parts(related)[2].get_content_disposition() == "inline"
    assert parts(msg)[-1].get_content_disposition() == "attachment"
    # Every byte the client sent (but Bcc) is there, in order: the parts went in just
    # before the close delimiters of the related and the mixed parts.
    expected = without_bcc(raw)
    related_boundary, mixed_boundary = related.get_boundary(), msg.get_boundary()
    assert related_boundary is not None and mixed_boundary is not None
    closes = [b"--" + b.encode() + b"--" for b in (related_boundary, mixed_boundary)]
    original, got = _split_at(expected, closes), _split_at(delivered.raw, closes)
    assert got[2] == original[2]
    for piece, added, boundary in zip(original, got, (related_boundary, mixed_boundary),
                                      strict=False):
        assert added.startswith(piece)
        assert added[len(piece):].startswith(b"--" + boundary.encode() + b"\r\n")


def _split_at(raw: bytes, markers: list[bytes]) -> list[bytes]:
    """``raw`` cut just before each marker, in turn."""
    out = []
    for marker in markers:
        at = raw.index(marker)
        out.append(raw[:at])
        raw = raw[at:]
    out.append(raw)
    return out


def test_mime_draft_without_a_mixed_root_is_wrapped_in_one(m365sim: Simulator,
                                                          graph: httpx.Client) -> None:
    raw = mime_message(image=False, file=False)
    draft = create_mime_draft(graph, raw)["id"]
    chart, data = os.urandom(2000), os.urandom(3000)
    attach(graph, draft, "chart.png", chart, "image/png", content_id="chart@app.example")
    attach(graph, draft, "data.bin", data, "application/octet-stream")
    assert graph.post(f"/messages/{draft}/send").status_code == 202
    [delivered] = m365sim.mailbox("fran@example.org").messages
    msg, sent = delivered.parsed(), parse(raw)
    # No related part to put the inline image in: it goes with the file, still inline.
    assert structure(msg) == ["multipart/mixed", "multipart/alternative", "text/plain",
                              "text/html", "image/png", "application/octet-stream"]
    assert leaves(msg) == [*leaves(sent), ("image/png", "chart.png", "<chart@app.example>", chart),
                           ("application/octet-stream", "data.bin", None, data)]
    alternative = parts(msg)[0]
    assert alternative.get_boundary() == sent.get_boundary()
    for name in ("Subject", "Message-ID", "Date", *MIME_HEADERS):
        assert msg[name] == sent[name], name
    assert msg["MIME-Version"] == "1.0"
    # The original body is the first part, byte for byte.
    body = without_bcc(raw).partition(b"\r\n\r\n")[2]
    assert body in delivered.raw


def test_single_part_mime_draft_gets_a_mixed_root(m365sim: Simulator, graph: httpx.Client) -> None:
    raw = (b"From: admin@contoso.com\r\nTo: fran@example.org\r\nSubject: plain\r\n"
           b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n"
           b"\r\nCaf\xe9\r\n")
    draft = create_mime_draft(graph, raw)["id"]
    attach(graph, draft, "a.txt", b"A", "text/plain")
    assert graph.post(f"/messages/{draft}/send").status_code == 202
    msg = m365sim.mailbox("fran@example.org").messages[0].parsed()
    text, file = parts(msg)
    assert msg.get_content_type() == "multipart/mixed"
    assert (text.get_content_type(), text.get_content_charset(), text["Content-Transfer-Encoding"],
            text.get_payload(decode=True)) == ("text/plain", "iso-8859-1", "8bit", b"Caf\xe9\r\n")
    assert (file.get_filename(), file.get_payload(decode=True)) == ("a.txt", b"A")


def test_mime_draft_without_attachments_is_sent_as_it_was_made(m365sim: Simulator,
                                                               graph: httpx.Client) -> None:
    raw = mime_message()
    draft = create_mime_draft(graph, raw)["id"]
    assert graph.post(f"/messages/{draft}/send").status_code == 202
    [delivered] = m365sim.mailbox("dana@example.org").messages
    assert delivered.raw == without_bcc(raw)


@pytest.mark.parametrize(("content", "key"), [
    (b"!!! not base64 !!!", "mime_invalid_base64"),
    (b"", "mime_invalid_base64"),
    (base64.b64encode(b"no header here, just text\r\n"), "mime_invalid_base64"),
    (base64.b64encode(b"Subject: x\r\n\r\n" + b"x" * (3 * MiB + 1)), "request_too_large"),
])
def test_mime_draft_payload_errors(m365sim: Simulator, graph: httpx.Client, content: bytes,
                                   key: str) -> None:
    response = graph.post("/messages", content=content, headers={"Content-Type": "text/plain"})
    assert_error(response, key)
    assert m365sim.requests()[-1].status == graph_error(key).status


def test_mime_draft_recipients_are_checked_at_send(graph: httpx.Client) -> None:
    draft = create_mime_draft(graph, b"From: admin@contoso.com\r\nSubject: nobody\r\n\r\nhi\r\n")
    assert_error(graph.post(f"/messages/{draft['id']}/send"), "invalid_recipients_none")


def test_mime_draft_over_max_send_size_is_refused_at_send(
        m365sim: Simulator, graph: httpx.Client, uploader: httpx.Client) -> None:
    m365sim.edit_scenario(lambda s: replace(s, limits=replace(s.limits, max_send_size=4 * MiB)))
    draft = create_mime_draft(graph, mime_message())["id"]
    session = open_session(graph, draft, 3 * MiB + 1)
    assert upload(uploader, session["uploadUrl"], os.urandom(3 * MiB + 1)).status_code == 201
    assert_error(graph.post(f"/messages/{draft}/send"), "message_size_exceeded")
    assert m365sim.mailbox("fran@example.org").messages == []


def test_delete_removes_the_draft_and_its_sessions(graph: httpx.Client,
                                                   uploader: httpx.Client) -> None:
    draft = create_mime_draft(graph, mime_message())["id"]
    url = open_session(graph, draft, 4 * MiB)["uploadUrl"]
    response = graph.delete(f"/messages/{draft}")
    assert response.status_code == 204
    assert_error(graph.post(f"/messages/{draft}/send"), "item_not_found")
    assert_error(put(uploader, url, b"x", 0, 4 * MiB), "item_not_found")
    assert_error(graph.delete(f"/messages/{draft}"), "item_not_found")


def test_inline_attachment_never_goes_into_an_attached_message(m365sim: Simulator,
                                                               graph: httpx.Client) -> None:
    forwarded = parse(mime_message(file=False))  # has a multipart/related of its own
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ADMIN, "fran@example.org", "Fwd"
    msg.set_content("See below.\n")
    msg.add_attachment(forwarded)
    draft = create_mime_draft(graph, msg.as_bytes(policy=SMTP))["id"]
    chart = os.urandom(100)
    attach(graph, draft, "chart.png", chart, "image/png", content_id="chart@app.example")
    assert graph.post(f"/messages/{draft}/send").status_code == 202
    got = m365sim.mailbox("fran@example.org").messages[0].parsed()
    text, attached, image = parts(got)
    assert (text.get_content_type(), attached.get_content_type()) == ("text/plain", "message/rfc822")
    assert (image["Content-ID"], image.get_payload(decode=True)) == ("<chart@app.example>", chart)
    inner = attached.get_payload(0)
    assert isinstance(inner, EmailMessage)
    assert leaves(inner) == leaves(forwarded)
