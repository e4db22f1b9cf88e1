"""Drafts, attachments and Outlook upload sessions, over HTTPS as Graph clients use them."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import replace
from email.message import EmailMessage
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


def test_drafts_need_mail_read_write(m365sim: Simulator) -> None:
    app = m365sim.scenario.app(SEED_APP_ONLY)
    assert app is not None
    m365sim.edit_scenario(lambda s: s.replace_app(replace(app, application_permissions=("Mail.Send",))))
    token = app_only_token(m365sim)
    with https(m365sim, base_url=m365sim.graph_url) as client:
        response = client.post(f"/users/{ADMIN}/messages", json=DRAFT,
                               headers={"Authorization": f"Bearer {token}"})
    assert_error(response, "access_denied")
