"""The log: search the outbox, one message in detail, and resend, retry or delete it.

Nothing of a logged message is ever trusted: its headers and bodies reach the page only
through Jinja's autoescape (the HTML body is shown as source, never rendered).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.errors
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..catalogue import Entry, find_entry, lookup_entry
from ..errors import StoreError
from ..mime import split_head
from ..store import MessageState, NewMessage
from ._site import Admin, action, page

SEARCH_LIMIT = 200
# A body longer than this is cut on the page (the stored message is untouched).
SHOWN_BODY_CHARS = 200_000
# An address that can go into a To field as it is: no whitespace, controls or punctuation
# that could end the field or start another (header injection).
_PLAIN_ADDRESS = re.compile(r"[^\s<>,;\"()\\\x00-\x1f\x7f]+@[^\s<>,;\"()\\@\x00-\x1f\x7f]+")
_ADDRESS_FIELD = re.compile(rb"^(?:to|cc|bcc)[ \t]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*(?:\r?\n|\Z)",
                            re.IGNORECASE | re.MULTILINE)
# What a malformed header or part can raise while the email package decodes it.
_UNREADABLE = (email.errors.MessageError, ValueError, TypeError, LookupError, AttributeError, IndexError)


def failure_entry(entry_id: str | None, code: str | None, detail: str | None) -> Entry | None:
    """The catalogue's entry for a failure: by its id, else found from Microsoft's code and words."""
    if entry_id:
        return lookup_entry(entry_id)
    if code or detail:
        return find_entry(code, detail)
    return None


# -- search ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Search:
    """The search form's fields as typed, and the problem with them, if any."""

    recipient: str = ""
    sender: str = ""
    subject: str = ""
    status: str = ""
    since: str = ""
    until: str = ""
    problems: list[str] = field(default_factory=list)


def _day(text: str, name: str, problems: list[str]) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        problems.append(f"{name}: {text!r} is not a date (YYYY-MM-DD)")
        return None


async def log_page(admin: Admin, request: Request) -> Response:
    params = request.query_params
    problems: list[str] = []
    search = Search(**{name: params.get(name, "").strip()
                       for name in ("recipient", "sender", "subject", "status", "since", "until")},
                    problems=problems)
    states = None
    if search.status:
        if search.status in {s.value for s in MessageState}:
            states = {MessageState(search.status)}
        else:
            problems.append(f"status: {search.status!r} is not one of "
                            f"{', '.join(s.value for s in MessageState)}")
    since, until = _day(search.since, "since", problems), _day(search.until, "until", problems)
    messages = []
    if not problems:
        # Dates are whole UTC days, "until" included: the page shows every time in UTC.
        messages = await admin.store.list_messages(
            states=states, limit=SEARCH_LIMIT, recipient_contains=search.recipient,
            sender=search.sender, subject=search.subject,
            since=dt.datetime.combine(since, dt.time(), tzinfo=dt.UTC) if since else None,
            until=dt.datetime.combine(until + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
            if until else None)
    status_code = 400 if problems else 200
    return admin.render(request, "log.html", status_code, search=search, messages=messages,
                        limit=SEARCH_LIMIT, states=[s.value for s in MessageState])


# -- one message ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Part:
    """An attachment as the page lists it."""

    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class ReadMessage:
    """A stored message taken apart for display: every value is text to be escaped."""

    headers: list[tuple[str, str]]
    text: str | None
    html: str | None
    attachments: list[Part]
    cut: bool  # a body was longer than SHOWN_BODY_CHARS


def _content(part: EmailMessage | None) -> tuple[str | None, bool]:
    if part is None:
        return None, False
    try:
        content = part.get_content()
    except _UNREADABLE:
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None
    if not isinstance(content, str):
        return None, False
    return content[:SHOWN_BODY_CHARS], len(content) > SHOWN_BODY_CHARS


def read_message(raw: bytes) -> ReadMessage:
    """Headers (decoded where they can be), the text and HTML bodies, and the attachments."""
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)  # policy.default builds EmailMessage
    headers = []
    for name, value in msg.raw_items():
        try:
            shown = str(msg.policy.header_fetch_parse(name, value))
        except _UNREADABLE:
            shown = str(value)  # an undecodable field is shown as it came
        headers.append((name, shown))
    text, text_cut = _content(msg.get_body(preferencelist=("plain",)))  # type: ignore[arg-type]
    html, html_cut = _content(msg.get_body(preferencelist=("html",)))  # type: ignore[arg-type]
    attachments = []
    for part in msg.iter_attachments():
        payload = part.get_payload(decode=True)
        attachments.append(Part(part.get_filename() or "(no name)", part.get_content_type(),
                                len(payload) if isinstance(payload, bytes) else 0))
    return ReadMessage(headers, text, html, attachments, text_cut or html_cut)


async def message_page(admin: Admin, request: Request) -> Response:
    message_id = request.path_params["message_id"]
    message = await admin.store.get_message(message_id)
    if message is None:
        return admin.render(request, "message.html", 404, message=None, message_id=message_id)
    attempts = await admin.store.attempts(message_id)
    events = await admin.store.events(message_id)
    content: ReadMessage | None = None
    missing_body: str | None = None
    try:
        raw = await admin.store.message_body(message_id)
    except StoreError as exc:  # pruned after it was sent (retention), or the database failed
        missing_body = exc.message
    else:
        # Parsing a large message takes a while: off the event loop.
        content = await asyncio.to_thread(read_message, raw)
    last_failure = (failure_entry(message.last_entry_id, message.last_code, message.last_detail)
                    if message.state is not MessageState.SENT else None)
    return admin.render(
        request, "message.html", message=message, message_id=message_id, content=content,
        missing_body=missing_body,
        attempts=[(a, failure_entry(a.entry_id, a.code, a.detail) if a.outcome != "sent" else None)
                  for a in attempts],
        events=events, last_failure=last_failure,
        can_retry=message.state in (MessageState.FAILED, MessageState.DEFERRED))


# -- actions ----------------------------------------------------------------------------------------

def typed_recipients(text: str) -> list[str]:
    """The addresses typed in the resend form (comma-separated); ValueError naming a bad one."""
    if any(ord(c) < 32 or ord(c) == 127 for c in text):  # getaddresses would read past a line break
        raise ValueError("a line break or control character is not part of an email address")
    found = [address for _, address in email.utils.getaddresses([text]) if address]
    for address in found:
        if not _PLAIN_ADDRESS.fullmatch(address):
            raise ValueError(f"{address!r} is not an email address")
    if not found and text.strip():
        raise ValueError(f"{text.strip()!r} holds no email address")
    return found


def readdressed(raw: bytes, recipients: list[str]) -> bytes:
    """``raw`` addressed to ``recipients`` only: its To, Cc and Bcc replaced by one To field.

    Graph sends a MIME message to whoever its header fields name, so the original
    recipients must leave the header.  Only the header block changes.
    """
    head, rest = split_head(raw)
    eol = b"\r\n" if b"\r\n" in head or (not head and rest.startswith(b"\r\n")) else b"\n"
    head = _ADDRESS_FIELD.sub(b"", head)
    if head and not head.endswith(b"\n"):
        head += eol
    if not rest:
        rest = eol  # a message that was all header gets the blank line it lacked
    return head + b"To: " + ", ".join(recipients).encode("utf-8") + eol + rest


def _back(message_id: str) -> Response:
    return RedirectResponse(f"/log/{message_id}", status_code=303)


async def _resend(admin: Admin, request: Request, form: FormData) -> Response:
    message_id = request.path_params["message_id"]
    message = await admin.store.get_message(message_id)
    if message is None:
        return admin.render(request, "message.html", 404, message=None, message_id=message_id)
    try:
        recipients = typed_recipients(str(form.get("recipients") or ""))
    except ValueError as exc:
        admin.flash(request, f"Not resent: {exc}. Give addresses separated by commas.", "error")
        return _back(message_id)
    try:
        raw = await admin.store.message_body(message_id)
    except StoreError as exc:
        admin.flash(request, f"Not resent: {exc.message}", "error")
        return _back(message_id)
    if recipients:
        raw = readdressed(raw, recipients)
    copy = NewMessage(connection=message.connection, sender=message.sender,
                      recipients=tuple(recipients) or message.recipients, raw=raw, source="http",
                      client=f"admin page, resend of {message_id}", subject=message.subject)
    try:
        new_id = await admin.enqueue(copy)
    except StoreError as exc:
        admin.flash(request, f"Not resent: {exc.message}", "error")
        return _back(message_id)
    admin.flash(request, f"Queued a copy of {message_id} as {new_id} to {', '.join(copy.recipients)}.")
    return _back(new_id)


async def _retry(admin: Admin, request: Request, form: FormData) -> Response:
    message_id = request.path_params["message_id"]
    if await admin.store.retry(message_id):
        if admin.engine is not None:
            admin.engine.kick()
        admin.flash(request, f"{message_id} is queued again: it will be sent in a moment.")
    else:
        admin.flash(request, f"{message_id} was not retried: only a failed or deferred message can be "
                             "(it may have been sent or retried meanwhile).", "warn")
    return _back(message_id)


async def _delete(admin: Admin, request: Request, form: FormData) -> Response:
    message_id = request.path_params["message_id"]
    if await admin.store.delete_message(message_id):
        admin.flash(request, f"Deleted {message_id} with its body, attempts and events.")
    else:
        admin.flash(request, f"There is no message {message_id} to delete.", "warn")
    return RedirectResponse("/log", status_code=303)


ROUTES = [
    ("/log", page(log_page), ["GET"]),
    ("/log/{message_id}", page(message_page), ["GET"]),
    ("/log/{message_id}/resend", action(_resend), ["POST"]),
    ("/log/{message_id}/retry", action(_retry), ["POST"]),
    ("/log/{message_id}/delete", action(_delete), ["POST"]),
]
