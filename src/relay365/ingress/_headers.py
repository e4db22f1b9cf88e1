"""Reading and touching only the header block of a raw message: no MIME parse on the accept path.

Every function here takes a message whose lines end in CRLF (``normalise_newlines`` makes
one); the body is never looked at, so accepting a 30 MB message costs what its headers do.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header, make_header

_NEWLINE = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"[!-9;-~]+[ \t]*:")
_UNFOLD = re.compile(r"\r\n(?=[ \t])")
MAX_SUBJECT = 998


def has_bare_newline(data: bytes) -> bool:
    """Does ``data`` hold a CR or an LF that is not part of a CRLF pair?"""
    pairs = data.count(b"\r\n")
    return data.count(b"\n") != pairs or data.count(b"\r") != pairs


def normalise_newlines(data: bytes) -> bytes:
    """``data`` with every CRLF, lone LF and lone CR made a CRLF."""
    if not has_bare_newline(data):
        return data
    return _NEWLINE.sub(b"\r\n", data)


@dataclass(frozen=True)
class Field:
    name: str
    value: str  # unfolded, without the name and colon, surrounding blanks stripped
    start: int  # byte span of the whole field in the message, its CRLF included
    end: int


@dataclass(frozen=True)
class Header:
    """The header fields of a message and where its header block ends."""

    fields: tuple[Field, ...]
    end: int  # offset of the blank line that ends the header (or of the first non-field line)

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [f.value for f in self.fields if f.name.lower() == wanted]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def addresses(self, *names: str) -> list[str]:
        """The addr-specs of the named address fields, in order (display names dropped)."""
        values = [v for n in names for v in self.get_all(n)]
        return [addr for _, addr in email.utils.getaddresses(values) if addr and "@" in addr]

    @property
    def subject(self) -> str:
        """The Subject, its encoded words decoded; shortened for display."""
        raw = self.get("Subject") or ""
        try:
            text = str(make_header(decode_header(raw)))
        except (HeaderParseError, UnicodeDecodeError, LookupError, ValueError):
            text = raw
        return text[:MAX_SUBJECT]


def read_header(raw: bytes) -> Header:
    """The header block of ``raw`` (CRLF line ends); stops at the blank line."""
    fields: list[Field] = []
    pos = 0
    size = len(raw)
    while pos < size:
        eol = raw.find(b"\r\n", pos)
        end = size if eol < 0 else eol + 2
        if eol == pos:  # the blank line
            break
        if raw[pos:pos + 1] in (b" ", b"\t") and fields:
            last = fields[-1]
            fields[-1] = Field(last.name, "", last.start, end)
        elif _FIELD_NAME.match(raw, pos):
            fields.append(Field("", "", pos, end))
        else:  # not a header line: the body starts here (a message without the blank line)
            break
        pos = end
    return Header(tuple(_decode(raw, f) for f in fields), pos)


def _decode(raw: bytes, field: Field) -> Field:
    text = raw[field.start:field.end].decode("utf-8", "surrogateescape")
    name, _, value = text.partition(":")
    return Field(name.strip(), _UNFOLD.sub("", value).strip(), field.start, field.end)


def remove_fields(raw: bytes, header: Header, *names: str) -> bytes:
    """``raw`` without the named header fields."""
    wanted = {n.lower() for n in names}
    spans = [(f.start, f.end) for f in header.fields if f.name.lower() in wanted]
    if not spans:
        return raw
    parts = []
    pos = 0
    for start, end in spans:
        parts.append(raw[pos:start])
        pos = end
    parts.append(raw[pos:])
    return b"".join(parts)


def add_fields(raw: bytes, header: Header, fields: list[tuple[str, str]]) -> bytes:
    """``raw`` with ``fields`` added at the end of its header block."""
    if not fields:
        return raw
    block = b"".join(f"{name}: {value}\r\n".encode() for name, value in fields)
    head, rest = raw[:header.end], raw[header.end:]
    if head and not head.endswith(b"\r\n"):  # a last header line without its CRLF
        head += b"\r\n"
    if not rest.startswith(b"\r\n"):  # the blank line between header and body must exist
        rest = b"\r\n" + rest
    return head + block + rest
