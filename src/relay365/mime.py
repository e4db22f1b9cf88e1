"""The one reader and editor of message heads: every header relay365 reads or changes, here.

A message is bytes from the moment it arrives until Microsoft 365 takes it.  relay365 reads
its head once on the way in (``read_head``: the From, the recipients named in To/Cc/Bcc, the
Subject) and once on the way out (the delivery agent, ``relay365.outbound``), and edits only
the head, as bytes: the body and every MIME part stay byte-identical, so accepting or sending
a 30 MB message costs what its head does.

    head = read_head(raw)
    head.addresses("From"), head.subject
    raw = with_from(raw, head, "info@contoso.com", "Contoso")      # force_from
    raw = with_bcc(raw, head, ["hidden@example.com"])               # Graph reads Bcc from the head
    raw = without_fields(raw, head, "Bcc", "Resent-Bcc")

Lines may end in CRLF or in LF alone (``normalise_newlines`` makes CRLF of every kind); a
field added here takes the line ending the head already uses.  Every editor takes the
``Head`` read from the same bytes, so no header is parsed twice.  Nothing here does I/O or
knows about connections: the rules (which From to rewrite, which recipients to add) belong
to the callers; what this module refuses (an address that cannot go into a field as it is)
it refuses with ``ValueError``.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header, make_header

MAX_SUBJECT = 998

_NEWLINE = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"[!-9;-~]+[ \t]*:")
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
# An address that can go into a header as it is: no whitespace, controls or list/angle
# punctuation (anything else could break the field, or inject another).
_PLAIN_ADDRESS = re.compile(r"[^\s<>,;\"()\\\x00-\x1f\x7f]+@[^\s<>,;\"()\\@\x00-\x1f\x7f]+")


def has_bare_newline(data: bytes) -> bool:
    """Does ``data`` hold a CR or an LF that is not part of a CRLF pair?"""
    pairs = data.count(b"\r\n")
    return data.count(b"\n") != pairs or data.count(b"\r") != pairs


def normalise_newlines(data: bytes) -> bytes:
    """``data`` with every CRLF, lone LF and lone CR made a CRLF."""
    if not has_bare_newline(data):
        return data
    return _NEWLINE.sub(b"\r\n", data)


def is_plain_address(address: str) -> bool:
    """Can ``address`` be written into a header field as it is (no quoting, nothing injected)?"""
    return _PLAIN_ADDRESS.fullmatch(address) is not None


@dataclass(frozen=True)
class Field:
    name: str
    value: str  # unfolded, without the name and colon, surrounding blanks stripped
    start: int  # byte span of the whole field in the message, its line break included
    end: int


@dataclass(frozen=True)
class Head:
    """The header fields of a message, where its head ends, and the line ending it uses."""

    fields: tuple[Field, ...]
    end: int  # offset of the blank line that ends the head (or of the first line that is no field)
    eol: bytes  # b"\r\n", or b"\n" for a message written with bare LFs

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [f.value for f in self.fields if f.name.lower() == wanted]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        wanted = name.lower()
        return any(f.name.lower() == wanted for f in self.fields)

    def addresses(self, *names: str) -> list[str]:
        """The addr-specs of the named address fields, in order (display names dropped)."""
        values = [v for n in names for v in self.get_all(n)]
        return [addr for _, addr in email.utils.getaddresses(values) if addr and "@" in addr]

    @property
    def from_address(self) -> str | None:
        """The first address of the From field, if the message has one."""
        found = self.addresses("From")
        return found[0] if found else None

    @property
    def subject(self) -> str:
        """The Subject, its encoded words decoded; shortened for display."""
        raw = self.get("Subject") or ""
        try:
            text = str(make_header(decode_header(raw)))
        except (HeaderParseError, UnicodeDecodeError, LookupError, ValueError):
            text = raw
        return text[:MAX_SUBJECT]

    def missing_recipients(self, recipients: tuple[str, ...] | list[str]) -> list[str]:
        """The ``recipients`` that no To, Cc or Bcc field names, in their order, each once."""
        named = {a.lower() for a in self.addresses("To", "Cc", "Bcc")}
        missing: list[str] = []
        for address in recipients:
            if address.lower() not in named:
                named.add(address.lower())
                missing.append(address)
        return missing


def read_head(raw: bytes) -> Head:
    """The head of ``raw``: its fields up to the blank line (or the first line that is no field)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    size = len(raw)
    while pos < size:
        nl = raw.find(b"\n", pos)
        end = size if nl < 0 else nl + 1
        if raw[pos:end] in (b"\r\n", b"\n"):  # the blank line
            break
        if raw[pos:pos + 1] in (b" ", b"\t") and spans:
            spans[-1] = (spans[-1][0], end)
        elif _FIELD_NAME.match(raw, pos):
            spans.append((pos, end))
        else:  # not a header line: the body starts here (a message without the blank line)
            break
        pos = end
    head_bytes = raw[:pos]
    eol = b"\n" if b"\n" in head_bytes and b"\r\n" not in head_bytes else b"\r\n"
    if not head_bytes and raw[pos:pos + 1] == b"\n":
        eol = b"\n"
    return Head(tuple(_field(raw, start, end) for start, end in spans), pos, eol)


def _field(raw: bytes, start: int, end: int) -> Field:
    text = raw[start:end].decode("utf-8", "surrogateescape")
    name, _, value = text.partition(":")
    return Field(name.strip(), _UNFOLD.sub("", value).strip(), start, end)


def split_head(raw: bytes) -> tuple[bytes, bytes]:
    """(the head up to and including its last line break, the blank line and the body)."""
    end = read_head(raw).end
    return raw[:end], raw[end:]


def without_fields(raw: bytes, head: Head, *names: str) -> bytes:
    """``raw`` without the named header fields (``raw`` itself when it has none)."""
    wanted = {n.lower() for n in names}
    spans = [(f.start, f.end) for f in head.fields if f.name.lower() in wanted]
    if not spans:
        return raw
    parts = []
    pos = 0
    for start, end in spans:
        parts.append(raw[pos:start])
        pos = end
    parts.append(raw[pos:])
    return b"".join(parts)


def with_fields(raw: bytes, head: Head, fields: list[tuple[str, str]], *, first: bool = False) -> bytes:
    """``raw`` with ``fields`` added at the end of its head (at its start with ``first``)."""
    if not fields:
        return raw
    eol = head.eol
    block = b"".join(f"{name}: {value}".encode("utf-8", "surrogateescape") + eol for name, value in fields)
    if first:
        return block + raw
    top, rest = raw[:head.end], raw[head.end:]
    if top and not top.endswith(b"\n"):  # a last header line without its line break
        top += eol
    if not rest.startswith((b"\r\n", b"\n")):  # the blank line between head and body must exist
        rest = eol + rest
    return top + block + rest


def with_from(raw: bytes, head: Head, address: str, display_name: str | None = None) -> bytes:
    """``raw`` sent as ``address``: its From and Sender fields replaced by one From, first in the head."""
    if not is_plain_address(address):
        raise ValueError(f"{address!r} cannot be written into a From field")
    field = email.utils.formataddr((display_name or "", address), charset="utf-8")
    rest = without_fields(raw, head, "From", "Sender")
    return with_fields(rest, head, [("From", field)], first=True)


def with_bcc(raw: bytes, head: Head, addresses: list[str]) -> bytes:
    """``raw`` with ``addresses`` added to its Bcc field (one is made when it has none).

    One address per folded line keeps every line far below the 998-octet limit.
    """
    if not addresses:
        return raw
    for address in addresses:
        if not is_plain_address(address):
            raise ValueError(f"{address!r} cannot be written into a Bcc field")
    eol = head.eol.decode("ascii")
    existing = [f for f in head.fields if f.name.lower() == "bcc"]
    listed = f",{eol} ".join(addresses)
    if not existing:
        return with_fields(raw, head, [("Bcc", listed)])
    bcc = existing[0]
    value = f"{bcc.value},{eol} {listed}" if bcc.value else listed
    field = f"{raw[bcc.start:bcc.end].decode('utf-8', 'surrogateescape').partition(':')[0]}: {value}"
    return raw[:bcc.start] + field.encode("utf-8", "surrogateescape") + head.eol + raw[bcc.end:]
