"""The HTTP API: queue a message (JSON or message/rfc822), look at it, read the OpenAPI document.

    POST /api/v1/messages            202 {"id": ..., "status": "queued"} once committed
    GET  /api/v1/messages/{id}       state, attempts, diagnosis
    GET  /api/v1/openapi.json

Who may call it: a request with ``Authorization: Bearer <key>`` is the key's (a wrong key
is 401, whatever the network).  Without a key, a client in ``relay.allowed_networks`` may
send, as it may by SMTP, but only when it names the host by IP literal or ``localhost``:
a web page rebinding its own host name to 127.0.0.1 cannot pass for a local program.
Requests must be ``application/json`` or ``message/rfc822``, which a browser will not
send across origins without a CORS preflight that this API never grants.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import ipaddress
import logging
import re
from email.message import EmailMessage

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..catalogue import Entry, find_entry, lookup_entry
from ..config import Settings
from ..errors import StoreError
from ..mime import normalise_newlines, read_head
from ..policy import Client, Policy, Refusal, prepare, replies
from ._credentials import Credentials
from ._openapi import (
    AttemptOut,
    Diagnosis,
    MessageIn,
    MessageStatus,
    Problem,
    ProblemDetail,
    Queued,
    openapi_document,
)
from ._outbox import Attempt, NewMessage, Outbox, QueuedMessage

log = logging.getLogger("relay365.ingress.http")

_STATUS_OF_REFUSAL = {"auth": 401, "client": 401, "sender": 403, "recipients": 400, "size": 413, "data": 400}
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")
# Fields the JSON names itself, or that MIME structure owns: "headers" may not set them.
_RESERVED = frozenset({"from", "to", "cc", "bcc", "reply-to", "subject", "sender", "mime-version",
                       "content-type", "content-transfer-encoding", "content-disposition"})
_JSON_OVERHEAD = 4 / 3  # base64 attachments inside JSON


class _Problem(Exception):
    def __init__(self, status: int, code: str, message: str, fix: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.response = JSONResponse(
            Problem(error=ProblemDetail(code=code, message=message, fix=fix)).model_dump(mode="json"),
            status_code=status, headers=headers)


def _refused(refusal: Refusal) -> _Problem:
    return _Problem(_STATUS_OF_REFUSAL[refusal.kind], refusal.reason, refusal.message, refusal.fix)


def _unauthorized(message: str, fix: str) -> _Problem:
    return _Problem(401, "unauthorized", message, fix, {"WWW-Authenticate": 'Bearer realm="relay365"'})


class MessagesApi:
    """The API's endpoints over one outbox and one policy."""

    def __init__(self, settings: Settings, store: Outbox, policy: Policy) -> None:
        self._settings = settings
        self._store = store
        self._policy = policy
        self._credentials = Credentials(settings.relay)

    def __repr__(self) -> str:
        return f"MessagesApi({self._credentials!r})"

    async def submit(self, request: Request) -> Response:
        try:
            client, label = await self._client(request)
            media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media == "application/json":
                limit = int(self._policy.max_message_size * _JSON_OVERHEAD) + 65536
                body = await _read_body(request, limit, self._policy.max_message_size)
                decision = self._from_json(body, client, label)
            elif media == "message/rfc822":
                body = await _read_body(request, self._policy.max_message_size, self._policy.max_message_size)
                decision = self._from_raw(request, body, client, label)
            else:
                raise _Problem(415, "unsupported_media_type", f"cannot read a {media or 'typeless'} body",
                               "send Content-Type: application/json or message/rfc822")
            if isinstance(decision, Refusal):
                log.info("NOQUEUE: reject: HTTP from %s: %s", label, decision.reply)
                raise _refused(decision)
            queue_id = await self._enqueue(decision)
        except _Problem as problem:
            return problem.response
        return JSONResponse(Queued(id=queue_id).model_dump(mode="json"), status_code=202)

    async def status(self, request: Request) -> Response:
        try:
            client, _ = await self._client(request)
            message_id = request.path_params["message_id"]
            try:
                message = await self._store.get_message(message_id)
                attempts = await self._store.attempts(message_id) if message is not None else []
            except StoreError as exc:
                raise _Problem(503, "queue_unavailable", f"the outbox cannot be read: {exc.message}",
                               replies.STORE_UNAVAILABLE_FIX) from exc
            if message is None or (client.senders and message.sender.lower() not in client.senders):
                raise _Problem(404, "not_found", f"no message {message_id}",
                               "use the id the POST answered; this key sees only its own senders' mail")
        except _Problem as problem:
            return problem.response
        return JSONResponse(_message_status(message, attempts).model_dump(mode="json"))

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())

    # -- who is asking ------------------------------------------------------------------------

    async def _client(self, request: Request) -> tuple[Client, str]:
        peer = request.client.host if request.client else None
        authorization = request.headers.get("authorization")
        if authorization:
            scheme, _, key = authorization.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise _unauthorized("the Authorization header is not `Bearer <key>`",
                                    "send Authorization: Bearer <API key>")
            client = await run_in_threadpool(self._credentials.check_api_key, key.strip())
            if client is None:
                log.warning("HTTP API: a wrong API key from [%s]", peer)
                raise _unauthorized("the API key is not valid",
                                    "use a key made by `relay365 api-key add` (relay.api_keys)")
            return client, f"{client.name} [{peer}]"
        if self._policy.client_allowed(peer) and _names_host_literally(request):
            return Client("network", peer or "?"), f"[{peer}]"
        raise _unauthorized(f"an API key is needed from [{peer}]",
                            "send Authorization: Bearer <API key> (`relay365 api-key add`), or call from a "
                            "client in relay.allowed_networks by IP address or localhost")

    # -- building the message -----------------------------------------------------------------

    def _from_json(self, body: bytes, client: Client, label: str) -> NewMessage | Refusal:
        try:
            data = MessageIn.model_validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                                 for e in exc.errors())
            raise _Problem(400, "invalid_request", problems,
                           "see GET /api/v1/openapi.json for the fields") from exc
        sender_text = data.from_ or self._policy.default_sender(client)
        if not sender_text:
            return Refusal("sender", "no_sender", replies.NO_SENDER, replies.NO_SENDER_FIX)
        sender = _one_address(sender_text, "from")
        rcpts = [_one_address(a, field) for field in ("to", "cc", "bcc")
                 for a in _as_list(getattr(data, field))]
        raw = _build(data, sender_text)
        return prepare(self._policy, raw, sender=sender, recipients=rcpts, client=client, source="http",
                       client_label=label)

    def _from_raw(self, request: Request, body: bytes, client: Client, label: str) -> NewMessage | Refusal:
        raw = normalise_newlines(body)
        head = read_head(raw)
        wanted = request.query_params.getlist("to")
        rcpts = ([addr for _, addr in email.utils.getaddresses(wanted) if addr] if wanted
                 else head.addresses("To", "Cc", "Bcc"))
        sender = request.query_params.get("from")
        return prepare(self._policy, raw, sender=_one_address(sender, "from") if sender else None,
                       recipients=rcpts, client=client, source="http", client_label=label, head=head)

    async def _enqueue(self, message: NewMessage) -> str:
        try:
            queue_id = await self._store.enqueue(message)
        except StoreError as exc:
            log.warning("NOQUEUE: HTTP from %s: the outbox failed: %s", message.client, exc)
            raise _Problem(503, "queue_unavailable", f"the message was not queued: {exc.message}",
                           replies.STORE_UNAVAILABLE_FIX, {"Retry-After": "30"}) from exc
        log.info("%s: client=%s, from=<%s>, to=%d, size=%d, connection=%s, source=http", queue_id,
                 message.client, message.sender, len(message.recipients), len(message.raw),
                 message.connection)
        return queue_id


def api_routes(settings: Settings, store: Outbox, policy: Policy) -> list[BaseRoute]:
    """The HTTP API's routes, to mount on the web listener (paths start with /api/v1)."""
    api = MessagesApi(settings, store, policy)
    return [Route("/api/v1/messages", api.submit, methods=["POST"]),
            Route("/api/v1/messages/{message_id}", api.status, methods=["GET"]),
            Route("/api/v1/openapi.json", api.openapi, methods=["GET"])]


def _names_host_literally(request: Request) -> bool:
    host = request.headers.get("host", "")
    name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


async def _read_body(request: Request, limit: int, message_limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is longer than ``limit`` bytes."""
    too_big = _Problem(413, "too_large", replies.text_of(replies.MESSAGE_TOO_BIG),
                       replies.MESSAGE_TOO_BIG_FIX.format(limit=message_limit))
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _as_list(value: list[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _one_address(text: str, field: str) -> str:
    found = [addr for _, addr in email.utils.getaddresses([text]) if addr]
    if len(found) != 1 or "@" not in found[0]:
        raise _Problem(400, "invalid_address", f"{field}: {text!r} is not one email address",
                       "give `address@domain` or `Name <address@domain>`")
    return found[0]


def _build(data: MessageIn, sender: str) -> bytes:
    message = EmailMessage()
    try:
        message["From"] = sender
        for field, name in (("to", "To"), ("cc", "Cc"), ("reply_to", "Reply-To")):
            values = _as_list(getattr(data, field))
            if values:
                message[name] = ", ".join(values)
        message["Subject"] = data.subject
        for name, value in data.headers.items():
            if not _FIELD_NAME.match(name) or name.lower() in _RESERVED:
                raise _Problem(400, "invalid_header", f"headers: {name!r} cannot be set this way",
                               "set From/To/Cc/Bcc/Subject/Reply-To with their own fields; MIME fields are "
                               "relay365's")
            message[name] = value
        if data.html is not None and data.text is not None:
            message.set_content(data.text)
            message.add_alternative(data.html, subtype="html")
        elif data.html is not None:
            message.set_content(data.html, subtype="html")
        else:
            message.set_content(data.text or "")
        for attachment in data.attachments:
            maintype, slash, subtype = attachment.content_type.partition("/")
            if not slash or not maintype or not subtype:
                raise _Problem(400, "invalid_attachment", f"attachments: {attachment.content_type!r} is not "
                               "a media type", "give content_type as type/subtype, e.g. application/pdf")
            try:
                content = base64.b64decode(attachment.content_base64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _Problem(400, "invalid_attachment", f"attachments: {attachment.filename!r} is not "
                               "valid base64", "encode the file's bytes with base64") from exc
            message.add_attachment(content, maintype=maintype, subtype=subtype, filename=attachment.filename)
        return message.as_bytes(policy=email.policy.SMTP)
    except (ValueError, TypeError) as exc:  # a CR or LF in a header value: header injection
        raise _Problem(400, "invalid_message", f"the message cannot be built: {exc}",
                       "header values are single lines; check the addresses and headers") from exc


def _diagnosis(entry_id: str | None, code: str | None, detail: str | None) -> Diagnosis | None:
    if not (entry_id or code):
        return None
    entry: Entry | None = lookup_entry(entry_id) if entry_id else find_entry(code, detail)
    if entry is None:
        return None
    return Diagnosis(id=entry.id, title=entry.title, cause=entry.cause, fix=entry.fix, link=entry.link)


def _message_status(message: QueuedMessage, attempts: list[Attempt]) -> MessageStatus:
    return MessageStatus(
        id=message.id, state=message.state.value, connection=message.connection, sender=message.sender,
        recipients=list(message.recipients), subject=message.subject, size=message.size,
        source=message.source, client=message.client, received_at=message.received_at,
        next_attempt_at=message.next_attempt_at, sent_at=message.sent_at, attempt_count=message.attempts,
        last_code=message.last_code, last_detail=message.last_detail, request_id=message.request_id,
        diagnosis=_diagnosis(message.last_entry_id, message.last_code, message.last_detail),
        attempts=[AttemptOut(
            number=a.number, started_at=a.started_at, finished_at=a.finished_at, connection=a.connection,
            transport=a.transport, outcome=a.outcome, code=a.code, request_id=a.request_id, detail=a.detail,
            diagnosis=_diagnosis(a.entry_id, a.code, a.detail)) for a in attempts])
