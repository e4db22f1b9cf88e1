"""The HTTP API over a real socket: uvicorn serving api_routes in a loop thread, httpx as the client."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.fernet import Fernet
from starlette.applications import Starlette
from starlette.routing import Route

from relay365.auth import SecretBox
from relay365.config import Settings
from relay365.ingress import api_routes, hash_password, new_api_key, openapi_document
from relay365.policy import Policy
from relay365.store import AttemptResult, Store

from .test_ingress import FailingStore, LoopThread, relay_settings

OPS_KEY = new_api_key()
WORDPRESS_KEY = new_api_key()
API_KEYS = [{"name": "ops", "key_hash": hash_password(OPS_KEY)},
            {"name": "wordpress", "key_hash": hash_password(WORDPRESS_KEY), "senders": ["info@contoso.com"]}]
RAW = (b"From: Shop <info@contoso.com>\n"
       b"To: alice@example.com\n"
       b"Bcc: carol@example.com\n"
       b"Subject: Raw\n"
       b"\n"
       b"Sent as message/rfc822.\n")


class ApiThread(LoopThread):
    """The API on uvicorn, on a free port, with a SQLite outbox (or the store given)."""

    def __init__(self, settings: Settings, store: Any = None) -> None:
        super().__init__()
        self.settings = settings
        self.store = store or self.call(Store.open(settings.store_url, SecretBox(Fernet.generate_key())))
        app = Starlette(routes=api_routes(settings, self.store, Policy(settings)))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off",
                                                    log_level="warning"))
        self.task = self.call(self._start())
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    async def _start(self) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self.server.serve())
        while not self.server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        return task

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True

        async def stop() -> None:
            await self.task
            await self.store.close()

        self.call(stop())
        super().close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiThread]:
    thread = ApiThread(relay_settings(tmp_path, api_keys=API_KEYS))
    yield thread
    thread.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def problem(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    error: dict[str, str] = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and error["fix"]
    return error


def body_of(api: ApiThread, queue_id: str) -> bytes:
    return api.call(api.store.message_body(queue_id))


def test_a_json_message_is_queued_then_shown(api: ApiThread) -> None:
    pdf = b"%PDF-1.4 not really\n"
    response = api.client.post("/api/v1/messages", headers=bearer(OPS_KEY), json={
        "from": "Shop <info@contoso.com>", "to": ["Alice <alice@example.com>"], "cc": "bob@example.com",
        "bcc": ["carol@example.com"], "reply_to": "support@contoso.com", "subject": "Café order",
        "text": "Thank you.", "html": "<p>Thank you.</p>", "headers": {"X-Campaign": "spring"},
        "attachments": [{"filename": "invoice.pdf", "content_type": "application/pdf",
                         "content_base64": base64.b64encode(pdf).decode()}]})
    assert response.status_code == 202, response.text
    queue_id = response.json()["id"]
    assert response.json() == {"id": queue_id, "status": "queued"}

    shown = api.client.get(f"/api/v1/messages/{queue_id}", headers=bearer(OPS_KEY))
    assert shown.status_code == 200
    status = shown.json()
    assert {k: status[k] for k in ("id", "state", "connection", "sender", "recipients", "source", "client",
                                   "subject", "attempt_count", "attempts", "diagnosis")} == {
        "id": queue_id, "state": "queued", "connection": "contoso", "sender": "info@contoso.com",
        "recipients": ["alice@example.com", "bob@example.com", "carol@example.com"], "source": "http",
        "client": "ops [127.0.0.1]", "subject": "Café order", "attempt_count": 0, "attempts": [],
        "diagnosis": None}

    raw = body_of(api, queue_id)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert (message["From"], message["To"], message["Cc"], message["Reply-To"]) == (
        "Shop <info@contoso.com>", "Alice <alice@example.com>", "bob@example.com", "support@contoso.com")
    assert message["Bcc"] is None  # envelope only
    assert (message["Subject"], message["X-Campaign"]) == ("Café order", "spring")
    assert message["Date"] and message["Message-ID"]
    assert message.get_body(("plain",)).get_content().strip() == "Thank you."  # type: ignore[union-attr]
    assert message.get_body(("html",)).get_content().strip() == "<p>Thank you.</p>"  # type: ignore[union-attr]
    [attachment] = list(message.iter_attachments())
    assert (attachment.get_filename(), attachment.get_content()) == ("invoice.pdf", pdf)


def test_a_raw_message_is_queued_with_header_or_query_recipients(api: ApiThread) -> None:
    response = api.client.post("/api/v1/messages", headers={**bearer(WORDPRESS_KEY),
                                                           "Content-Type": "message/rfc822"}, content=RAW)
    assert response.status_code == 202, response.text
    first = api.call(api.store.get_message(response.json()["id"]))
    assert (first.sender, first.recipients, first.subject) == (
        "info@contoso.com", ("alice@example.com", "carol@example.com"), "Raw")
    raw = body_of(api, first.id)
    assert raw.startswith(b"From: Shop <info@contoso.com>\r\nTo: alice@example.com\r\nSubject: Raw\r\n")
    assert raw.endswith(b"\r\n\r\nSent as message/rfc822.\r\n") and b"Bcc" not in raw

    query = [("to", "dave@example.com, erin@example.com"), ("to", "frank@example.com")]
    response = api.client.post("/api/v1/messages", params=query, content=RAW,
                               headers={**bearer(WORDPRESS_KEY), "Content-Type": "message/rfc822"})
    assert response.status_code == 202, response.text
    second = api.call(api.store.get_message(response.json()["id"]))
    assert second.recipients == ("dave@example.com", "erin@example.com", "frank@example.com")


def test_a_local_program_may_send_without_a_key(api: ApiThread) -> None:
    message = {"from": "news@fabrikam.com", "to": "alice@example.com", "subject": "hi", "text": "hi"}
    response = api.client.post("/api/v1/messages", json=message)
    assert response.status_code == 202, response.text
    assert api.call(api.store.get_message(response.json()["id"])).client == "[127.0.0.1]"
    # A web page rebinding its own name to 127.0.0.1 sends its own Host: it needs a key.
    rebound = api.client.post("/api/v1/messages", json=message, headers={"Host": "evil.example:8025"})
    problem(rebound, 401, "unauthorized")


def test_a_missing_or_wrong_key_is_401(tmp_path: Path) -> None:
    thread = ApiThread(relay_settings(tmp_path, api_keys=API_KEYS, allowed_networks=["10.0.0.0/8"]))
    try:
        message = {"from": "info@contoso.com", "to": "alice@example.com", "text": "hi"}
        missing = thread.client.post("/api/v1/messages", json=message)
        problem(missing, 401, "unauthorized")
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        problem(thread.client.post("/api/v1/messages", json=message, headers=bearer("r365_wrong")),
                401, "unauthorized")
        problem(thread.client.post("/api/v1/messages", json=message, headers={"Authorization": OPS_KEY}),
                401, "unauthorized")
        problem(thread.client.get("/api/v1/messages/whatever"), 401, "unauthorized")
        accepted = thread.client.post("/api/v1/messages", json=message, headers=bearer(OPS_KEY))
        assert accepted.status_code == 202
    finally:
        thread.close()


def test_a_wrong_key_from_an_allowed_network_is_still_401(api: ApiThread) -> None:
    response = api.client.post("/api/v1/messages", headers=bearer("r365_wrong"),
                               json={"from": "info@contoso.com", "to": "alice@example.com", "text": "hi"})
    problem(response, 401, "unauthorized")


def test_a_key_may_send_only_as_its_senders(api: ApiThread) -> None:
    response = api.client.post("/api/v1/messages", headers=bearer(WORDPRESS_KEY),
                               json={"from": "admin@contoso.com", "to": "alice@example.com", "text": "hi"})
    error = problem(response, 403, "sender_not_permitted")
    assert error["message"] == "<admin@contoso.com>: wordpress may not send as this address"
    response = api.client.post("/api/v1/messages", headers=bearer(OPS_KEY),
                               json={"from": "ceo@evil.example", "to": "alice@example.com", "text": "hi"})
    problem(response, 403, "sender_not_owned")
    # No "from": the key's own sender.
    response = api.client.post("/api/v1/messages", headers=bearer(WORDPRESS_KEY),
                               json={"to": "alice@example.com", "text": "hi"})
    assert response.status_code == 202
    assert api.call(api.store.get_message(response.json()["id"])).sender == "info@contoso.com"


def test_bad_requests_are_explained(api: ApiThread) -> None:
    def post(**kwargs: Any) -> httpx.Response:
        return api.client.post("/api/v1/messages", **kwargs)

    def post_json(**fields: Any) -> httpx.Response:
        return post(headers=bearer(OPS_KEY), json={"from": "info@contoso.com", **fields})

    problem(post(headers=bearer(OPS_KEY), content=b"{not json"), 415, "unsupported_media_type")
    problem(post(headers={**bearer(OPS_KEY), "Content-Type": "application/json"}, content=b"{not json"),
            400, "invalid_request")
    problem(post_json(tooo="alice@example.com"), 400, "invalid_request")
    problem(post_json(text="nobody to send to"), 400, "no_recipients")
    problem(post_json(to="alice@example.com", subject="x\r\nBcc: eve@evil.example"), 400, "invalid_message")
    problem(post_json(to="alice@example.com", headers={"Bcc": "eve@evil.example"}), 400, "invalid_header")
    problem(post_json(to="not an address"), 400, "invalid_address")
    problem(post_json(to="alice@example.com", attachments=[{"filename": "x", "content_base64": "***"}]),
            400, "invalid_attachment")
    assert api.call(api.store.list_messages()) == []


def test_an_oversize_message_is_413(tmp_path: Path) -> None:
    thread = ApiThread(relay_settings(tmp_path, api_keys=API_KEYS, max_message_size=2000))
    try:
        big = RAW + b"x" * 2000
        response = thread.client.post("/api/v1/messages", content=big,
                                      headers={**bearer(OPS_KEY), "Content-Type": "message/rfc822"})
        problem(response, 413, "too_large")
        response = thread.client.post("/api/v1/messages", headers=bearer(OPS_KEY), json={
            "from": "info@contoso.com", "to": "alice@example.com", "text": "x" * 2500})
        problem(response, 413, "too_large")
    finally:
        thread.close()


def test_a_store_failure_is_503(tmp_path: Path) -> None:
    thread = ApiThread(relay_settings(tmp_path, api_keys=API_KEYS), store=FailingStore())
    try:
        message = {"from": "info@contoso.com", "to": "alice@example.com", "text": "hi"}
        response = thread.client.post("/api/v1/messages", headers=bearer(OPS_KEY), json=message)
        problem(response, 503, "queue_unavailable")
        assert response.headers["Retry-After"] == "30"
    finally:
        thread.close()


def test_a_failed_attempt_is_shown_with_its_diagnosis(api: ApiThread) -> None:
    response = api.client.post("/api/v1/messages", headers=bearer(WORDPRESS_KEY),
                               json={"from": "info@contoso.com", "to": "alice@example.com", "text": "hi"})
    queue_id = response.json()["id"]
    started = datetime.now(UTC)
    [claimed] = api.call(api.store.claim_due("test-worker", limit=1, lease_seconds=60))
    assert claimed.id == queue_id
    api.call(api.store.finish_attempt(queue_id, "test-worker", AttemptResult(
        "failed", "graph", code="ErrorSendAsDenied", entry_id="M365-SEND-AS-DENIED", request_id="req-1",
        detail="The user account which was used to submit this request does not have the right to send "
               "mail on behalf of the specified sending account."), started))
    status = api.client.get(f"/api/v1/messages/{queue_id}", headers=bearer(WORDPRESS_KEY)).json()
    assert (status["state"], status["attempt_count"]) == ("failed", 1)
    assert status["last_code"] == "ErrorSendAsDenied"
    assert status["diagnosis"]["id"] == "M365-SEND-AS-DENIED" and status["diagnosis"]["fix"]
    [attempt] = status["attempts"]
    assert (attempt["number"], attempt["outcome"], attempt["code"], attempt["request_id"]) == (
        1, "failed", "ErrorSendAsDenied", "req-1")
    assert attempt["diagnosis"] == status["diagnosis"]


def test_a_key_sees_only_its_senders_messages(api: ApiThread) -> None:
    response = api.client.post("/api/v1/messages", headers=bearer(OPS_KEY),
                               json={"from": "news@fabrikam.com", "to": "alice@example.com", "text": "hi"})
    queue_id = response.json()["id"]
    problem(api.client.get(f"/api/v1/messages/{queue_id}", headers=bearer(WORDPRESS_KEY)), 404, "not_found")
    problem(api.client.get("/api/v1/messages/nosuchid", headers=bearer(OPS_KEY)), 404, "not_found")
    assert api.client.get(f"/api/v1/messages/{queue_id}", headers=bearer(OPS_KEY)).status_code == 200


def test_the_openapi_document_matches_the_routes(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path)
    routes = [r for r in api_routes(settings, FailingStore(), Policy(settings)) if isinstance(r, Route)]
    document = openapi_document()
    assert {r.path: {m.lower() for m in (r.methods or ()) if m != "HEAD"} for r in routes} == {
        path: set(operations) for path, operations in document["paths"].items()}
    schemas = document["components"]["schemas"]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(document):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    assert set(schemas["MessageIn"]["properties"]) == {
        "from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "attachments", "headers"}
    assert set(schemas["Queued"]["properties"]) == {"id", "status"}


def test_the_openapi_document_is_served(api: ApiThread) -> None:
    response = api.client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.json() == openapi_document()
