"""Bytes coming in: Graph's 4 MB request cap, and Outlook upload sessions.

Attachments of 3 MB to 150 MB go to a draft through an upload session (reference
§4.3): Graph's createUploadSession answers with an ``uploadUrl`` on Outlook's REST
API, pre-authenticated by an ``authtoken`` query parameter; the client PUTs the bytes
there in ranges of at most 4 MB and must not send an Authorization header.  The
``authtoken`` is a JWT, as Outlook's is, signed by the emulator's key and bound to
one session, so it needs no storage of its own.

Upload session lifetimes run on the emulator clock, so ``advance()`` expires them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ._mime import Rejection
from ._responses import graph_error_response, graph_headers, json_response
from ._scenario import Limits
from ._state import Draft, SimState, UploadSession
from ._tokens import TokenInvalid

MIN_SESSION_SIZE = 3 * 1024 * 1024  # smaller attachments go in one POST (reference §4.3)
# Not documented: Outlook's sessions are short-lived and each fragment extends them.
SESSION_LIFETIME = 15 * 60
_AUTHTOKEN_LIFETIME = 24 * 3600  # the session's own expiry is what counts
_AUTHTOKEN_AUDIENCE = "https://outlook.office.com/api/v2.0/AttachmentSessions"
_SESSION_PATH = "/api/v2.0/Users('{mailbox}')/Messages('{draft}')/AttachmentSessions('{session}')"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_ODATA_SESSION = ("https://outlook.office.com/api/v2.0/$metadata"
                  "#Microsoft.OutlookServices.UploadSession")


# ---- shared with Graph -------------------------------------------------------------------
def rejection_response(state: SimState, request: Request, rejection: Rejection) -> Response:
    """Render a Rejection as Graph does, and note its key in the request log."""
    request.state.detail = rejection.key
    return graph_error_response(
        rejection.key, request, retry_after=rejection.retry_after,
        fractional_retry_after=state.scenario.limits.fractional_retry_after, **rejection.fmt,
    )


def too_large(limits: Limits) -> Rejection:
    # Microsoft has answered both 413 RequestBodyTooLarge and 400 BadRequest (§4.3).
    return Rejection("request_too_large" if limits.oversize_status == 413 else "request_too_large_400")


def check_declared_length(request: Request, limits: Limits) -> None:
    """Refuse an oversize body from its Content-Length, before reading a byte of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise too_large(limits)


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request body, refused past ``limits.max_request_bytes`` even when chunked."""
    check_declared_length(request, limits)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_request_bytes:
            raise too_large(limits)
        chunks.append(chunk)
    return b"".join(chunks)


def iso(epoch: float, digits: int = 0) -> str:
    """ISO 8601 in UTC with a Z; Outlook writes 7 fractional digits."""
    stamp = datetime.fromtimestamp(epoch, UTC)
    if digits == 0:
        return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f").ljust(20 + digits, "0")[:20 + digits] + "Z"


# ---- opening a session (Graph's createUploadSession) ---------------------------------------
def open_session(state: SimState, draft: Draft, mailbox_id: str, body: Any, base_url: str
                 ) -> dict[str, Any]:
    """Check an ``AttachmentItem``, open its session; the 201 body Graph answers with."""
    item = body.get("AttachmentItem") if isinstance(body, dict) else None
    if not isinstance(item, dict):
        raise Rejection("invalid_property", name="AttachmentItem")
    if str(item.get("attachmentType", "file")).lower() != "file":
        raise Rejection("attachment_unsupported", type=item.get("attachmentType"))
    name, size = item.get("name"), item.get("size")
    if not isinstance(name, str) or not name or not isinstance(size, int) or isinstance(size, bool):
        raise Rejection("invalid_property", name="name" if not isinstance(name, str) else "size")
    if size < MIN_SESSION_SIZE:
        raise Rejection("attachment_too_small")
    if size > state.scenario.limits.upload_session_max:
        raise Rejection("upload_too_large")
    _forget_expired(state)
    now = state.clock.now()
    session = UploadSession(
        id=state.new_opaque("AAMkAG", 24), draft_id=draft.id, name=name, size=size,
        content_type=str(item.get("contentType") or "application/octet-stream"),
        is_inline=bool(item.get("isInline", False)), content_id=item.get("contentId") or None,
        expires=now + SESSION_LIFETIME,
    )
    state.upload_sessions[session.id] = session
    token = state.tokens.sign({
        "aud": _AUTHTOKEN_AUDIENCE, "iat": int(now), "exp": int(now) + _AUTHTOKEN_LIFETIME,
        "sid": session.id, "mbx": mailbox_id, "did": draft.id, "ver": "Exchange.Callback.V1",
    })
    path = _SESSION_PATH.format(mailbox=mailbox_id, draft=draft.id, session=session.id)
    return {
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
        "uploadUrl": f"{base_url.rstrip('/')}{path}?authtoken={token}",
        "expirationDateTime": iso(session.expires, 7),
        "nextExpectedRanges": ["0-"],
    }


def _forget_expired(state: SimState) -> None:
    now = state.clock.now()
    for sid in [s.id for s in state.upload_sessions.values() if s.expires <= now]:
        del state.upload_sessions[sid]


# ---- the upload URL ------------------------------------------------------------------------
class UploadApi:
    """PUT and DELETE on an upload URL."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def routes(self) -> list[BaseRoute]:
        return [Route(_SESSION_PATH, self.handle, methods=["PUT", "DELETE"])]

    async def handle(self, request: Request) -> Response:
        try:
            if request.method == "DELETE":
                return self._cancel(request)
            return await self._put(request)
        except Rejection as rejection:
            return rejection_response(self.state, request, rejection)

    def _session(self, request: Request) -> UploadSession:
        """The session the URL names: no bearer, a valid authtoken, not expired."""
        # The docs forbid the header; sending one is a client bug worth surfacing.
        if "authorization" in request.headers:
            raise Rejection("upload_bearer_rejected")
        params = request.path_params
        try:
            claims = self.state.tokens.verify_access_token(
                request.query_params.get("authtoken", ""), (_AUTHTOKEN_AUDIENCE,)).raw
        except TokenInvalid as exc:
            raise Rejection("upload_authtoken_invalid") from exc
        if (claims.get("sid"), claims.get("did"), claims.get("mbx")) != \
                (params["session"], params["draft"], params["mailbox"]):
            raise Rejection("upload_authtoken_invalid")
        request.state.identity = f"upload:{params['mailbox']}"
        session = self.state.upload_sessions.get(params["session"])
        if session is None or session.expires <= self.state.clock.now():
            self.state.upload_sessions.pop(params["session"], None)
            raise Rejection("item_not_found")
        return session

    def _cancel(self, request: Request) -> Response:
        session = self._session(request)
        del self.state.upload_sessions[session.id]
        return Response(status_code=204, headers=graph_headers(request))

    async def _put(self, request: Request) -> Response:
        session = self._session(request)
        limits = self.state.scenario.limits
        check_declared_length(request, limits)
        start, end = self._range(request, session)
        chunk = await read_body(request, limits)
        # Another PUT may have landed while this body was read.
        if start != len(session.data) or len(chunk) != end - start + 1:
            raise Rejection("upload_bad_range", expected=len(session.data))
        session.data += chunk
        if len(session.data) < session.size:
            session.expires = self.state.clock.now() + SESSION_LIFETIME
            return json_response({
                "@odata.context": _ODATA_SESSION,
                "ExpirationDateTime": iso(session.expires, 7),
                "NextExpectedRanges": [str(len(session.data))],
            }, 200, graph_headers(request))
        return self._complete(request, session)

    @staticmethod
    def _range(request: Request, session: UploadSession) -> tuple[int, int]:
        """(start, end) of a Content-Range that continues the upload, else 416."""
        match = _CONTENT_RANGE.fullmatch(request.headers.get("content-range", "").strip())
        expected = len(session.data)
        if match is None:
            raise Rejection("upload_bad_range", expected=expected)
        start, end, total = (int(g) for g in match.groups())
        if start != expected or end < start or end >= total or total != session.size:
            raise Rejection("upload_bad_range", expected=expected)
        return start, end

    def _complete(self, request: Request, session: UploadSession) -> Response:
        """The last range: the bytes become an attachment of the draft."""
        del self.state.upload_sessions[session.id]
        draft = self.state.drafts.get(session.draft_id)
        if draft is None:  # sent or deleted while uploading
            raise Rejection("item_not_found")
        attachment_id = self.state.new_opaque("AAMkAGAtt", 24)
        draft.attachments.append({
            "id": attachment_id, "name": session.name, "contentType": session.content_type,
            "size": session.size, "isInline": session.is_inline, "contentId": session.content_id,
            "bytes": bytes(session.data),
        })
        params = request.path_params
        base = str(request.base_url).rstrip("/")
        location = (f"{base}/api/v2.0/Users('{params['mailbox']}')/Messages('{draft.id}')"
                    f"/Attachments('{attachment_id}')")
        headers = graph_headers(request)
        headers["Location"] = location
        return Response(status_code=201, headers=headers)


def upload_routes(state: SimState) -> list[BaseRoute]:
    return UploadApi(state).routes()
