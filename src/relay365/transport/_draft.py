"""A MIME message as Graph's message JSON plus its file attachments, for the draft path.

Messages over Graph's 4 MB request limit cannot go as MIME; they are rebuilt as a draft
(reference §4.3).  What the JSON can carry is kept: subject, the HTML body (or the text
one when there is no HTML), To/Cc/Bcc, Reply-To, From, importance, the Message-ID, up
to five ``x-`` headers, and every other part as a file attachment with its bytes as
decoded from the MIME (inline when the HTML body references its Content-ID).  What it
cannot carry is lost: the text alternative of an HTML body (Exchange writes its own),
other standard headers (In-Reply-To, References, List-Unsubscribe...), more ``x-``
headers, and part headers.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import compat32, default
from email.utils import getaddresses
from typing import Any

MAX_CUSTOM_HEADERS = 5  # Graph refuses more (reference §4.2)
_MESSAGE_ID = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
_PRIORITIES = {"1": "high", "2": "high", "4": "low", "5": "low"}


@dataclass(frozen=True)
class FilePart:
    """One attachment, with its bytes exactly as the MIME part decodes to."""

    name: str
    content_type: str
    data: bytes = field(repr=False)
    is_inline: bool = False
    content_id: str | None = None

    def graph_json(self) -> dict[str, Any]:
        """The ``attachmentItem`` fields (no bytes) for an upload session."""
        item: dict[str, Any] = {"attachmentType": "file", "name": self.name, "size": len(self.data),
                                "contentType": self.content_type, "isInline": self.is_inline}
        if self.content_id:
            item["contentId"] = self.content_id
        return item


@dataclass(frozen=True)
class GraphDraft:
    message: dict[str, Any]  # the draft's JSON, without "from" (the caller decides)
    from_: dict[str, Any] | None  # {"emailAddress": ...} of the From field
    attachments: tuple[FilePart, ...]

    @property
    def from_address(self) -> str | None:
        return self.from_["emailAddress"]["address"] if self.from_ else None


def _recipients(msg: Message, name: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for value in msg.get_all(name, []):
        addresses = getattr(value, "addresses", None)
        pairs = ([(a.display_name, a.addr_spec) for a in addresses] if addresses is not None
                 else getaddresses([str(value)]))
        for display, address in pairs:
            if address and "@" in address:
                email: dict[str, str] = {"address": address}
                if display:
                    email["name"] = display
                out.append({"emailAddress": email})
    return out


def _text(part: Message) -> str:
    if isinstance(part, EmailMessage):
        try:
            return str(part.get_content())
        except (LookupError, ValueError):  # an unknown charset: decode as best we can
            pass
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    try:
        return data.decode(part.get_content_charset() or "utf-8", errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


def _contains(part: Message, target: Message) -> bool:
    return any(p is target for p in part.walk())


def _leaves(part: Message, body: Message | None, out: list[Message]) -> None:
    """Every part but the body and its alternatives, in order."""
    if part is body:
        return
    if part.get_content_maintype() == "multipart":
        children = [p for p in part.get_payload() if isinstance(p, Message)]
        if part.get_content_subtype() == "alternative":
            # Only the branch holding the body; the others are other renderings of it.
            chosen = [c for c in children if body is not None and _contains(c, body)]
            children = chosen or children[-1:]
        for child in children:
            _leaves(child, body, out)
        return
    out.append(part)


def _part_bytes(part: Message) -> bytes:
    if part.get_content_type() == "message/rfc822" or part.is_multipart():
        inner = part.get_payload(0) if part.is_multipart() else None
        return inner.as_bytes(policy=compat32) if isinstance(inner, Message) else b""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _file_part(part: Message, number: int, html: str | None) -> FilePart:
    content_type = part.get_content_type()
    cid = str(part.get("Content-ID", "")).strip().strip("<>").strip() or None
    is_inline = bool(cid and html is not None and f"cid:{cid.lower()}" in html.lower())
    name = part.get_filename()
    if not name:
        stem = "image" if part.get_content_maintype() == "image" else "attachment"
        extension = ".eml" if content_type == "message/rfc822" else \
            mimetypes.guess_extension(content_type) or ".bin"
        name = f"{stem}-{number}{extension}"
    return FilePart(name=str(name), content_type=content_type, data=_part_bytes(part),
                    is_inline=is_inline, content_id=cid)


def _importance(msg: Message) -> str | None:
    importance = str(msg.get("Importance", "")).strip().lower()
    if importance in ("high", "low", "normal"):
        return importance
    priority = str(msg.get("X-Priority", "")).strip()[:1]
    return _PRIORITIES.get(priority)


def graph_draft(raw: bytes) -> GraphDraft:
    """The Graph draft JSON and the attachments of the MIME message ``raw``."""
    msg = BytesParser(policy=default).parsebytes(raw)
    body = msg.get_body(preferencelist=("html", "plain")) if isinstance(msg, EmailMessage) else None
    html = _text(body) if body is not None and body.get_content_subtype() == "html" else None
    content = html if html is not None else (_text(body) if body is not None else "")
    message: dict[str, Any] = {
        "subject": str(msg.get("Subject", "")),
        "body": {"contentType": "HTML" if html is not None else "Text", "content": content},
    }
    for name, key in (("to", "toRecipients"), ("cc", "ccRecipients"), ("bcc", "bccRecipients"),
                      ("reply-to", "replyTo")):
        recipients = _recipients(msg, name)
        if recipients:
            message[key] = recipients
    importance = _importance(msg)
    if importance:
        message["importance"] = importance
    message_id = str(msg.get("Message-ID", "")).strip()
    if _MESSAGE_ID.fullmatch(message_id):
        message["internetMessageId"] = message_id
    custom = [{"name": name, "value": str(value)} for name, value in msg.items()
              if name.lower().startswith("x-")][:MAX_CUSTOM_HEADERS]
    if custom:  # Graph refuses an empty list
        message["internetMessageHeaders"] = custom
    senders = _recipients(msg, "from")
    leaves: list[Message] = []
    _leaves(msg, body, leaves)
    attachments = tuple(_file_part(p, n, html) for n, p in enumerate(leaves, start=1))
    return GraphDraft(message=message, from_=senders[0] if senders else None,
                      attachments=attachments)
