"""relay365.transport: Graph (MIME, draft + upload sessions) and SMTP XOAUTH2.

Unit tests drive GraphTransport through ``httpx.MockTransport`` with a fake token
source; integration tests send through m365sim over HTTPS and SMTP, with tokens from
its identity endpoints through MSAL, and read what each recipient received.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
from collections.abc import Callable, Coroutine
from dataclasses import replace
from email import message_from_bytes
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP
from email.policy import default as default_policy
from email.utils import format_datetime, make_msgid
from typing import Any, TypeVar

import httpx
import msal
import pytest

from m365sim import Scenario, Simulator
from relay365 import transport as transport_module
from relay365.auth import AccessToken
from relay365.config import ConnectionSettings
from relay365.errors import NeedsSignIn, PermanentError, TransientError
from relay365.mime import read_head, with_from
from relay365.outbound import prepare
from relay365.transport import (
    Envelope,
    GraphTransport,
    SendOutcome,
    SmtpXoauth2Transport,
    transport_for,
)
from relay365.transport._classify import Attempt, parse_retry_after, smtp_failure
from relay365.transport._draft import graph_draft, split_mime
from relay365.transport._graph import MAX_REQUEST_BYTES, REQUEST_MARGIN
from tests.integration.m365sim.conftest import (
    SEED_APP_ONLY,
    SEED_APP_ONLY_SECRET,
    auth_code_token,
    confidential,
)

T = TypeVar("T")
ADMIN = "admin@contoso.com"
INFO = "info@contoso.com"
GRAPH_SCOPES = ["https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.Send.Shared",
                "https://graph.microsoft.com/Mail.ReadWrite"]
SMTP_SCOPES = ["https://outlook.office.com/SMTP.Send"]
MiB = 1024 * 1024


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# ---- messages ----------------------------------------------------------------------------
def simple_message(sender: str = ADMIN, to: str = "fran@example.org", subject: str = "Hello",
                   *, attachment: bytes | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(dt.datetime(2027, 5, 1, 12, 0, tzinfo=dt.UTC))
    msg["Message-ID"] = make_msgid(domain="app.example")
    msg.set_content("Plain body\n")
    msg.add_alternative("<p>HTML <b>body</b></p>\n", subtype="html")
    if attachment is not None:
        msg.add_attachment(attachment, "application", "octet-stream", filename="data.bin")
    return msg.as_bytes(policy=SMTP)


RICH_HEADERS = {
    "In-Reply-To": "<q1-2027@app.example>",
    "References": "<q0-2027@app.example> <q1-2027@app.example>",
    "List-Unsubscribe": "<https://app.example/unsubscribe?u=42>",
    "X-Mailer-Job": "quarterly-42",
}
RICH_STRUCTURE = ["multipart/mixed", "multipart/related", "multipart/alternative", "text/plain",
                  "text/html", "image/png", "application/pdf"]


def rich_message(sender: str, attachment: bytes, image: bytes) -> bytes:
    """mixed(related(alternative(text, html), inline image), attachment), UTF-8 subject."""
    msg = EmailMessage()
    msg["From"] = f"Contoso Info <{sender}>"
    msg["To"] = "Fran <fran@example.org>"
    msg["Cc"] = "dana@example.org"
    msg["Subject"] = "Rapport trimestriel — Grüße ✓"
    msg["Date"] = format_datetime(dt.datetime(2027, 5, 1, 12, 0, tzinfo=dt.UTC))
    msg["Message-ID"] = make_msgid(domain="app.example")
    for name, value in RICH_HEADERS.items():
        msg[name] = value
    alternative = MIMEPart()
    alternative.set_content("See the report — Grüße.\n")
    alternative.add_alternative('<p>See the report — Grüße.</p><img src="cid:logo1@app.example">\n',
                                subtype="html")
    logo = MIMEPart()
    logo.set_content(image, "image", "png", cid="<logo1@app.example>", filename="logo.png",
                     disposition="inline")
    msg.make_related()
    msg.attach(alternative)
    msg.attach(logo)
    msg.add_attachment(attachment, "application", "pdf", filename="report.pdf")
    raw = msg.as_bytes(policy=SMTP)
    assert [p.get_content_type() for p in parse(raw).walk()] == RICH_STRUCTURE
    return raw


def structure(msg: EmailMessage) -> list[str]:
    return [p.get_content_type() for p in msg.walk()]


def leaves(msg: EmailMessage) -> list[EmailMessage]:
    return [p for p in msg.walk() if not p.is_multipart()]


def shape(msg: EmailMessage) -> list[tuple[str, str | None, str | None, bytes]]:
    """(content type, filename, Content-ID, decoded bytes) of every leaf part."""
    out = []
    for part in leaves(msg):
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        cid = part.get("Content-ID")
        out.append((part.get_content_type(), part.get_filename(),
                    str(cid).strip("<> ") if cid else None, payload))
    return out


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=default_policy)
    assert isinstance(msg, EmailMessage)
    return msg


# ---- token sources -----------------------------------------------------------------------
class FakeTokens:
    """A TokenSource handing out numbered tokens; a forced refresh makes the next number."""

    def __init__(self, account: str | None = ADMIN, error: Exception | None = None) -> None:
        self.account = account
        self.error = error
        self.generation = 0
        self.calls: list[tuple[str, bool, str | None]] = []

    def value(self, resource: str = "graph") -> str:
        return f"{resource}-secret-token-{self.generation}"

    async def acquire_token(self, resource: str = "graph", *, force_refresh: bool = False,
                            stale: str | None = None) -> AccessToken:
        self.calls.append((resource, force_refresh, stale))
        if self.error is not None:
            raise self.error
        if force_refresh:
            self.generation += 1
        return AccessToken(self.value(resource), dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
                           self.account)

    @property
    def forced(self) -> list[tuple[str, bool, str | None]]:
        return [c for c in self.calls if c[1]]


class SimTokens:
    """A TokenSource on MSAL against m365sim: client credentials or authorization code."""

    def __init__(self, sim: Simulator, mode: str, graph_scopes: list[str] = GRAPH_SCOPES) -> None:
        self.sim = sim
        self.mode = mode
        self.graph_scopes = graph_scopes
        self.forced: list[tuple[str, str | None]] = []
        self.issued: list[str] = []
        self._app: msal.ClientApplication | None = None
        self._signed_in: set[str] = set()

    def _scopes(self, resource: str) -> list[str]:
        if self.mode == "app-only":
            return [{"graph": "https://graph.microsoft.com",
                     "smtp": "https://outlook.office365.com"}[resource] + "/.default"]
        return self.graph_scopes if resource == "graph" else SMTP_SCOPES

    def _acquire(self, resource: str, force_refresh: bool) -> dict[str, Any]:
        scopes = self._scopes(resource)
        if self.mode == "app-only":
            if self._app is None or force_refresh:  # a new cache: MSAL has no force here
                self._app = msal.ConfidentialClientApplication(
                    SEED_APP_ONLY, client_credential=SEED_APP_ONLY_SECRET,
                    authority=self.sim.authority(), instance_discovery=False,
                    verify=str(self.sim.ca_file))
            assert isinstance(self._app, msal.ConfidentialClientApplication)
            return dict(self._app.acquire_token_for_client(scopes))
        if self._app is None:
            self._app = confidential(self.sim)
        if resource not in self._signed_in:
            self._signed_in.add(resource)
            return auth_code_token(self.sim, scopes, app=self._app)
        account = self._app.get_accounts()[0]
        return dict(self._app.acquire_token_silent_with_error(
            scopes, account=account, force_refresh=force_refresh) or {})

    async def acquire_token(self, resource: str = "graph", *, force_refresh: bool = False,
                            stale: str | None = None) -> AccessToken:
        if force_refresh:
            self.forced.append((resource, stale))
        result = await asyncio.to_thread(self._acquire, resource, force_refresh)
        assert "access_token" in result, result
        self.issued.append(result["access_token"])
        claims = result.get("id_token_claims") or {}
        account = claims.get("preferred_username") if self.mode == "delegated" else None
        if self.mode == "delegated" and account is None and self._app is not None:
            account = self._app.get_accounts()[0]["username"]
        return AccessToken(result["access_token"],
                           dt.datetime.now(dt.UTC) + dt.timedelta(seconds=int(result["expires_in"])),
                           account)


# ---- settings ------------------------------------------------------------------------------
def settings(mode: str = "delegated", **changes: Any) -> ConnectionSettings:
    base: dict[str, Any] = {"name": "contoso", "tenant": "contoso.com",
                            "client_id": "11111111-aaaa-4bbb-8ccc-111111111111", "mode": mode,
                            "senders": [ADMIN, INFO], "graph_url": "https://graph.test/v1.0"}
    return ConnectionSettings(**{**base, **changes})


def sim_settings(sim: Simulator, mode: str = "delegated", **changes: Any) -> ConnectionSettings:
    return settings(mode, tenant=sim.tenant_id, graph_url=sim.graph_url, ca_file=sim.ca_file,
                    smtp_host="127.0.0.1", smtp_port=sim.smtp_port, authority_host=sim.base_url,
                    **changes)


Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


def mock_transport(handler: Handler, tokens: FakeTokens | None = None, mode: str = "delegated",
                   **changes: Any) -> tuple[GraphTransport, FakeTokens]:
    tokens = tokens or FakeTokens()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return GraphTransport(settings(mode, **changes), tokens, client=client), tokens


def ready(envelope: Envelope, **changes: Any) -> Envelope:
    """``envelope`` as relay365.outbound hands it to a Graph transport (Bcc added)."""
    return prepare(settings(**changes), envelope)


async def send_and_close(transport: GraphTransport | SmtpXoauth2Transport, envelope: Envelope) -> SendOutcome:
    """Send ``envelope`` made ready as relay365.outbound makes it for the transport's connection."""
    try:
        return await transport.send(prepare(transport.settings, envelope))
    finally:
        await transport.aclose()


def graph_error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": message,
                      "innerError": {"date": "2027-05-01T12:00:00", "request-id": "inner-id"}}}
    return httpx.Response(status, json=body, headers={"request-id": "req-1", **headers})


ENVELOPE = Envelope(ADMIN, ("fran@example.org",), simple_message())


# ==== the public surface ====================================================================
def test_public_names() -> None:
    assert sorted(transport_module.__all__) == sorted([
        "Envelope", "GraphTransport", "SendOutcome", "SmtpXoauth2Transport", "Transport",
        "graph_client", "transport_for"])


def test_transport_for_follows_the_setting() -> None:
    tokens = FakeTokens()
    graph = transport_for(settings(), tokens)
    smtp = transport_for(settings(transport="smtp-xoauth2"), tokens)
    assert isinstance(graph, GraphTransport)
    assert isinstance(smtp, SmtpXoauth2Transport)
    run(graph.aclose())
    run(smtp.aclose())


# ==== outbound.prepare: the Bcc fix on bytes ================================================
def test_outbound_bcc_keeps_a_message_whose_headers_name_everyone() -> None:
    raw = simple_message(to="Fran <FRAN@example.org>")
    assert ready(Envelope(ADMIN, ("fran@example.org",), raw)).raw is raw


def test_outbound_bcc_adds_envelope_only_recipients_as_bcc_and_keeps_the_body() -> None:
    raw = simple_message(attachment=os.urandom(2000))
    out = ready(Envelope(ADMIN, ("fran@example.org", "hidden@example.net", "audit@example.net",
                                 "Hidden@example.net"), raw)).raw
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == raw.partition(b"\r\n\r\n")[2]
    assert head.endswith(b"\r\nBcc: hidden@example.net,\r\n audit@example.net")
    assert parse(out)["Bcc"].addresses[1].addr_spec == "audit@example.net"


def test_outbound_bcc_extends_an_existing_bcc_field_with_the_messages_line_ends() -> None:
    raw = b"From: a@b.example\r\nTo: x@y.example\r\nBcc: q@r.example\r\nSubject: hi\r\n\r\nbody\r\n"
    out = ready(Envelope("a@b.example", ("x@y.example", "n@m.example"), raw)).raw
    assert out == (b"From: a@b.example\r\nTo: x@y.example\r\nBcc: q@r.example,\r\n n@m.example\r\n"
                   b"Subject: hi\r\n\r\nbody\r\n")
    empty = raw.replace(b"Bcc: q@r.example", b"Bcc:")
    assert b"\r\nBcc: n@m.example\r\n" in ready(Envelope("a", ("n@m.example",), empty)).raw


def test_without_bcc_drops_bcc_fields_only_from_the_header() -> None:
    raw = (b"From: a@b.example\r\nBcc: q@r.example,\r\n s@t.example\r\nTo: x@y.example\r\n"
           b"Resent-Bcc: z@y.example\r\n\r\nBcc: in the body stays\r\n")
    def for_smtp(raw: bytes) -> bytes:
        return prepare(settings(transport="smtp-xoauth2"), Envelope("a@b.example", ("x@y.example",), raw)).raw

    assert for_smtp(raw) == b"From: a@b.example\r\nTo: x@y.example\r\n\r\nBcc: in the body stays\r\n"
    plain = simple_message()
    assert for_smtp(plain) is plain


def test_outbound_bcc_refuses_an_address_that_would_break_the_header() -> None:
    with pytest.raises(PermanentError) as e:
        ready(Envelope(ADMIN, ("x@y.example\r\nX-Evil: 1",), simple_message()))
    assert e.value.entry.id == "M365-INVALID-RECIPIENT"


# ==== GraphTransport with httpx.MockTransport ================================================
def test_delegated_mime_send_posts_base64_to_me_sendmail() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, headers={"request-id": "abc-123"})

    transport, tokens = mock_transport(handler)
    envelope = Envelope(ADMIN, ("fran@example.org", "hidden@example.net"), simple_message())
    outcome = run(send_and_close(transport, envelope))
    assert outcome == SendOutcome("graph", "mime", "abc-123", len(ready(envelope).raw))
    (request,) = seen
    assert (request.method, str(request.url)) == ("POST", "https://graph.test/v1.0/me/sendMail")
    assert request.headers["content-type"] == "text/plain"
    assert request.headers["authorization"] == "Bearer graph-secret-token-0"
    assert base64.b64decode(request.content) == ready(envelope).raw
    assert tokens.calls == [("graph", False, None)]


def test_app_only_sends_at_users_from_address() -> None:
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(202)

    transport, _ = mock_transport(handler, mode="app-only")
    run(send_and_close(transport, Envelope("bounce@contoso.com", ("fran@example.org",),
                                           simple_message(sender=f"Info <{INFO}>"))))
    assert seen == ["/v1.0/users/info@contoso.com/sendMail"]


def test_401_then_success_forces_exactly_one_refresh_with_the_stale_token() -> None:
    authorizations: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        authorizations.append(request.headers["authorization"])
        if len(authorizations) == 1:
            return graph_error(401, "InvalidAuthenticationToken", "Access token has expired.")
        return httpx.Response(202)

    transport, tokens = mock_transport(handler)
    outcome = run(send_and_close(transport, ENVELOPE))
    assert outcome.path == "mime"
    assert authorizations == ["Bearer graph-secret-token-0", "Bearer graph-secret-token-1"]
    assert tokens.forced == [("graph", True, "graph-secret-token-0")]


def test_401_twice_is_one_refresh_then_a_transient_token_error() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return graph_error(401, "InvalidAuthenticationToken", "Access token validation failure.")

    transport, tokens = mock_transport(handler)
    with pytest.raises(TransientError) as e:
        run(send_and_close(transport, ENVELOPE))
    assert len(tokens.forced) == 1
    assert (e.value.entry.id, e.value.status, e.value.code) == (
        "M365-TOKEN-INVALID", 401, "InvalidAuthenticationToken")


@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), ("2.5", 2.5), (None, None)])
def test_429_is_transient_with_its_retry_after(header: str | None, expected: float | None) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Retry-After": header} if header else {}
        return graph_error(429, "ApplicationThrottled",
                           "Application is over its MailboxConcurrency limit.", **headers)

    transport, _ = mock_transport(handler)
    with pytest.raises(TransientError) as e:
        run(send_and_close(transport, ENVELOPE))
    err = e.value
    assert err.retry_after == expected
    assert (err.entry.id, err.code, err.status, err.request_id) == (
        "M365-THROTTLED", "ApplicationThrottled", 429, "req-1")


def test_retry_after_as_an_http_date() -> None:
    now = dt.datetime(2027, 5, 1, 12, 0, tzinfo=dt.UTC)
    later = format_datetime(now + dt.timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now.timestamp()) == 0
    assert parse_retry_after("soon") is None


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_transient(status: int) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text="<html>gateway</html>", headers={"Retry-After": "3"})

    transport, _ = mock_transport(handler)
    with pytest.raises(TransientError) as e:
        run(send_and_close(transport, ENVELOPE))
    assert (e.value.status, e.value.retry_after, e.value.entry.id) == (status, 3, "R365-TRANSIENT")


@pytest.mark.parametrize("error", [httpx.ConnectError("[Errno 111] Connection refused"),
                                   httpx.ReadTimeout("timed out"),
                                   httpx.RemoteProtocolError("Server disconnected")])
def test_network_errors_are_transient(error: httpx.RequestError) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise error

    transport, _ = mock_transport(handler)
    with pytest.raises(TransientError) as e:
        run(send_and_close(transport, ENVELOPE))
    assert e.value.__cause__ is error
    assert e.value.entry.id == "R365-TRANSIENT"
    assert ADMIN in e.value.message


@pytest.mark.parametrize(("status", "code", "message", "entry"), [
    (403, "ErrorSendAsDenied", "The user account which was used to submit this request does not "
     "have the right to send mail on behalf of the specified sending account., Cannot submit message.",
     "M365-SEND-AS-DENIED"),
    (403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", "M365-NO-MAIL-SEND"),
    (403, "ErrorAccessDenied", "Access to OData is disabled.", "M365-ACCESS-POLICY"),
    (404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted "
     "on-premise.", "M365-NO-MAILBOX"),
    (400, "ErrorInvalidRecipients", "At least one recipient isn't valid., Recipient \"bad\" isn't "
     "resolved.", "M365-INVALID-RECIPIENT"),
    (400, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.", "M365-TOO-LARGE"),
    (413, "RequestBodyTooLarge", "The maximum request length supported is 4MB.", "M365-TOO-LARGE"),
    (400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.",
     "M365-MIME-INVALID"),
    (404, "ErrorInvalidUser", "The requested user 'x' is invalid.", "M365-UNKNOWN-USER"),
    (400, "SomethingNew", "A new error.", "R365-PERMANENT"),
])
def test_refusals_are_permanent_with_their_catalogue_entry(status: int, code: str, message: str,
                                                           entry: str) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return graph_error(status, code, message)

    transport, tokens = mock_transport(handler)
    with pytest.raises(PermanentError) as e:
        run(send_and_close(transport, ENVELOPE))
    err = e.value
    assert (err.entry.id, err.code, err.status, err.request_id) == (entry, code, status, "req-1")
    assert ADMIN in err.message and f"{len(ENVELOPE.raw)}-byte" in err.message
    assert tokens.value() not in str(err) and tokens.value() not in err.explain()


def test_a_status_without_a_body_still_gets_a_diagnosis() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(413)

    transport, _ = mock_transport(handler)
    with pytest.raises(PermanentError) as e:
        run(send_and_close(transport, ENVELOPE))
    assert (e.value.entry.id, e.value.code, e.value.status) == ("M365-TOO-LARGE", None, 413)


def test_token_source_errors_pass_through_unchanged() -> None:
    refusal = NeedsSignIn("nobody signed in", entry="AAD-REFRESH-REVOKED", code="AADSTS50173")

    async def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request without a token")

    transport, _ = mock_transport(handler, FakeTokens(error=refusal))
    with pytest.raises(NeedsSignIn) as e:
        run(send_and_close(transport, ENVELOPE))
    assert e.value is refusal


def test_over_4mb_with_large_messages_off_is_permanent_and_sends_nothing() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    transport, _ = mock_transport(handler, large_messages=False)
    envelope = Envelope(ADMIN, ("fran@example.org",), simple_message(attachment=os.urandom(3 * MiB)))
    with pytest.raises(PermanentError) as e:
        run(send_and_close(transport, envelope))
    assert e.value.entry.id == "M365-TOO-LARGE"
    assert "large_messages" in e.value.message


class DraftServer:
    """Graph's draft endpoints, just enough for the transport's side of the dialogue."""

    def __init__(self, *, camel_case: bool = False, fail: dict[str, httpx.Response] | None = None
                 ) -> None:
        self.camel_case = camel_case
        self.fail = fail or {}
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.uploaded = bytearray()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        raw_path = request.url.raw_path.split(b"?")[0].decode()
        self.requests.append((request.method, raw_path, dict(request.headers), request.content))
        for suffix, response in self.fail.items():
            if path.endswith(suffix) and request.method != "DELETE":
                return response
        if request.method == "DELETE":
            return httpx.Response(204)
        if path.endswith("/messages"):
            return httpx.Response(201, json={"id": "AAMk/draft=="})
        if path.endswith("/createUploadSession"):
            return httpx.Response(201, json={"uploadUrl": "https://outlook.test/upload?authtoken=SECRET",
                                             "nextExpectedRanges": ["0-"]})
        if path.endswith("/attachments"):
            return httpx.Response(201, json={"id": "att"})
        if path == "/upload":
            start, _, total = request.headers["content-range"].removeprefix("bytes ").replace(
                "/", "-").split("-")
            assert int(start) == len(self.uploaded)
            self.uploaded += request.content
            if len(self.uploaded) == int(total):
                return httpx.Response(201)
            key = "nextExpectedRanges" if self.camel_case else "NextExpectedRanges"
            return httpx.Response(200, json={key: [f"{len(self.uploaded)}-"]})
        if path.endswith("/send"):
            return httpx.Response(202, headers={"request-id": "sent-1"})
        return httpx.Response(404)


def draft_mime(request: tuple[str, str, dict[str, str], bytes]) -> bytes:
    """The message of a draft created from MIME (and that it was one)."""
    method, path, headers, body = request
    assert (method, path.rsplit("/", 1)[1], headers["content-type"]) == (
        "POST", "messages", "text/plain")
    assert len(body) <= MAX_REQUEST_BYTES - REQUEST_MARGIN
    return base64.b64decode(body, validate=True)


def cut_out(whole: bytes, part: bytes) -> bytes:
    """The bytes ``whole`` has and ``part`` lacks, when ``part`` is ``whole`` minus one span."""
    start = next((i for i, (a, b) in enumerate(zip(whole, part, strict=False)) if a != b),
                 len(part))
    end = len(whole) - (len(part) - start)
    assert whole[:start] + whole[end:] == part
    return whole[start:end]


@pytest.mark.parametrize("camel_case", [False, True])
def test_large_message_goes_as_a_mime_draft_with_an_upload_session(camel_case: bool) -> None:
    server = DraftServer(camel_case=camel_case)
    transport, _ = mock_transport(server)
    big, image = os.urandom(9 * MiB + 17), os.urandom(5000)
    envelope = Envelope(INFO, ("fran@example.org", "hidden@example.net"),
                        rich_message(INFO, big, image))
    outcome = run(send_and_close(transport, envelope))
    assert (outcome.path, outcome.request_id) == ("draft", "sent-1")
    assert server.requests[0][1] == "/v1.0/me/messages"
    draft = draft_mime(server.requests[0])
    # The message as prepared (Bcc added), byte for byte, but for the attachment's part.
    prepared = ready(envelope).raw
    removed = cut_out(prepared, draft)
    assert b'filename="report.pdf"' in removed and b"image/png" not in removed
    assert len(removed) > len(big) * 4 // 3
    got, sent = parse(draft), parse(prepared)
    assert structure(got) == RICH_STRUCTURE[:-1]
    assert shape(got) == shape(sent)[:-1]
    assert got["Bcc"] == "hidden@example.net"
    assert all(got[name] == value for name, value in RICH_HEADERS.items())
    session = json.loads(server.requests[1][3])
    assert server.requests[1][1].endswith("/messages/AAMk%2Fdraft%3D%3D/attachments/createUploadSession")
    assert session == {"AttachmentItem": {"attachmentType": "file", "name": "report.pdf",
                                          "size": len(big), "contentType": "application/pdf",
                                          "isInline": False}}
    assert bytes(server.uploaded) == big
    puts = [r for r in server.requests if r[0] == "PUT"]
    assert len(puts) == 3
    assert all("authorization" not in headers for _, _, headers, _ in puts)
    assert server.requests[-1][:2] == ("POST", "/v1.0/me/messages/AAMk%2Fdraft%3D%3D/send")
    assert len(server.requests) == 1 + 1 + 3 + 1


@pytest.mark.parametrize("linesep", ["\r\n", "\n"])
def test_split_mime_removes_the_largest_parts_first_and_keeps_the_rest_in_place(linesep: str
                                                                                ) -> None:
    first, largest, small = os.urandom(int(1.5 * MiB)), os.urandom(int(2.5 * MiB)), b"tiny"
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ADMIN, "fran@example.org", "three files"
    msg.set_content("Body\n")
    msg.add_attachment(first, "application", "octet-stream", filename="first.bin")
    msg.add_attachment(largest, "application", "zip", filename="largest.zip")
    msg.add_attachment(small, "text", "plain", filename="small.txt")
    raw = msg.as_bytes(policy=SMTP.clone(linesep=linesep))
    split = split_mime(raw, MAX_REQUEST_BYTES - REQUEST_MARGIN)
    assert split is not None
    assert [(a.name, a.content_type, a.data, a.is_inline, a.content_id)
            for a in split.attachments] == [("largest.zip", "application/zip", largest, False, None)]
    assert b'filename="largest.zip"' in cut_out(raw, split.mime)
    assert [p[1] for p in shape(parse(split.mime))] == [None, "first.bin", "small.txt"]
    # A tighter budget takes the next largest too, and reports them in the message's order.
    tight = split_mime(raw, 100_000)
    assert tight is not None
    assert [a.name for a in tight.attachments] == ["first.bin", "largest.zip"]
    # Already small enough: nothing leaves.
    roomy = split_mime(raw, 10 * MiB)
    assert roomy is not None and roomy.attachments == () and roomy.mime == raw


def test_split_mime_keeps_an_inline_images_content_id() -> None:
    image = os.urandom(4 * MiB)
    raw = rich_message(INFO, b"%PDF small", image)
    split = split_mime(raw, MAX_REQUEST_BYTES - REQUEST_MARGIN)
    assert split is not None
    (logo,) = split.attachments
    assert (logo.name, logo.content_type, logo.data, logo.is_inline, logo.content_id) == (
        "logo.png", "image/png", image, True, "logo1@app.example")
    assert logo.graph_json() == {"attachmentType": "file", "name": "logo.png", "size": len(image),
                                 "contentType": "image/png", "isInline": True,
                                 "contentId": "logo1@app.example"}
    assert structure(parse(split.mime)) == [t for t in RICH_STRUCTURE if t != "image/png"]


def test_split_mime_never_takes_the_body_nor_a_signed_part() -> None:
    budget = MAX_REQUEST_BYTES - REQUEST_MARGIN
    long_html = simple_message().replace(b"<p>HTML <b>body</b></p>",
                                         b"<p>line</p>\r\n" * (350 * 1024))
    assert split_mime(long_html, budget) is None
    signed = (b"From: a@b.example\r\nTo: c@d.example\r\nSubject: signed\r\nMIME-Version: 1.0\r\n"
              b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
              b'micalg=sha-256; boundary="S"\r\n\r\n--S\r\n'
              + simple_message(attachment=os.urandom(4 * MiB)) + b"\r\n--S\r\n"
              b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n\r\nc2ln\r\n--S--\r\n")
    assert split_mime(signed, budget) is None


def test_a_body_over_the_limit_falls_back_to_a_json_draft() -> None:
    server = DraftServer()
    transport, _ = mock_transport(server)
    html = "<p>line</p>\n" * (280 * 1024)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ADMIN, "fran@example.org", "long"
    msg.set_content("short text\n")
    msg.add_alternative(html, subtype="html")
    raw = msg.as_bytes(policy=SMTP)
    assert split_mime(raw, MAX_REQUEST_BYTES - REQUEST_MARGIN) is None
    outcome = run(send_and_close(transport, Envelope(ADMIN, ("fran@example.org",), raw)))
    assert outcome.path == "draft"
    method, path, headers, body = server.requests[0]
    assert (method, path, headers["content-type"]) == ("POST", "/v1.0/me/messages",
                                                       "application/json")
    draft = json.loads(body)
    assert draft["body"]["contentType"] == "HTML"
    assert draft["body"]["content"].replace("\r\n", "\n") == html
    assert [r[1].rsplit("/", 1)[1] for r in server.requests] == ["messages", "send"]


def test_draft_creation_refused_403_needs_mail_readwrite() -> None:
    denied = graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    server = DraftServer(fail={"/messages": denied})
    transport, _ = mock_transport(server)
    envelope = Envelope(ADMIN, ("fran@example.org",), simple_message(attachment=os.urandom(4 * MiB)))
    with pytest.raises(PermanentError) as e:
        run(send_and_close(transport, envelope))
    assert (e.value.entry.id, e.value.status, e.value.code) == (
        "M365-NEEDS-MAIL-READWRITE", 403, "ErrorAccessDenied")


def test_failure_after_the_draft_exists_deletes_it_and_keeps_the_upload_url_secret() -> None:
    server = DraftServer(fail={"/upload": graph_error(503, "ServiceUnavailable", "busy",
                                                      **{"Retry-After": "4"})})
    transport, _ = mock_transport(server, mode="app-only")
    envelope = Envelope(ADMIN, ("fran@example.org",), simple_message(attachment=os.urandom(4 * MiB)))
    with pytest.raises(TransientError) as e:
        run(send_and_close(transport, envelope))
    assert e.value.retry_after == 4
    assert "SECRET" not in e.value.explain()
    assert server.requests[-1][:2] == ("DELETE", "/v1.0/users/admin@contoso.com/messages/AAMk%2Fdraft%3D%3D")


def test_graph_draft_keeps_html_inline_images_and_attachments() -> None:
    image, pdf = os.urandom(3000), os.urandom(5000)
    draft = graph_draft(rich_message(INFO, pdf, image))
    assert draft.message["body"]["contentType"] == "HTML"
    assert "cid:logo1@app.example" in draft.message["body"]["content"]
    assert draft.message["toRecipients"] == [{"emailAddress": {"address": "fran@example.org",
                                                               "name": "Fran"}}]
    assert [(a.name, a.content_type, a.data, a.is_inline, a.content_id) for a in draft.attachments] == [
        ("logo.png", "image/png", image, True, "logo1@app.example"),
        ("report.pdf", "application/pdf", pdf, False, None)]
    text_only = graph_draft(b"From: a@b.example\nTo: c@d.example\nSubject: s\n\nJust text\n")
    assert text_only.message["body"] == {"contentType": "Text", "content": "Just text\n"}
    assert text_only.attachments == ()


# ==== SMTP reply classification ==============================================================
@pytest.mark.parametrize(("code", "message", "cls", "entry", "reply"), [
    (550, "5.7.60 SMTP; Client does not have permissions to send as this sender", PermanentError,
     "M365-SEND-AS-DENIED", "550 5.7.60"),
    (554, "5.2.252 SendAsDenied; admin@contoso.com not allowed to send as info@contoso.com; "
     "STOREDRV.Submission.Exception:SendAsDeniedException", PermanentError, "M365-SEND-AS-DENIED",
     "554 5.2.252"),
    (535, "5.7.139 Authentication unsuccessful, user is locked by your organization's security "
     "defaults policy. Contact your administrator.", PermanentError, "SMTP-SECURITY-DEFAULTS",
     "535 5.7.139"),
    (535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
     PermanentError, "SMTP-AUTH-DISABLED", "535 5.7.139"),
    (535, "5.7.3 Authentication unsuccessful [HOST]", PermanentError, "SMTP-AUTH-FAILED", "535 5.7.3"),
    (552, "5.3.4 Message size exceeds fixed maximum message size", PermanentError, "M365-TOO-LARGE",
     "552 5.3.4"),
    (432, "4.3.2 Concurrent connections limit exceeded.", TransientError, "SMTP-CONCURRENCY", "432 4.3.2"),
    (421, "4.3.2 Message submission rate for this client has exceeded the configured limit",
     TransientError, "M365-THROTTLED", "421 4.3.2"),
    (554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed",
     TransientError, "SMTP-QUOTA", "554 5.2.0"),
])
def test_smtp_replies_are_classified(code: int, message: str, cls: type[Exception], entry: str,
                                     reply: str) -> None:
    err = smtp_failure(code, message, Attempt("Exchange Online SMTP", ADMIN, 1234))
    assert type(err) is cls
    assert (err.entry.id, err.code) == (entry, reply)
    assert ADMIN in err.message and "1234-byte" in err.message


# ==== integration: m365sim over HTTPS and SMTP ===============================================
def sim_send(sim: Simulator, envelope: Envelope, mode: str = "delegated",
             tokens: SimTokens | None = None, **changes: Any) -> SendOutcome:
    tokens = tokens or SimTokens(sim, mode)
    return run(send_and_close(transport_for(sim_settings(sim, mode, **changes), tokens), envelope))


def test_delegated_mime_send_from_admin_arrives_exactly_as_built(m365sim: Simulator) -> None:
    raw = simple_message(attachment=os.urandom(100_000))
    outcome = sim_send(m365sim, Envelope(ADMIN, ("fran@example.org",), raw))
    assert (outcome.transport, outcome.path, outcome.size) == ("graph", "mime", len(raw))
    assert outcome.request_id
    (delivered,) = m365sim.mailbox("fran@example.org").messages
    assert (delivered.path, delivered.identity, delivered.sender) == ("graph-mime", ADMIN, ADMIN)
    assert delivered.raw == raw
    assert shape(delivered.parsed()) == shape(parse(raw))


def test_delegated_send_as_the_shared_mailbox(m365sim: Simulator) -> None:
    raw = simple_message(sender=f"Contoso Info <{INFO}>")
    sim_send(m365sim, Envelope(INFO, ("fran@example.org",), raw))
    (delivered,) = m365sim.mailbox("fran@example.org").messages
    assert (delivered.sender, delivered.identity) == (INFO, ADMIN)
    assert delivered.raw == raw


def test_app_only_send_at_users_sender(m365sim: Simulator) -> None:
    raw = simple_message()
    outcome = sim_send(m365sim, Envelope(ADMIN, ("fran@example.org",), raw), mode="app-only")
    assert outcome.path == "mime"
    (delivered,) = m365sim.mailbox("fran@example.org").messages
    assert delivered.identity == f"app:{SEED_APP_ONLY}"
    assert delivered.raw == raw
    assert any(r.path == f"/v1.0/users/{ADMIN}/sendMail" and r.status == 202
               for r in m365sim.requests())


def test_envelope_only_recipient_gets_it_and_nobody_sees_bcc(m365sim: Simulator) -> None:
    raw = simple_message(to="fran@example.org")
    sim_send(m365sim, Envelope(ADMIN, ("fran@example.org", "hidden@example.net"), raw))
    (to_copy,) = m365sim.mailbox("fran@example.org").messages
    (bcc_copy,) = m365sim.mailbox("hidden@example.net").messages
    for copy in (to_copy, bcc_copy):
        assert "Bcc" not in copy.parsed()
        assert b"hidden@example.net" not in copy.raw
        assert copy.raw == raw
    assert "hidden@example.net" in bcc_copy.recipients


def test_large_rich_message_arrives_with_its_structure_and_bytes(m365sim: Simulator) -> None:
    big, image = os.urandom(12 * MiB), os.urandom(20_000)
    raw = rich_message(INFO, big, image)
    tokens = SimTokens(m365sim, "delegated")
    envelope = Envelope(INFO, ("fran@example.org", "dana@example.org", "audit@example.net"), raw)
    outcome = sim_send(m365sim, envelope, tokens=tokens)
    assert (outcome.path, outcome.size) == ("draft", len(ready(envelope).raw))
    for address in ("fran@example.org", "dana@example.org", "audit@example.net"):
        (delivered,) = m365sim.mailbox(address).messages
        assert delivered.path == "graph-draft"
        assert (delivered.sender, delivered.identity) == (INFO, ADMIN)
        assert "Bcc" not in delivered.parsed()
        assert b"audit@example.net" not in delivered.raw
    got, sent = delivered.parsed(), parse(raw)
    # The same tree: mixed(related(alternative(text, html), inline image), attachment) ...
    assert structure(got) == structure(sent) == RICH_STRUCTURE
    # ... and every leaf the same: type, filename, Content-ID and decoded bytes.
    assert shape(got) == shape(sent)
    assert [p[3] for p in shape(got)][2:] == [image, big]
    for name in ("Subject", "Message-ID", "Date", "From", "To", "Cc", *RICH_HEADERS):
        assert got[name] == sent[name], name
    assert got["Subject"] == "Rapport trimestriel — Grüße ✓"
    # Everything the relay did not take out arrives as the application wrote it, byte
    # for byte: the text, HTML and image parts with their own headers and boundaries.
    boundary = sent.get_boundary()
    assert boundary is not None
    body_start = raw.index(b"\r\n\r\n")
    attachment_part = raw.rindex(b"--" + boundary.encode() + b"\r\n")
    assert raw[body_start:attachment_part] in delivered.raw
    requests = m365sim.requests()
    (created,) = [r for r in requests if r.method == "POST" and r.path.endswith("/me/messages")]
    assert created.status == 201
    puts = [r for r in requests if r.method == "PUT"]
    assert len(puts) == 4 and all(r.status in (200, 201) for r in puts)
    assert not any(r.path.endswith("/attachments") for r in requests)
    assert tokens.forced == []


def test_large_inline_image_goes_back_into_its_related_part(m365sim: Simulator) -> None:
    image, pdf = os.urandom(5 * MiB), os.urandom(200_000)
    raw = rich_message(INFO, pdf, image)
    envelope = Envelope(INFO, ("fran@example.org", "dana@example.org"), raw)
    assert sim_send(m365sim, envelope).path == "draft"
    (delivered,) = m365sim.mailbox("fran@example.org").messages
    got, sent = delivered.parsed(), parse(raw)
    assert structure(got) == RICH_STRUCTURE
    assert shape(got) == shape(sent)
    related = next(p for p in got.walk() if p.get_content_type() == "multipart/related")
    image_part = list(related.iter_parts())[1]
    assert (image_part["Content-ID"], image_part.get_content_disposition()) == (
        "<logo1@app.example>", "inline")


def test_attachments_under_three_megabytes_are_posted_to_the_mime_draft(m365sim: Simulator
                                                                         ) -> None:
    one, two = os.urandom(int(2.5 * MiB)), os.urandom(int(2.5 * MiB))
    msg = parse(simple_message(attachment=one))
    msg.add_attachment(two, "application", "zip", filename="two.zip")
    raw = msg.as_bytes(policy=SMTP)
    assert sim_send(m365sim, Envelope(ADMIN, ("fran@example.org",), raw)).path == "draft"
    (delivered,) = m365sim.mailbox("fran@example.org").messages
    assert structure(delivered.parsed()) == structure(msg)
    assert shape(delivered.parsed()) == shape(msg)
    posts = [r for r in m365sim.requests() if r.path.endswith("/attachments")]
    assert [r.status for r in posts] == [201, 201]
    assert not any(r.method == "PUT" for r in m365sim.requests())


def test_large_message_without_mail_readwrite(m365sim: Simulator) -> None:
    def without_read_write(scenario: Scenario) -> Scenario:
        apps = tuple(replace(a, delegated_permissions=tuple(
            p for p in a.delegated_permissions if p != "Mail.ReadWrite")) for a in scenario.apps)
        return replace(scenario, apps=apps)

    m365sim.edit_scenario(without_read_write)
    tokens = SimTokens(m365sim, "delegated", graph_scopes=GRAPH_SCOPES[:2])
    raw = simple_message(attachment=os.urandom(4 * MiB))
    with pytest.raises(PermanentError) as e:
        sim_send(m365sim, Envelope(ADMIN, ("fran@example.org",), raw), tokens=tokens)
    assert (e.value.entry.id, e.value.status) == ("M365-NEEDS-MAIL-READWRITE", 403)


@pytest.mark.m365sim("no-send-as")
def test_no_send_as_is_permanent(m365sim: Simulator) -> None:
    tokens = SimTokens(m365sim, "delegated")
    with pytest.raises(PermanentError) as e:
        sim_send(m365sim, Envelope(INFO, ("fran@example.org",), simple_message(sender=INFO)),
                 tokens=tokens)
    err = e.value
    assert (err.entry.id, err.code, err.status) == ("M365-SEND-AS-DENIED", "ErrorSendAsDenied", 403)
    assert err.request_id
    assert INFO in err.message
    assert all(token not in err.explain() for token in tokens.issued)
    assert m365sim.mailbox("fran@example.org").messages == []


@pytest.mark.m365sim("no-mailbox")
def test_no_mailbox_is_permanent(m365sim: Simulator) -> None:
    with pytest.raises(PermanentError) as e:
        sim_send(m365sim, ENVELOPE)
    assert (e.value.entry.id, e.value.code, e.value.status) == (
        "M365-NO-MAILBOX", "MailboxNotEnabledForRESTAPI", 404)


@pytest.mark.parametrize("mode", ["delegated", "app-only"])
def test_expired_token_is_refreshed_once_and_the_mail_delivered(m365sim: Simulator, mode: str) -> None:
    tokens = SimTokens(m365sim, mode)
    sim_send(m365sim, ENVELOPE, mode, tokens=tokens)  # signs in, MSAL caches the token
    m365sim.advance(6000)  # past every access token's lifetime; MSAL's clock does not know
    sim_send(m365sim, ENVELOPE, mode, tokens=tokens)
    assert tokens.forced == [("graph", tokens.issued[1])]
    assert len(m365sim.mailbox("fran@example.org").messages) == 2
    assert [r.status for r in m365sim.requests() if r.path.endswith("/sendMail")] == [202, 401, 202]


def test_503_with_retry_after_is_transient(m365sim: Simulator) -> None:
    m365sim.fault("/v1.0/me/sendMail", status=503, retry_after=2)
    with pytest.raises(TransientError) as e:
        sim_send(m365sim, ENVELOPE)
    assert (e.value.retry_after, e.value.status, e.value.code) == (2, 503, "ServiceUnavailable")
    sim_send(m365sim, ENVELOPE)  # the fault was for one request
    assert len(m365sim.mailbox("fran@example.org").messages) == 1


def test_connection_reset_is_transient(m365sim: Simulator) -> None:
    m365sim.fault("/v1.0/me/sendMail", "reset")
    with pytest.raises(TransientError) as e:
        sim_send(m365sim, ENVELOPE)
    assert (e.value.entry.id, e.value.status) == ("R365-TRANSIENT", None)
    assert m365sim.mailbox("fran@example.org").messages == []


# ---- SMTP XOAUTH2 ------------------------------------------------------------------------
def test_smtp_xoauth2_delegated_send(m365sim: Simulator) -> None:
    raw = simple_message(attachment=os.urandom(50_000))
    outcome = sim_send(m365sim, Envelope(ADMIN, ("fran@example.org", "hidden@example.net"), raw),
                       transport="smtp-xoauth2")
    assert (outcome.transport, outcome.path, outcome.size) == ("smtp-xoauth2", "smtp", len(raw))
    assert outcome.request_id
    (delivered,) = m365sim.mailbox("fran@example.org").messages
    assert (delivered.path, delivered.identity) == ("smtp", ADMIN)
    assert delivered.raw == raw
    assert len(m365sim.mailbox("hidden@example.net").messages) == 1


def test_smtp_xoauth2_from_the_shared_mailbox(m365sim: Simulator) -> None:
    sim_send(m365sim, Envelope(INFO, ("fran@example.org",), simple_message(sender=INFO)),
             transport="smtp-xoauth2")
    (delivered,) = m365sim.mailbox("fran@example.org").messages
    assert (delivered.sender, delivered.identity) == (INFO, ADMIN)


def test_smtp_xoauth2_app_only_send(m365sim: Simulator) -> None:
    outcome = sim_send(m365sim, ENVELOPE, "app-only", transport="smtp-xoauth2")
    assert outcome.path == "smtp"
    (delivered,) = m365sim.mailbox("fran@example.org").messages
    assert (delivered.sender, delivered.identity) == (ADMIN, f"app:{SEED_APP_ONLY}")


@pytest.mark.m365sim("no-send-as")
def test_smtp_no_send_as_is_permanent(m365sim: Simulator) -> None:
    with pytest.raises(PermanentError) as e:
        sim_send(m365sim, Envelope(INFO, ("fran@example.org",), simple_message(sender=INFO)),
                 transport="smtp-xoauth2")
    assert (e.value.entry.id, e.value.code) == ("M365-SEND-AS-DENIED", "550 5.7.60")


def test_smtp_refused_token_is_refreshed_once(m365sim: Simulator) -> None:
    tokens = SimTokens(m365sim, "delegated")
    sim_send(m365sim, ENVELOPE, tokens=tokens, transport="smtp-xoauth2")
    m365sim.advance(6000)
    sim_send(m365sim, ENVELOPE, tokens=tokens, transport="smtp-xoauth2")
    assert tokens.forced == [("smtp", tokens.issued[1])]
    assert len(m365sim.mailbox("fran@example.org").messages) == 2


def test_with_from_replaces_from_and_sender_only() -> None:
    raw = (b"From: WordPress <wordpress@shop.example>\r\nSender: x@shop.example\r\nTo: a@example.org\r\n"
           b"Subject: s\r\n\r\nbody\r\nFrom: not a header\r\n")
    out = with_from(raw, read_head(raw), "info@contoso.com", "Contoso")
    assert out.startswith(b"From: Contoso <info@contoso.com>\r\n")
    assert b"Sender:" not in out.split(b"\r\n\r\n")[0]
    assert out.endswith(b"\r\n\r\nbody\r\nFrom: not a header\r\n")
    assert read_head(out).from_address == "info@contoso.com"
