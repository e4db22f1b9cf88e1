"""Microsoft Graph sendMail: the MIME body by default, a draft with upload sessions past 4 MB.

Past the limit the draft is created from the MIME itself, minus the attachment parts
that do not fit, which are then added to it (``_draft.split_mime``); a message still
over the limit without them (a huge body, a signed or encrypted whole) goes as a JSON
draft instead (``_draft.graph_draft``).

Delegated connections send as the signed-in user at ``/me`` (Graph reads From from the
MIME, so a shared mailbox with Send As works the same way); app-only connections send at
``/users/{sender}``, the sender being the message's From address (or the envelope sender
when there is none). The message comes ready from ``relay365.outbound``: Graph takes its
recipients from To, Cc and Bcc, so envelope-only recipients are already in a Bcc. Tokens
come from the connection's TokenSource through ``GraphAuth``; every httpx failure and
every error answer becomes a relay365 error in ``_request``, the one place this module
talks to the network.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import ssl
import uuid
from collections.abc import AsyncGenerator, Generator
from typing import Any
from urllib.parse import quote

import httpx

from .. import metrics
from .._version import __version__
from ..auth import TokenSource
from ..config import ConnectionSettings
from ..errors import PermanentError, TransientError
from ._classify import Attempt, graph_failure, unreachable
from ._draft import FilePart, graph_draft, split_mime
from ._types import Envelope, SendOutcome

log = logging.getLogger("relay365.transport")

MAX_REQUEST_BYTES = 4 * 1024 * 1024  # Graph's request limit (reference §4.3)
# Room for the request line and headers (the bearer alone is 1-3 KB), so a body near
# the limit never becomes a 413.
REQUEST_MARGIN = 64 * 1024
# Attachments below this go in one POST; from it up, through an upload session, which
# refuses anything smaller (reference §4.3).
ATTACHMENT_POST_LIMIT = 3 * 1024 * 1024
# Upload ranges: at most 4 MB each, conventionally a multiple of 320 KiB.
UPLOAD_CHUNK = 12 * 320 * 1024
_SERVICE = "Microsoft Graph"


class GraphAuth(httpx.Auth):
    """Bearer tokens from a TokenSource: on a 401, one forced refresh and one retry."""

    def __init__(self, tokens: TokenSource) -> None:
        self._tokens = tokens

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("GraphAuth works with httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request
                              ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._tokens.acquire_token("graph")
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if response.status_code != 401:
            return
        # Expired early, revoked (CAE) or replaced: ``stale`` lets the source hand out a
        # token another request already refreshed instead of refreshing again.
        fresh = await self._tokens.acquire_token("graph", force_refresh=True, stale=token.value)
        request.headers["Authorization"] = f"Bearer {fresh.value}"
        yield request


def graph_client(settings: ConnectionSettings) -> httpx.AsyncClient:
    """The HTTP/1.1 keep-alive client a GraphTransport makes for itself.

    With ``ca_file`` the CA is trusted through an explicit SSLContext, which httpx uses
    as given: SSL_CERT_FILE and friends in the environment cannot replace it.  The
    environment still decides proxies (HTTPS_PROXY, NO_PROXY).
    """
    verify: ssl.SSLContext | bool = True
    if settings.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(settings.ca_file))
    return httpx.AsyncClient(
        verify=verify,
        timeout=httpx.Timeout(60.0, connect=15.0),
        limits=httpx.Limits(max_connections=16, max_keepalive_connections=8, keepalive_expiry=60.0),
        headers={"User-Agent": f"relay365/{__version__}"},
        follow_redirects=False,
    )


def _next_offset(response: httpx.Response) -> int | None:
    """Where the upload URL wants the next range to start (PascalCase or camelCase)."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    ranges = body.get("NextExpectedRanges") or body.get("nextExpectedRanges")
    if not isinstance(ranges, list) or not ranges:
        return None
    start = str(ranges[0]).split("-", 1)[0].strip()
    return int(start) if start.isdigit() else None


class GraphTransport:
    """Sends through Microsoft Graph: ``/me`` (delegated) or ``/users/{sender}`` (app-only)."""

    def __init__(self, settings: ConnectionSettings, tokens: TokenSource, *,
                 client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._tokens = tokens
        self._auth = GraphAuth(tokens)
        self._owns_client = client is None
        self._client = client if client is not None else graph_client(settings)
        self._base = settings.graph_url.rstrip("/")
        self.max_request_bytes = MAX_REQUEST_BYTES

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def send(self, envelope: Envelope) -> SendOutcome:
        """Send ``envelope``; TransientError / PermanentError when Graph does not take it."""
        raw = envelope.raw  # ready for Graph: relay365.outbound added the Bcc it needs
        sender = envelope.mailbox
        mailbox = "/me" if self.settings.mode == "delegated" else f"/users/{quote(sender, safe='@')}"
        attempt = Attempt(_SERVICE, sender=sender, size=len(raw))
        body = base64.b64encode(raw)
        if len(body) <= self.max_request_bytes - REQUEST_MARGIN:
            response = await self._request("POST", f"{mailbox}/sendMail", attempt.at("sendMail"),
                                           content=body, headers={"Content-Type": "text/plain"})
            return SendOutcome("graph", "mime", response.headers.get("request-id"), len(raw))
        if not self.settings.large_messages:
            raise PermanentError(
                f"the {len(raw)}-byte message from {sender} is over Graph's 4 MB request limit "
                f"as MIME, and large_messages is off for connection {self.settings.name}",
                entry="M365-TOO-LARGE")
        log.debug("message from %s is %d bytes: sending as a draft", sender, len(raw))
        return await self._send_draft(raw, mailbox, sender, attempt)

    # ---- draft + attachments + upload sessions ------------------------------------------
    async def _send_draft(self, raw: bytes, mailbox: str, sender: str, attempt: Attempt
                          ) -> SendOutcome:
        """Create a draft (from MIME when it can be), add the attachments, send it."""
        split = split_mime(raw, self.max_request_bytes - REQUEST_MARGIN)
        if split is not None:
            log.debug("draft from MIME for the message from %s, %d parts added afterwards",
                      sender, len(split.attachments))
            # Graph reads From (Send As, on behalf) and To/Cc/Bcc from the MIME, as sendMail.
            created = await self._create_draft(
                mailbox, attempt, content=base64.b64encode(split.mime),
                headers={"Content-Type": "text/plain"})
            attachments = split.attachments
        else:
            # What stays (the body, a signed or encrypted whole) is over the limit as MIME.
            log.info("the %d-byte message from %s is over Graph's request limit as MIME even "
                     "without its attachments: sending it as a JSON draft (its structure and "
                     "most headers are not kept)", len(raw), sender)
            draft = graph_draft(raw)
            message = dict(draft.message)
            if draft.from_ is not None and not await self._is_acting_mailbox(
                    draft.from_address, sender):
                message["from"] = draft.from_
            created = await self._create_draft(mailbox, attempt, json=message)
            attachments = draft.attachments
        draft_id = self._draft_id(created, attempt)
        messages = f"{mailbox}/messages/{quote(draft_id, safe='')}"
        try:
            for part in attachments:
                await self._attach(messages, part, attempt)
            sent = await self._request("POST", f"{messages}/send", attempt.at("send of the draft"))
        except Exception:
            await self._discard(messages, attempt)
            raise
        return SendOutcome("graph", "draft", sent.headers.get("request-id"), len(raw))

    async def _create_draft(self, mailbox: str, attempt: Attempt, **body: Any) -> httpx.Response:
        """POST the draft; a 403 there means the token lacks Mail.ReadWrite."""
        try:
            return await self._request("POST", f"{mailbox}/messages",
                                       attempt.at("draft creation"), **body)
        except PermanentError as exc:
            if exc.status == 403 and exc.entry.id in ("M365-NO-MAIL-SEND", "R365-PERMANENT"):
                raise PermanentError(exc.message, entry="M365-NEEDS-MAIL-READWRITE", code=exc.code,
                                     status=exc.status, request_id=exc.request_id) from exc
            raise

    async def _is_acting_mailbox(self, address: str | None, sender: str) -> bool:
        """Whether ``address`` is the mailbox Graph sends from anyway (no ``from`` needed)."""
        if address is None:
            return True
        if self.settings.mode == "app-only":
            return address.lower() == sender.lower()
        account = (await self._tokens.acquire_token("graph")).account
        return account is not None and address.lower() == account.lower()

    @staticmethod
    def _draft_id(response: httpx.Response, attempt: Attempt) -> str:
        try:
            draft_id = response.json().get("id")
        except (ValueError, AttributeError):
            draft_id = None
        if not isinstance(draft_id, str) or not draft_id:
            raise TransientError(f"{_SERVICE} created a draft without an id during the "
                                 f"{attempt.describe()}", status=response.status_code,
                                 request_id=response.headers.get("request-id"))
        return draft_id

    async def _attach(self, messages: str, part: FilePart, attempt: Attempt) -> None:
        if len(part.data) < ATTACHMENT_POST_LIMIT:
            item = {"@odata.type": "#microsoft.graph.fileAttachment",
                    **{k: v for k, v in part.graph_json().items() if k not in ("attachmentType", "size")},
                    "contentBytes": base64.b64encode(part.data).decode("ascii")}
            await self._request("POST", f"{messages}/attachments",
                                attempt.at(f"attachment of {part.name}"), json=item)
            return
        session = await self._request("POST", f"{messages}/attachments/createUploadSession",
                                      attempt.at(f"upload session for {part.name}"),
                                      json={"AttachmentItem": part.graph_json()})
        try:
            upload_url = str(session.json()["uploadUrl"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TransientError(f"{_SERVICE} opened an upload session without an uploadUrl "
                                 f"during the {attempt.describe()}", status=session.status_code,
                                 request_id=session.headers.get("request-id")) from exc
        await self._upload(upload_url, part, attempt.at(f"upload of {part.name}"))

    async def _upload(self, url: str, part: FilePart, attempt: Attempt) -> None:
        """PUT the bytes in ranges, without the bearer (the URL is pre-authenticated)."""
        size, offset, puts = len(part.data), 0, 0
        most = 2 * math.ceil(size / UPLOAD_CHUNK) + 4  # resends the server asks for, bounded
        while offset < size:
            puts += 1
            if puts > most:
                raise TransientError(f"the upload session made no progress at byte {offset} "
                                     f"during the {attempt.describe()}")
            chunk = part.data[offset:offset + UPLOAD_CHUNK]
            end = offset + len(chunk) - 1
            response = await self._request(
                "PUT", url, attempt, graph=False, content=chunk,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"bytes {offset}-{end}/{size}"})
            if response.status_code == 201:  # the last range: the attachment exists
                return
            expected = _next_offset(response)
            offset = end + 1 if expected is None else expected

    async def _discard(self, messages: str, attempt: Attempt) -> None:
        """Delete the unsent draft, best effort: the failure that got here is what matters."""
        with contextlib.suppress(Exception):
            await self._request("DELETE", messages, attempt.at("deletion of the unsent draft"))
            return
        log.warning("could not delete the unsent draft of the %s", attempt.describe())

    # ---- the edge ---------------------------------------------------------------------
    async def _request(self, method: str, url: str, attempt: Attempt, *, graph: bool = True,
                       content: bytes | None = None, json: Any = None,
                       headers: dict[str, str] | None = None) -> httpx.Response:
        """One request; any failure leaves as TransientError or PermanentError.

        ``graph=False`` is for the upload URL: absolute, and sent with no Authorization.
        Errors from the token source (AuthError) pass through as they are.
        """
        target = f"{self._base}{url}" if graph else url
        all_headers = {"client-request-id": str(uuid.uuid4()), **(headers or {})}
        try:
            with metrics.graph_timer(attempt.step) as timer:
                response = await self._client.request(
                    method, target, content=content, json=json, headers=all_headers,
                    auth=self._auth if graph else None)
                timer.status = response.status_code
        except httpx.RequestError as exc:
            raise unreachable(exc, attempt) from exc
        if response.is_success:
            return response
        raise graph_failure(response, attempt)
