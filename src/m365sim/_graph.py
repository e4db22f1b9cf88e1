"""Microsoft Graph (/v1.0): sendMail, drafts and attachments, users, applications.

Every request is checked in Microsoft's order (reference §4.6, §9): the token (401),
the permissions it carries and the mailbox grants (403), the mailbox (404), the
payload (400/413), the sending limits (429), then 202.  Two checks need the body and
so come after it is read: Send As / Send on Behalf (the sender is in the message) and
the concurrency refusal, which is decided when the request arrives (so it counts the
requests really in flight) but answered after the payload checks.

Accepted mail goes to ``state.mail`` as the MIME a recipient sees: a MIME submission
as submitted, minus Bcc, plus the Date/Message-ID/From Exchange stamps when missing;
a JSON message built into MIME by ``_mime``.  A draft is created from JSON or, with
``Content-Type: text/plain``, from base64 MIME (reference §4.3; Microsoft Learn
"Create message", MIME example); a MIME draft is sent as a MIME submission, with
the attachments added to it since written into its MIME.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formataddr
from hashlib import sha1
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ._knowledge import resources_by_name
from ._mime import (
    Attachment,
    Envelope,
    Rejection,
    append_attachments,
    build_mime,
    check_recipients,
    decode_mime_body,
    file_attachment,
    json_attachments,
    json_from,
    json_headers,
    json_recipients,
    mail_date,
    message_id,
    mime_draft_message,
    read_head,
    restamp,
)
from ._responses import graph_headers, json_response
from ._scenario import App, SharedMailbox, User, stable_id
from ._state import Draft, SimState
from ._tokens import AccessClaims, TokenInvalid
from ._upload import iso, open_session, read_body, rejection_response

GRAPH = "https://graph.microsoft.com/v1.0"
_EVERY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
Handler = Callable[[Request], Awaitable[Response]]

# Permissions that include a narrower one (Microsoft's "higher privileged" lists).
_SEND = ("Mail.Send", "Mail.Send.Shared")
_READ_WRITE = ("Mail.ReadWrite", "Mail.ReadWrite.Shared")
_READ_APPLICATIONS = ("Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All",
                      "Directory.ReadWrite.All")
_READ_USERS = ("User.Read.All", "User.ReadWrite.All", "Directory.Read.All",
               "Directory.ReadWrite.All")


@dataclass(frozen=True)
class Caller:
    """Who presented the token: a signed-in user (delegated) or an app (app-only)."""

    claims: AccessClaims
    user: User | None

    @property
    def client_id(self) -> str:
        return self.claims.client_id

    def has_any(self, permissions: tuple[str, ...]) -> bool:
        return any(self.claims.has_permission(p) for p in permissions)


@dataclass(frozen=True)
class Mailbox:
    """A user's mailbox or a shared mailbox, as an address Graph can act on."""

    address: str
    id: str
    name: str
    user: User | None
    shared: SharedMailbox | None

    @property
    def enabled(self) -> bool:
        return self.shared is not None or (self.user is not None and self.user.mailbox)

    def has_address(self, address: str) -> bool:
        return address.lower() == self.address.lower()


@dataclass(frozen=True)
class Submission:
    raw: bytes
    sender: str
    recipients: list[str]


def find_mailbox(state: SimState, key: str) -> Mailbox | None:
    """The user or shared mailbox with this UPN, address or object id.

    Exchange gives every mailbox an address in each accepted domain, so
    ``admin@contoso.onmicrosoft.com`` finds ``admin@contoso.com`` too.
    """
    keys = [key]
    local, at, domain = key.rpartition("@")
    if at and state.scenario.is_local_address(key):
        keys += [f"{local}@{d}" for d in state.scenario.tenant.domains if d.lower() != domain.lower()]
    for k in keys:
        user = state.user(k)
        if user is not None:
            return Mailbox(user.upn, user.id, user.name, user, None)
        shared = state.shared_mailbox(k)
        if shared is not None:
            return Mailbox(shared.address, shared.id, shared.name, None, shared)
    return None


def _listed(upn: str, who: tuple[str, ...]) -> bool:
    return upn.lower() in (w.lower() for w in who)


def _ignore_case(route: Route) -> Route:
    """Graph matches path segments case-insensitively (/me/sendmail works)."""
    route.path_regex = re.compile(route.path_regex.pattern, re.IGNORECASE)
    return route


class GraphApi:
    def __init__(self, state: SimState) -> None:
        self.state = state
        self.audiences = resources_by_name()["graph"].uris

    def routes(self) -> list[BaseRoute]:
        # sendMail first: it is the hot path, and routes are tried in order.
        routes = [Route(f"{prefix}/sendMail", self._answer(self.send_mail), methods=["POST"])
                  for prefix in ("/v1.0/users/{mailbox}", "/v1.0/me")]
        for prefix in ("/v1.0/me", "/v1.0/users/{mailbox}"):
            routes += [
                Route(f"{prefix}/messages", self._answer(self.create_draft), methods=["POST"]),
                Route(f"{prefix}/messages/{{draft}}/attachments",
                      self._answer(self.add_attachment), methods=["POST"]),
                Route(f"{prefix}/messages/{{draft}}/attachments/createUploadSession",
                      self._answer(self.create_upload_session), methods=["POST"]),
                Route(f"{prefix}/messages/{{draft}}/send", self._answer(self.send_draft),
                      methods=["POST"]),
                Route(f"{prefix}/messages/{{draft}}", self._answer(self.delete_draft),
                      methods=["DELETE"]),
                Route(prefix, self._answer(self.get_user), methods=["GET"]),
            ]
        routes += [
            Route("/v1.0/applications(appId='{app_id}')", self._answer(self.get_application),
                  methods=["GET"]),
            Route("/v1.0/applications/{object_id}", self._answer(self.get_application),
                  methods=["GET"]),
            Route("/v1.0/{rest:path}", self._answer(self.unknown_route), methods=_EVERY_METHOD),
        ]
        return [_ignore_case(r) for r in routes]

    def _answer(self, handler: Handler) -> Handler:
        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Rejection as rejection:
                return rejection_response(self.state, request, rejection)
        return answer

    # ---- who is calling, about which mailbox ------------------------------------------------
    def authenticate(self, request: Request) -> Caller:
        """The caller of a Bearer token for Graph (401 otherwise)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            claims = self.state.tokens.verify_access_token(
                token.strip() if scheme.lower() == "bearer" else "", self.audiences)
        except TokenInvalid as exc:
            raise Rejection(exc.reason) from exc
        request.state.client_id = claims.client_id
        request.state.identity = claims.upn or f"app:{claims.client_id}"
        user = None if claims.app_only else self.state.user(str(claims.user_id))
        if not claims.app_only and user is None:  # deleted since the token was issued
            raise Rejection("invalid_user", user=claims.upn)
        return Caller(claims, user)

    @staticmethod
    def mailbox_key(request: Request, caller: Caller) -> str:
        """Who the URL names: /me is the signed-in user (an app has no /me), /users/{x} is x."""
        key = request.path_params.get("mailbox")
        if key is not None:
            return str(key)
        if caller.user is None:
            raise Rejection("me_app_only")
        return caller.user.upn

    def mailbox_for(self, request: Request, caller: Caller, permissions: tuple[str, ...],
                    shared: str) -> Mailbox:
        """403 without ``permissions``, 404 without the mailbox, 403 without access to it.

        ``shared`` is the delegated permission needed for another person's mailbox,
        on top of Full Access to it.
        """
        key = self.mailbox_key(request, caller)
        if not caller.has_any(permissions):
            raise Rejection("access_denied")
        mailbox = find_mailbox(self.state, key)
        if mailbox is None:
            raise Rejection("invalid_user", user=key)
        if caller.user is None:
            app = self.state.app(caller.client_id)
            scope = app.mailbox_scope if app is not None else None
            if scope is not None and not any(mailbox.has_address(a) or mailbox.id == a for a in scope):
                raise Rejection("odata_disabled")
        elif mailbox.id != caller.user.id and not (
                caller.claims.has_permission(shared) and mailbox.shared is not None
                and _listed(caller.user.upn, mailbox.shared.full_access)):
            raise Rejection("access_denied")
        if not mailbox.enabled:
            raise Rejection("mailbox_not_enabled")
        return mailbox

    def sending_as(self, caller: Caller, mailbox: Mailbox, from_address: str | None
                   ) -> tuple[str, str] | None:
        """Check a From other than the mailbox; the Sender to stamp when on behalf.

        The one acting is the signed-in user, or for app-only tokens the mailbox in
        the URL (Exchange checks that mailbox's rights on the From mailbox).
        """
        if from_address is None or mailbox.has_address(from_address):
            return None
        target = find_mailbox(self.state, from_address)
        if target is not None and target.id == mailbox.id:  # another address of the mailbox
            return None
        acting = caller.user or mailbox.user
        if acting is None or (caller.user is not None
                              and not caller.claims.has_permission("Mail.Send.Shared")):
            raise Rejection("send_as_denied")
        shared = target.shared if target is not None else None
        if shared is not None and _listed(acting.upn, shared.send_as):
            return None
        if shared is not None and _listed(acting.upn, shared.send_on_behalf):
            return (acting.name, acting.upn)
        raise Rejection("send_as_denied")

    # ---- sendMail -------------------------------------------------------------------------
    async def send_mail(self, request: Request) -> Response:
        caller = self.authenticate(request)
        mailbox = self.mailbox_for(request, caller, _SEND, "Mail.Send.Shared")
        limits = self.state.scenario.limits

        async def submission() -> tuple[Submission, str]:
            body = await read_body(request, limits)
            if request.headers.get("content-type", "").lower().startswith("text/plain"):
                return self.mime_submission(body, caller, mailbox), "graph-mime"
            message = _send_mail_message(body)
            return self.json_submission(message, [], caller, mailbox), "graph-json"

        return await self._submit(request, caller, mailbox, submission)

    async def _submit(self, request: Request, caller: Caller, mailbox: Mailbox,
                      prepare: Callable[[], Awaitable[tuple[Submission, str]]]) -> Response:
        """Hold a concurrency slot while ``prepare`` reads and checks; admit; deliver."""
        limits = self.state.scenario.limits
        slot = self.state.limits.enter(caller.client_id, mailbox.address, limits.concurrent_requests)
        try:
            submission, path = await prepare()
            if not slot:
                raise Rejection("throttled_concurrency", retry_after=1.0)
            self.admit(mailbox, len(submission.recipients))
        finally:
            if slot:
                self.state.limits.leave(caller.client_id, mailbox.address)
        delivered = self.state.mail.deliver(
            raw=submission.raw, path=path, identity=request.state.identity,
            sender=submission.sender, recipients=submission.recipients, now=self.state.clock.now(),
        )
        request.state.detail = f"delivered {delivered.id}"
        return Response(status_code=202, headers=graph_headers(request))

    def admit(self, mailbox: Mailbox, recipients: int) -> None:
        limits = self.state.scenario.limits
        refusal = self.state.limits.admit(
            mailbox.address, recipients, per_minute=limits.messages_per_minute,
            per_day=limits.recipients_per_day, time_scale=limits.time_scale,
        )
        if refusal is None:
            return
        if refusal.limit == "recipients":
            raise Rejection("submission_quota", retry_after=refusal.retry_after,
                            limit=limits.recipients_per_day)
        raise Rejection("throttled_rate", retry_after=refusal.retry_after)

    def mime_submission(self, body: bytes, caller: Caller, mailbox: Mailbox) -> Submission:
        return self.raw_submission(decode_mime_body(body), caller, mailbox)

    def raw_submission(self, raw: bytes, caller: Caller, mailbox: Mailbox) -> Submission:
        """A MIME message as Exchange submits it: recipients from To/Cc/Bcc, Bcc removed."""
        head = read_head(raw)
        from_address = head.from_address()
        on_behalf = self.sending_as(caller, mailbox, from_address)
        recipients = head.recipients()
        check_recipients(recipients, self.state.scenario.limits.recipients_per_message)
        self.check_size(mailbox, len(raw))
        add = [] if head.has("from") else [("From", _formatted(mailbox.name, mailbox.address))]
        if on_behalf is not None:
            add.append(("Sender", _formatted(*on_behalf)))
        if not head.has("date"):
            add.append(("Date", mail_date(self.state.clock.now_datetime())))
        if not head.has("message-id"):
            add.append(("Message-ID", message_id()))
        drop = ("bcc", "sender") if on_behalf is not None else ("bcc",)
        raw = restamp(raw, head, add=add, drop=drop)
        return Submission(raw, from_address or mailbox.address, recipients)

    def json_submission(self, message: dict[str, Any], attachments: list[Attachment],
                        caller: Caller, mailbox: Mailbox) -> Submission:
        written = json_from(message)
        sender = written if written is not None else (mailbox.name, mailbox.address)
        on_behalf = self.sending_as(caller, mailbox, sender[1])
        to, cc, bcc = (json_recipients(message, k)
                       for k in ("toRecipients", "ccRecipients", "bccRecipients"))
        recipients = [address for _, address in to + cc + bcc]
        check_recipients(recipients, self.state.scenario.limits.recipients_per_message)
        headers = json_headers(message)
        attachments = json_attachments(message) + attachments
        # base64 makes attachments a third bigger; refuse before building a huge message.
        self.check_size(mailbox, sum(len(a.data) for a in attachments) * 4 // 3)
        envelope = Envelope(sender=sender, on_behalf=on_behalf, to=to, cc=cc,
                            reply_to=json_recipients(message, "replyTo"))
        raw = build_mime(message, envelope, attachments=attachments, headers=headers,
                         now=self.state.clock.now_datetime())
        self.check_size(mailbox, len(raw))
        return Submission(raw, sender[1], recipients)

    def check_size(self, mailbox: Mailbox, size: int) -> None:
        user_limit = mailbox.user.max_send_size if mailbox.user is not None else None
        if size > (user_limit or self.state.scenario.limits.max_send_size):
            raise Rejection("message_size_exceeded")

    # ---- drafts ---------------------------------------------------------------------------
    async def create_draft(self, request: Request) -> Response:
        caller = self.authenticate(request)
        mailbox = self.mailbox_for(request, caller, _READ_WRITE, "Mail.ReadWrite.Shared")
        body = await read_body(request, self.state.scenario.limits)
        draft_id = self.state.new_opaque("AAMkAGI2", 32)
        if request.headers.get("content-type", "").lower().startswith("text/plain"):
            # MIME: base64 of the whole message; headers and parts are taken as they are,
            # recipients and From checked at /send (as for a MIME sendMail).
            raw = decode_mime_body(body)
            read_head(raw)  # a message must start with its header
            draft = Draft(id=draft_id, mailbox=mailbox.address.lower(),
                          owner_identity=request.state.identity,
                          message=mime_draft_message(raw), mime=raw)
        else:
            message = _json_object(body)
            json_headers(message)  # x- header rules apply when the message is created
            attachments = [_stored(a, self.state.new_opaque("AAMkAGAtt", 24))
                           for a in json_attachments(message)]
            message = {k: v for k, v in message.items() if k != "attachments"}
            draft = Draft(id=draft_id, mailbox=mailbox.address.lower(),
                          owner_identity=request.state.identity, message=message,
                          attachments=attachments)
        self.state.drafts[draft.id] = draft
        return json_response(self._draft_json(draft, mailbox), 201, graph_headers(request))

    async def delete_draft(self, request: Request) -> Response:
        caller = self.authenticate(request)
        mailbox = self.mailbox_for(request, caller, _READ_WRITE, "Mail.ReadWrite.Shared")
        draft = self._draft(request, mailbox)
        del self.state.drafts[draft.id]
        for sid in [s.id for s in self.state.upload_sessions.values() if s.draft_id == draft.id]:
            del self.state.upload_sessions[sid]
        return Response(status_code=204, headers=graph_headers(request))

    def _draft(self, request: Request, mailbox: Mailbox) -> Draft:
        draft = self.state.drafts.get(request.path_params["draft"])
        if draft is None or draft.mailbox != mailbox.address.lower():
            raise Rejection("item_not_found")
        return draft

    def _draft_json(self, draft: Draft, mailbox: Mailbox) -> dict[str, Any]:
        now = iso(self.state.clock.now())
        body = draft.message.get("body") or {"contentType": "text", "content": ""}
        return {
            "@odata.context": f"{GRAPH}/$metadata#users('{mailbox.id}')/messages/$entity",
            "id": draft.id,
            "createdDateTime": now,
            "lastModifiedDateTime": now,
            "subject": draft.message.get("subject", ""),
            "body": body,
            "importance": draft.message.get("importance", "normal"),
            "isDraft": True,
            "isRead": True,
            "hasAttachments": bool(draft.attachments or draft.message.get("hasAttachments")),
            "from": draft.message.get("from"),
            "internetMessageId": draft.message.get("internetMessageId"),
            "sender": draft.message.get("sender"),
            **{k: draft.message.get(k, []) for k in
               ("toRecipients", "ccRecipients", "bccRecipients", "replyTo")},
        }

    async def add_attachment(self, request: Request) -> Response:
        caller = self.authenticate(request)
        mailbox = self.mailbox_for(request, caller, _READ_WRITE, "Mail.ReadWrite.Shared")
        draft = self._draft(request, mailbox)
        item = _json_object(await read_body(request, self.state.scenario.limits))
        stored = _stored(file_attachment(item), self.state.new_opaque("AAMkAGAtt", 24))
        draft.attachments.append(stored)
        shown = {k: v for k, v in stored.items() if k != "bytes"}
        return json_response({
            "@odata.context": f"{GRAPH}/$metadata#users('{mailbox.id}')/messages('{draft.id}')"
                              "/attachments/$entity",
            "@odata.type": "#microsoft.graph.fileAttachment",
            **shown, "lastModifiedDateTime": iso(self.state.clock.now()),
            "contentBytes": item.get("contentBytes"),
        }, 201, graph_headers(request))

    async def create_upload_session(self, request: Request) -> Response:
        caller = self.authenticate(request)
        mailbox = self.mailbox_for(request, caller, _READ_WRITE, "Mail.ReadWrite.Shared")
        draft = self._draft(request, mailbox)
        body = _json_object(await read_body(request, self.state.scenario.limits))
        session = open_session(self.state, draft, mailbox.id, body, str(request.base_url))
        return json_response(session, 201, graph_headers(request))

    async def send_draft(self, request: Request) -> Response:
        caller = self.authenticate(request)
        mailbox = self.mailbox_for(request, caller, _SEND, "Mail.Send.Shared")
        draft = self._draft(request, mailbox)

        async def submission() -> tuple[Submission, str]:
            await read_body(request, self.state.scenario.limits)  # empty, but capped
            attachments = [_loaded(a) for a in draft.attachments]
            if draft.mime is None:
                return (self.json_submission(draft.message, attachments, caller, mailbox),
                        "graph-draft")
            # Refuse before building a huge message (base64 makes attachments a third bigger).
            self.check_size(mailbox, len(draft.mime) + sum(len(a.data) for a in attachments) * 4 // 3)
            raw = append_attachments(draft.mime, attachments)
            return self.raw_submission(raw, caller, mailbox), "graph-draft"

        response = await self._submit(request, caller, mailbox, submission)
        self.state.drafts.pop(draft.id, None)  # it moves to Sent Items
        return response

    # ---- directory ------------------------------------------------------------------------
    async def get_user(self, request: Request) -> Response:
        caller = self.authenticate(request)
        key = self.mailbox_key(request, caller)
        if caller.user is None and not caller.has_any(_READ_USERS):
            raise Rejection("authorization_request_denied")
        mailbox = find_mailbox(self.state, key)
        if mailbox is None:
            raise Rejection("resource_not_found", id=key)
        return json_response({
            "@odata.context": f"{GRAPH}/$metadata#users/$entity",
            "id": mailbox.id,
            "userPrincipalName": mailbox.address,
            "displayName": mailbox.name,
            # Unlicensed users have no mailbox, and Graph shows no mail address for them.
            "mail": mailbox.address if mailbox.enabled else None,
            "businessPhones": [],
            "jobTitle": None,
            "preferredLanguage": None,
        }, 200, graph_headers(request))

    async def get_application(self, request: Request) -> Response:
        caller = self.authenticate(request)
        if not caller.has_any(_READ_APPLICATIONS):
            raise Rejection("authorization_request_denied")
        key = request.path_params.get("app_id") or request.path_params["object_id"]
        app = next((a for a in self.state.scenario.apps
                    if key.lower() in (a.client_id.lower(), a.object_id.lower())), None)
        if app is None:
            raise Rejection("resource_not_found", id=key)
        body = application_json(self.state, app)
        select = request.query_params.get("$select")
        if select:
            wanted = {s.strip().lower() for s in select.split(",")}
            body = {k: v for k, v in body.items() if k.startswith("@") or k.lower() in wanted}
        return json_response(body, 200, graph_headers(request))

    async def unknown_route(self, request: Request) -> Response:
        raise Rejection("not_found_route", segment=_unknown_segment(request.path_params["rest"]))


# ---- helpers ------------------------------------------------------------------------------
def _formatted(name: str, address: str) -> str:
    return formataddr((name, address), charset="utf-8")


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise Rejection("empty_payload")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejection("invalid_json") from exc
    if not isinstance(value, dict):
        raise Rejection("invalid_json")
    return value


def _send_mail_message(body: bytes) -> dict[str, Any]:
    """The ``message`` of a JSON sendMail, with ``saveToSentItems`` checked."""
    payload = _json_object(body)
    message = payload.get("message")
    if message is None:
        raise Rejection("missing_message")
    if not isinstance(message, dict):
        raise Rejection("invalid_property", name="message")
    # Microsoft's own sample sends "false" as a string (reference §4.2).
    save = payload.get("saveToSentItems", True)
    if not (isinstance(save, bool) or (isinstance(save, str) and save.lower() in ("true", "false"))):
        raise Rejection("invalid_property", name="saveToSentItems")
    return message


def _stored(a: Attachment, attachment_id: str) -> dict[str, Any]:
    return {"id": attachment_id, "name": a.name, "contentType": a.content_type,
            "size": len(a.data), "isInline": a.is_inline, "contentId": a.content_id,
            "bytes": a.data}


def _loaded(stored: dict[str, Any]) -> Attachment:
    return Attachment(name=stored["name"], content_type=stored["contentType"],
                      data=stored["bytes"], is_inline=stored["isInline"],
                      content_id=stored["contentId"])


# The segments m365sim serves; "*" is any id.
_MESSAGES: dict[str, Any] = {"*": {"attachments": {"createuploadsession": {}}, "send": {}}}
_ME: dict[str, Any] = {"sendmail": {}, "messages": _MESSAGES}
_SEGMENTS: dict[str, Any] = {"me": _ME, "users": {"*": _ME}, "applications": {"*": {}}}


def _unknown_segment(rest: str) -> str:
    """The first segment Graph cannot resolve; the last one when only the method is wrong."""
    segments = [s for s in rest.split("/") if s]
    node = _SEGMENTS
    for segment in segments:
        key = segment.split("(")[0].lower()
        if key in node:
            node = node[key]
        elif "*" in node:
            node = node["*"]
        else:
            return segment
    return segments[-1] if segments else ""


def application_json(state: SimState, app: App) -> dict[str, Any]:
    """An application object as GET /applications returns it (reference §7.2)."""
    redirects = {"redirectUris": list(app.redirect_uris)}
    return {
        "@odata.context": f"{GRAPH}/$metadata#applications/$entity",
        "id": app.object_id,
        "appId": app.client_id,
        "displayName": app.name,
        "signInAudience": app.sign_in_audience,
        "isFallbackPublicClient": app.public_client,
        "publicClient": redirects if app.public_client else {"redirectUris": []},
        "web": {"redirectUris": []} if app.public_client else redirects,
        "passwordCredentials": [
            {
                "customKeyIdentifier": None,
                "displayName": s.display_name,
                "endDateTime": iso(s.end.timestamp()),
                "hint": s.value[:3],
                "keyId": s.key_id,
                "secretText": None,
                "startDateTime": iso(s.start.timestamp()),
            }
            for s in app.secrets
        ],
        "keyCredentials": [_key_credential(app, cert, name)
                           for cert, name in zip(state.app_certificates(app),
                                                 (c.display_name for c in app.certificates),
                                                 strict=True)],
    }


def _key_credential(app: App, cert: x509.Certificate, name: str) -> dict[str, Any]:
    thumbprint = sha1(cert.public_bytes(Encoding.DER), usedforsecurity=False).hexdigest().upper()
    return {
        "customKeyIdentifier": thumbprint,
        "displayName": name,
        "endDateTime": iso(cert.not_valid_after_utc.timestamp()),
        "key": None,
        "keyId": stable_id("certificate", app.client_id + thumbprint),
        "startDateTime": iso(cert.not_valid_before_utc.timestamp()),
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
    }


def graph_routes(state: SimState) -> list[BaseRoute]:
    return GraphApi(state).routes()
