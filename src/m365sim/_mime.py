"""Mail as Graph handles it: MIME read for its recipients, MIME built from message JSON.

A MIME sendMail is kept as the client built it.  Graph reads the recipients from the
To, Cc and Bcc headers and removes Bcc from the copy recipients see, so only the
header block is read and changed here, as bytes: a 10 KB message costs a few dozen
microseconds, not a full parse and re-serialisation.

A JSON message (sendMail, or a draft at /send) becomes the MIME Exchange would build:
From, Sender (send on behalf), To, Cc, Reply-To, Subject, Date, Message-ID, the
``x-`` headers, the body, and file attachments, inline ones in a multipart/related.

A draft created from MIME keeps its MIME; attachments added to it afterwards (a POST
or an upload session) become parts of it at /send, written into the bytes next to
the client's own parts: inline ones into its multipart/related when it has one, the
others into its multipart/mixed, which wraps the original root when there is none.

Problems raise ``Rejection`` naming an entry of ``data/graph_errors.toml``.
"""

from __future__ import annotations

import binascii
import itertools
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser
from email.policy import SMTP, compat32
from email.policy import default as default_policy
from email.utils import formataddr, getaddresses
from functools import cache
from typing import Any


class Rejection(Exception):
    """A request Graph refuses; ``key`` names an entry of ``data/graph_errors.toml``."""

    def __init__(self, key: str, *, retry_after: float | None = None, **fmt: Any) -> None:
        super().__init__(key)
        self.key = key
        self.retry_after = retry_after
        self.fmt = fmt


# ---- addresses -------------------------------------------------------------------------
# Exchange resolves what it can route: local@domain, no spaces, no empty labels.
_ADDRESS = re.compile(r"[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\".]+(?:\.[^@\s<>()\[\],;:\".]+)*")


def is_address(address: str) -> bool:
    return _ADDRESS.fullmatch(address) is not None


def check_recipients(addresses: list[str], limit: int) -> None:
    """Graph's recipient rules: at least one, each resolvable, at most ``limit``."""
    if not addresses:
        raise Rejection("invalid_recipients_none")
    for address in addresses:
        if not is_address(address):
            raise Rejection("invalid_recipients_unresolved", address=address)
    if len(addresses) > limit:
        raise Rejection("too_many_recipients", count=len(addresses), limit=limit)


# ---- MIME submissions ------------------------------------------------------------------
_WHITESPACE = b" \t\r\n"
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322: printable ASCII except the colon


def decode_mime_body(body: bytes) -> bytes:
    """The message in a text/plain sendMail body (base64; line breaks allowed, as .NET does)."""
    try:
        raw = binascii.a2b_base64(body, strict_mode=True)
    except binascii.Error:
        try:  # most clients send one line; others wrap it, which .NET accepts too
            raw = binascii.a2b_base64(body.translate(None, _WHITESPACE), strict_mode=True)
        except binascii.Error as exc:
            raise Rejection("mime_invalid_base64") from exc
    if not raw:
        raise Rejection("mime_invalid_base64")
    return raw


@dataclass
class MimeHead:
    """The header block of a submitted message: where it ends and the fields Graph reads."""

    end: int  # offset just past the last header line
    eol: bytes
    # Only From, Sender, To, Cc, Bcc, Date and Message-ID: what Graph reads.
    fields: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str) -> list[str]:
        return self.fields.get(name, [])

    def has(self, name: str) -> bool:
        return name in self.fields

    def from_address(self) -> str | None:
        values = self.get("from")
        found = header_addresses(values[:1])
        return found[0] if found else None

    def recipients(self) -> list[str]:
        return header_addresses(self.get("to") + self.get("cc") + self.get("bcc"))


# Header lines from the start: a field ("Name: value") and its folded continuation
# lines.  Where this stops, the headers stop: at the blank line, or at a stray line,
# as email.parser decides.  One regex pass, so the body is never scanned.
_HEADER_LINES = re.compile(rb"(?:[!-9;-~]+[ \t]*:[^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*)*")
_READ_FIELDS = re.compile(
    rb"^(from|sender|to|cc|bcc|date|message-id)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)",
    re.IGNORECASE | re.MULTILINE)
_FOLDING = re.compile(rb"\r?\n")


def read_head(raw: bytes) -> MimeHead:
    """Read the header block, as a header-only parser would; not MIME → Rejection."""
    end = _HEADER_LINES.match(raw).end()  # type: ignore[union-attr]  # "*" always matches
    if end == 0:  # the message does not start with a header: not MIME
        raise Rejection("mime_invalid_base64")
    block = raw[:end]
    head = MimeHead(end=end, eol=b"\r\n" if b"\r\n" in block else b"\n")
    for match in _READ_FIELDS.finditer(block):
        value = _FOLDING.sub(b"", match.group(2)).rstrip(b"\r")
        head.fields.setdefault(match.group(1).decode().lower(), []).append(
            value.decode("utf-8", "replace"))
    return head


def header_addresses(values: list[str]) -> list[str]:
    """The addresses in address-list header values (To, Cc, Bcc, From).

    Nearly every header is a plain list (``a@x, Name <b@y>``); those are split here,
    as email.utils.getaddresses would but at a tenth of its cost.  Quotes, comments,
    groups and other rarities go to getaddresses itself.
    """
    out: list[str] = []
    for value in values:
        simple = _plain_addresses(value)
        if simple is None:
            # Group syntax ("undisclosed-recipients:;") yields empty addresses: no recipient.
            out += [address for _, address in getaddresses([value]) if address]
        else:
            out += simple
    return out


_NOT_PLAIN = re.compile(r'["()\\:;]')  # quotes, comments, escapes, groups
_SPACE_OR_GT = re.compile(r"[\s>]")


def _plain_addresses(value: str) -> list[str] | None:
    if _NOT_PLAIN.search(value):
        return None
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        lt = item.find("<")
        if lt < 0:
            if _SPACE_OR_GT.search(item):
                return None
            out.append(item)
        elif item.endswith(">") and item.count("<") == 1 and item.count(">") == 1:
            out.append(item[lt + 1:-1].strip())
        else:
            return None
    return out


@cache
def _fields_pattern(names: tuple[str, ...]) -> re.Pattern[bytes]:
    alternatives = b"|".join(re.escape(n.encode()) for n in names)
    return re.compile(rb"^(?:" + alternatives + rb")[ \t]*:.*(?:\r?\n[ \t].*)*(?:\r?\n|\Z)",
                      re.IGNORECASE | re.MULTILINE)


def restamp(raw: bytes, head: MimeHead, *, add: list[tuple[str, str]], drop: tuple[str, ...]
            ) -> bytes:
    """``raw`` with fields ``drop`` removed and ``add`` put on top, body bytes untouched."""
    drop = tuple(n for n in drop if head.has(n))
    if not add and not drop:
        return raw
    block = raw[:head.end]
    if drop:
        block = _fields_pattern(drop).sub(b"", block)
    top = b"".join(f"{name}: {value}".encode() + head.eol for name, value in add)
    return top + block + raw[head.end:]


# Unique per process run plus a counter: make_msgid would look up the FQDN, and a
# fresh uuid4 costs a system call, on every message of the hot path.
_ID_PREFIX = uuid.uuid4().hex[:12].upper()
_ID_COUNTER = itertools.count(1)
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def message_id(domain: str = "m365sim.prod.outlook.com") -> str:
    """A Message-ID in Exchange's shape."""
    return f"<{_ID_PREFIX}{next(_ID_COUNTER):012X}@{domain}>"


def mail_date(now: datetime) -> str:
    """RFC 5322 date in UTC, as email.utils.format_datetime writes it, at a tenth of the cost."""
    t = now.astimezone(UTC) if now.tzinfo is not None else now
    return (f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
            f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} +0000")


# ---- message JSON ----------------------------------------------------------------------
@dataclass(frozen=True)
class Attachment:
    name: str
    content_type: str
    data: bytes
    is_inline: bool = False
    content_id: str | None = None


def _property(message: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = message.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise Rejection("invalid_property", name=name)
    return value


def json_recipients(message: dict[str, Any], name: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of a recipient collection such as toRecipients."""
    out = []
    for item in _property(message, name, list, []):
        email = item.get("emailAddress") if isinstance(item, dict) else None
        if not isinstance(email, dict):
            raise Rejection("invalid_property", name=name)
        address, display = email.get("address"), email.get("name")
        if not isinstance(address, str) or not isinstance(display, str | None):
            raise Rejection("invalid_property", name=name)
        out.append((display or "", address.strip()))
    return out


def json_from(message: dict[str, Any]) -> tuple[str, str] | None:
    value = _property(message, "from", dict, None)
    if value is None:
        return None
    pairs = json_recipients({"from": [value]}, "from")
    return pairs[0]


def json_headers(message: dict[str, Any]) -> list[tuple[str, str]]:
    """internetMessageHeaders: at most 5 (an empty list is refused too), each named x-…."""
    headers = _property(message, "internetMessageHeaders", list, None)
    if headers is None:
        return []
    if not headers or len(headers) > 5:
        raise Rejection("invalid_header_collection")
    out = []
    for h in headers:
        name = h.get("name") if isinstance(h, dict) else None
        value = h.get("value") if isinstance(h, dict) else None
        if not isinstance(name, str) or not isinstance(value, str):
            raise Rejection("invalid_property", name="internetMessageHeaders")
        if not name.lower().startswith("x-") or not _FIELD_NAME.fullmatch(name):
            raise Rejection("invalid_header", name=name)
        out.append((name, value))
    return out


def json_attachments(message: dict[str, Any]) -> list[Attachment]:
    return [file_attachment(a) for a in _property(message, "attachments", list, [])]


def file_attachment(item: Any) -> Attachment:
    """A #microsoft.graph.fileAttachment with its contentBytes decoded."""
    if not isinstance(item, dict):
        raise Rejection("invalid_property", name="attachments")
    kind = item.get("@odata.type", "#microsoft.graph.fileAttachment")
    if str(kind).lower() != "#microsoft.graph.fileattachment":
        raise Rejection("attachment_unsupported", type=kind)
    content = item.get("contentBytes")
    name = item.get("name")
    if not isinstance(content, str) or not isinstance(name, str):
        raise Rejection("invalid_property", name="contentBytes" if name else "name")
    try:
        data = binascii.a2b_base64(content.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise Rejection("invalid_property", name="contentBytes") from exc
    return Attachment(
        name=name,
        content_type=str(item.get("contentType") or "application/octet-stream"),
        data=data,
        is_inline=bool(item.get("isInline", False)),
        content_id=item.get("contentId") or None,
    )


@dataclass(frozen=True)
class Envelope:
    """Who the built message is from and to, as the mailbox sets it at submission."""

    sender: tuple[str, str]  # From
    on_behalf: tuple[str, str] | None  # Sender, when sending on behalf of ``sender``
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    reply_to: list[tuple[str, str]]


def build_mime(message: dict[str, Any], envelope: Envelope, *, attachments: list[Attachment],
               headers: list[tuple[str, str]], now: datetime) -> bytes:
    """The RFC 5322 message Exchange makes of a Graph message (Bcc is never written)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = formataddr(envelope.sender, charset="utf-8")
    if envelope.on_behalf is not None:
        msg["Sender"] = formataddr(envelope.on_behalf, charset="utf-8")
    for name, pairs in (("To", envelope.to), ("Cc", envelope.cc), ("Reply-To", envelope.reply_to)):
        if pairs:
            msg[name] = ", ".join(formataddr(p, charset="utf-8") for p in pairs)
    msg["Subject"] = str(_property(message, "subject", str, ""))
    msg["Date"] = mail_date(now)
    msg["Message-ID"] = _property(message, "internetMessageId", str, None) or message_id()
    importance = str(_property(message, "importance", str, "normal")).lower()
    if importance in ("high", "low"):
        msg["Importance"] = importance
    for name, value in headers:
        msg[name] = value
    _set_body(msg, _property(message, "body", dict, {}))
    _attach(msg, attachments)
    return msg.as_bytes()


def _set_body(msg: EmailMessage, body: dict[str, Any]) -> None:
    content = body.get("content") or ""
    if not isinstance(content, str):
        raise Rejection("invalid_property", name="body")
    html = str(body.get("contentType", "text")).lower() == "html"
    msg.set_content(content, subtype="html" if html else "plain")


def _attach(msg: EmailMessage, attachments: list[Attachment]) -> None:
    # Inline parts first: add_related wraps the body in multipart/related, and
    # add_attachment then wraps that in multipart/mixed, the shape Outlook sends.
    for a in sorted(attachments, key=lambda a: not a.is_inline):
        maintype, _, subtype = a.content_type.partition("/")
        if not maintype or not subtype:
            maintype, subtype = "application", "octet-stream"
        if a.is_inline:
            cid = f"<{a.content_id}>" if a.content_id else None
            msg.add_related(a.data, maintype, subtype, cid=cid, filename=a.name,
                            disposition="inline")
        else:
            msg.add_attachment(a.data, maintype, subtype, filename=a.name)


# ---- drafts created from MIME ----------------------------------------------------------
def mime_draft_message(raw: bytes) -> dict[str, Any]:
    """What Graph shows of a draft created from MIME: subject, body, addresses, ids."""
    msg = BytesParser(policy=default_policy).parsebytes(raw)
    message: dict[str, Any] = {"subject": str(msg.get("Subject", ""))}
    body = msg.get_body(preferencelist=("html", "plain")) if isinstance(msg, EmailMessage) else None
    if body is not None:
        try:
            content = str(body.get_content())
        except (LookupError, ValueError):  # an unknown charset
            content = ""
        html = body.get_content_subtype() == "html"
        message["body"] = {"contentType": "html" if html else "text", "content": content}
    for name, key in (("to", "toRecipients"), ("cc", "ccRecipients"), ("bcc", "bccRecipients"),
                      ("reply-to", "replyTo")):
        message[key] = [_email_address(n, a) for n, a in _header_pairs(msg, name)]
    for name in ("from", "sender"):
        pairs = _header_pairs(msg, name)
        if pairs:
            message[name] = _email_address(*pairs[0])
    if msg.get("Message-ID"):
        message["internetMessageId"] = str(msg["Message-ID"]).strip()
    message["hasAttachments"] = any(True for _ in msg.iter_attachments()) \
        if isinstance(msg, EmailMessage) and msg.is_multipart() else False
    return message


def _header_pairs(msg: Any, name: str) -> list[tuple[str, str]]:
    """(display name, address) of an address header, decoded (RFC 2047 names too)."""
    out: list[tuple[str, str]] = []
    for value in msg.get_all(name, []):
        addresses = getattr(value, "addresses", None)
        pairs = ([(a.display_name, a.addr_spec) for a in addresses] if addresses is not None
                 else getaddresses([str(value)]))
        out += [(n, a) for n, a in pairs if a and "@" in a]
    return out


def _email_address(name: str, address: str) -> dict[str, Any]:
    email = {"address": address}
    if name:
        email["name"] = name
    return {"emailAddress": email}


def append_attachments(raw: bytes, attachments: list[Attachment]) -> bytes:
    """``raw`` with ``attachments`` as MIME parts; every byte of ``raw`` kept, in order.

    Inline attachments go at the end of the first multipart/related, when there is
    one; the others at the end of the root multipart/mixed, which is made around the
    original root when the root is something else.
    """
    if not attachments:
        return raw
    eol = read_head(raw).eol
    tree = BytesParser(policy=compat32).parsebytes(raw)
    related = next((p.get_boundary() for p in _own_parts(tree)
                    if p.get_content_type() == "multipart/related" and p.get_boundary()), None)
    inline = [a for a in attachments if a.is_inline and related is not None]
    others = [a for a in attachments if not (a.is_inline and related is not None)]
    if inline and related is not None:
        raw = _insert_parts(raw, related, [_attachment_part(a, eol) for a in inline], eol)
    if others:
        mixed = tree.get_boundary() if tree.get_content_type() == "multipart/mixed" else None
        if mixed is None:
            raw, mixed = _wrap_in_mixed(raw, eol)
        raw = _insert_parts(raw, mixed, [_attachment_part(a, eol) for a in others], eol)
    return raw


def _own_parts(part: Message) -> Iterator[Message]:
    """``part`` and the parts it is made of, not those of a message attached to it."""
    yield part
    if part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), list):
        for child in part.get_payload():
            if isinstance(child, Message):
                yield from _own_parts(child)


def _attachment_part(a: Attachment, eol: bytes) -> bytes:
    """One attachment as a MIME body part (headers, blank line, base64), no final line end."""
    maintype, _, subtype = a.content_type.split(";", 1)[0].strip().lower().partition("/")
    if not maintype or not subtype or maintype == "multipart":
        maintype, subtype = "application", "octet-stream"
    part = MIMEPart(policy=SMTP.clone(linesep=eol.decode()))
    cid = f"<{a.content_id.strip().strip('<>')}>" if a.content_id else None
    part.set_content(a.data, maintype, subtype, filename=a.name, cid=cid,
                     disposition="inline" if a.is_inline else "attachment")
    data = part.as_bytes()
    return data[:-len(eol)] if data.endswith(eol) else data


def _close_delimiter(boundary: str) -> re.Pattern[bytes]:
    b = re.escape(boundary.encode("ascii", "surrogateescape"))
    return re.compile(rb"^--" + b + rb"--[ \t]*\r?$", re.MULTILINE)


def _insert_parts(raw: bytes, boundary: str, parts: list[bytes], eol: bytes) -> bytes:
    """``parts`` added before the close delimiter of the multipart with ``boundary``."""
    opening = b"--" + boundary.encode("ascii", "surrogateescape") + eol
    added = b"".join(opening + p + eol for p in parts)
    close = _close_delimiter(boundary).search(raw)
    if close is None:  # a truncated multipart: close it after the new parts
        ending = b"" if raw.endswith(b"\n") else eol
        return raw + ending + added + opening[:-len(eol)] + b"--" + eol
    return raw[:close.start()] + added + raw[close.start():]


# Content-* fields, with their continuation lines: they describe the root's content,
# so they move into the first part when a multipart/mixed is made around it.
_CONTENT_FIELDS = re.compile(rb"^content-[!-9;-~]*[ \t]*:.*(?:\r?\n[ \t].*)*(?:\r?\n|\Z)",
                             re.IGNORECASE | re.MULTILINE)


def _wrap_in_mixed(raw: bytes, eol: bytes) -> tuple[bytes, str]:
    """``raw`` as the only part of a new multipart/mixed root; (message, boundary)."""
    head = read_head(raw)
    block, rest = raw[:head.end], raw[head.end:]
    if block and not block.endswith(b"\n"):
        block += eol
    content = b"".join(m.group(0) for m in _CONTENT_FIELDS.finditer(block))
    block = _CONTENT_FIELDS.sub(b"", block)
    boundary = f"=_m365sim_{uuid.uuid4().hex}"
    if not re.search(rb"^mime-version[ \t]*:", block, re.IGNORECASE | re.MULTILINE):
        block += b"MIME-Version: 1.0" + eol
    block += f'Content-Type: multipart/mixed; boundary="{boundary}"'.encode() + eol
    if not rest.startswith((b"\r\n", b"\n")):  # no body, or no blank line before it
        rest = eol + rest
    first = content + rest
    body = eol + b"--" + boundary.encode() + eol + first + eol + b"--" + boundary.encode() + b"--" + eol
    return block + body, boundary
