"""Messages over Graph's 4 MB request limit, as a draft plus attachments added to it.

The faithful way (``split_mime``): Graph creates a draft from base64 MIME (Microsoft
Learn, "Create message", MIME format; the 4 MB request limit applies), so the message
goes as it was built minus its largest attachment parts, cut out of the bytes
largest first until the rest fits; each part cut out is then added to the draft
(upload session or POST) with its name, content type, Content-ID and inline flag.
Every header (In-Reply-To, References, List-Unsubscribe...), the text and HTML
alternatives and every part that stays are sent byte for byte.

The fallback (``graph_draft``), when even without every attachment part the MIME is
over the limit (a huge body: JSON carries it unencoded, a third smaller than base64):
the message rebuilt as Graph's message JSON.  What the JSON can carry is kept:
subject, the HTML body (or the text one when there is no HTML), To/Cc/Bcc, Reply-To,
From, importance, the Message-ID, up to five ``x-`` headers, and every other part as
a file attachment with its bytes as decoded from the MIME (inline when the HTML body
references its Content-ID).  What it cannot carry is lost: the text alternative of an
HTML body (Exchange writes its own), other standard headers, more ``x-`` headers,
and part headers.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass, field, replace
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
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


# ---- the MIME draft -----------------------------------------------------------------------
MAX_DEPTH = 20  # nesting followed when looking for parts; deeper ones stay where they are
# Parts whose bytes must stay whole: a signature covers them, or they are encrypted.
_SEALED = frozenset({"multipart/signed", "multipart/encrypted"})


@dataclass(frozen=True)
class MimeDraft:
    """The message without some parts (``mime``), and those parts as attachments."""

    mime: bytes = field(repr=False)
    attachments: tuple[FilePart, ...]


@dataclass(frozen=True)
class _Leaf:
    """A part that could leave the MIME: where its bytes are, and what it is."""

    cut: tuple[int, int]  # its delimiter line up to the next delimiter line
    start: int  # its first header byte
    end: int  # just past its content (the line end before the next delimiter excluded)
    body: int  # its first content byte
    removable: bool
    is_inline: bool


def _base64_size(size: int) -> int:
    return 4 * ((size + 2) // 3)


def _head_end(raw: bytes, start: int, end: int) -> int:
    """Where the content of the entity at ``raw[start:end]`` starts (after the blank line)."""
    pos = start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        if raw[pos:line_end] in (b"\r\n", b"\n"):
            return line_end
        pos = line_end
    return end


def _delimiter(boundary: str) -> re.Pattern[bytes]:
    b = re.escape(boundary.encode("ascii", "surrogateescape"))
    return re.compile(rb"^--" + b + rb"(--)?[ \t]*\r?$", re.MULTILINE)


def _line_end_before(raw: bytes, pos: int) -> int:
    """Where the line break just before ``pos`` starts (``pos`` if there is none)."""
    if raw[pos - 2:pos] == b"\r\n":
        return pos - 2
    return pos - 1 if pos > 0 and raw[pos - 1:pos] == b"\n" else pos


def _scan(raw: bytes, start: int, end: int, cut: tuple[int, int], parent: str | None,
          first: bool, depth: int, out: list[_Leaf]) -> None:
    """Collect the leaves of the entity at ``raw[start:end]`` (``parent``: its multipart)."""
    body = _head_end(raw, start, end)
    headers = BytesHeaderParser(policy=default).parsebytes(raw[start:body])
    content_type = headers.get_content_type()
    boundary = headers.get_boundary() if headers.get_content_maintype() == "multipart" else None
    if boundary and content_type not in _SEALED and depth < MAX_DEPTH:
        try:
            pattern = _delimiter(boundary)
        except UnicodeEncodeError:
            pattern = None
        if pattern is not None:
            lines = [(m.start(), m.group(1) is not None, m.end()) for m in
                     pattern.finditer(raw, body, end)]
            for i, (line, closing, line_end) in enumerate(lines):
                if closing:
                    break
                child_start = min(line_end + 1, end)  # past the delimiter's line break
                next_line = lines[i + 1][0] if i + 1 < len(lines) else end
                child_end = max(child_start, _line_end_before(raw, next_line)
                                if next_line < end else end)
                _scan(raw, child_start, child_end, (line, next_line), content_type, i == 0,
                      depth + 1, out)
            return
    disposition = headers.get_content_disposition()
    is_body = (content_type in ("text/plain", "text/html") and disposition != "attachment"
               and not headers.get_filename())
    removable = (parent is not None and not is_body and parent != "multipart/alternative"
                 and not (parent == "multipart/related" and first))
    has_cid = bool(str(headers.get("Content-ID", "")).strip())
    is_inline = has_cid and (disposition == "inline"
                             or (disposition is None and parent == "multipart/related"))
    out.append(_Leaf(cut=cut, start=start, end=end, body=body, removable=removable,
                     is_inline=is_inline))


def _leaf_file(raw: bytes, leaf: _Leaf, number: int) -> FilePart:
    part = BytesParser(policy=default).parsebytes(raw[leaf.start:leaf.end])
    file = _file_part(part, number, None)
    if part.get_content_type() == "message/rfc822" or part.is_multipart():
        file = replace(file, data=raw[leaf.body:leaf.end])  # the message as attached
    return replace(file, is_inline=leaf.is_inline)


def split_mime(raw: bytes, budget: int) -> MimeDraft | None:
    """``raw`` without its largest attachment parts, so that its base64 is ``budget`` or less.

    Parts leave largest first; the message body (text, HTML, their alternatives, the
    root of a multipart/related) and anything signed or encrypted never do.  The
    parts that leave come back as FileParts, in the order the message had them.
    None when the message is over the budget even without all the parts that could
    leave.
    """
    leaves: list[_Leaf] = []
    _scan(raw, 0, len(raw), (0, len(raw)), None, True, 0, leaves)
    size = len(raw)
    chosen: list[_Leaf] = []
    for leaf in sorted((x for x in leaves if x.removable), key=lambda x: x.cut[0] - x.cut[1]):
        if _base64_size(size) <= budget:
            break
        chosen.append(leaf)
        size -= leaf.cut[1] - leaf.cut[0]
    if _base64_size(size) > budget:
        return None
    chosen.sort(key=lambda x: x.cut[0])
    kept: list[bytes] = []
    pos = 0
    for leaf in chosen:
        kept.append(raw[pos:leaf.cut[0]])
        pos = leaf.cut[1]
    kept.append(raw[pos:])
    files = tuple(_leaf_file(raw, leaf, n) for n, leaf in enumerate(chosen, start=1))
    return MimeDraft(mime=b"".join(kept), attachments=files)
