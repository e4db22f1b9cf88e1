"""The message as the application built it, with the one change Graph needs: Bcc.

Graph's MIME sendMail takes its recipients from the To, Cc and Bcc headers, not from
an envelope.  A client that sends Bcc over SMTP lists the address in RCPT TO and strips
the header, so Graph would silently skip that recipient.  ``prepare_mime`` adds every
envelope recipient the headers do not name to a ``Bcc:`` field (Graph removes Bcc from
the copies recipients see).  Only the header block is edited, as bytes: the body and
every MIME part stay byte-identical.
"""

from __future__ import annotations

import re
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import formataddr, getaddresses

from ..errors import PermanentError
from ._types import Envelope

# An envelope address that can go into a header as it is: no whitespace, controls or
# list/angle punctuation (anything else could break the field, or inject another).
_PLAIN_ADDRESS = re.compile(r"[^\s<>,;\"()\\\x00-\x1f\x7f]+@[^\s<>,;\"()\\@\x00-\x1f\x7f]+")
_BCC_FIELD = re.compile(rb"^bcc[ \t]*:(?P<value>[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)(?P<eol>\r?\n|\Z)",
                        re.IGNORECASE | re.MULTILINE)
_FROM_FIELDS = re.compile(rb"^(?:from|sender)[ \t]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*(?:\r?\n|\Z)",
                          re.IGNORECASE | re.MULTILINE)
_ANY_BCC_FIELD = re.compile(rb"^(?:resent-)?bcc[ \t]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*(?:\r?\n|\Z)",
                            re.IGNORECASE | re.MULTILINE)


def split_head(raw: bytes) -> tuple[bytes, bytes]:
    """(header block up to and including its last line break, the blank line and body)."""
    pos = 0
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        end = len(raw) if nl < 0 else nl + 1
        if raw[pos:end] in (b"\r\n", b"\n"):
            return raw[:pos], raw[pos:]
        pos = end
    return raw, b""


def header_addresses(head: bytes, *names: str) -> list[str]:
    """The addresses in the header fields ``names`` of a header block."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(head)
    values = [str(v) for name in names for v in headers.get_all(name, [])]
    return [address for _, address in getaddresses(values) if address]


def from_address(raw: bytes) -> str | None:
    """The first address of the From field, if the message has one."""
    found = header_addresses(split_head(raw)[0], "from")
    return found[0] if found else None


def missing_recipients(envelope: Envelope) -> list[str]:
    """Envelope recipients that no To, Cc or Bcc field names, in envelope order."""
    head, _ = split_head(envelope.raw)
    named = {a.lower() for a in header_addresses(head, "to", "cc", "bcc")}
    missing: list[str] = []
    for address in envelope.recipients:
        if address.lower() not in named:
            named.add(address.lower())
            missing.append(address)
    return missing


def prepare_mime(envelope: Envelope) -> bytes:
    """The message for Graph's MIME sendMail: as built, plus Bcc for envelope-only recipients.

    Returns ``envelope.raw`` itself when every recipient is already named.
    """
    missing = missing_recipients(envelope)
    if not missing:
        return envelope.raw
    for address in missing:
        if not _PLAIN_ADDRESS.fullmatch(address):
            raise PermanentError(f"envelope recipient {address!r} cannot be written into a Bcc "
                                 f"header (message from {envelope.sender})",
                                 entry="M365-INVALID-RECIPIENT")
    head, rest = split_head(envelope.raw)
    eol = b"\r\n" if b"\r\n" in head or (not head and rest.startswith(b"\r\n")) else b"\n"
    # One address per folded line keeps every line far below the 998-octet limit.
    listed = (b"," + eol + b" ").join(a.encode("utf-8") for a in missing)
    existing = _BCC_FIELD.search(head)
    if existing is None:
        if head and not head.endswith(b"\n"):
            head += eol
        head += b"Bcc: " + listed + eol
    else:
        value = existing.group("value")
        joined = value + b"," + eol + b" " + listed if value.strip() else b" " + listed
        head = (head[:existing.start("value")] + joined + (existing.group("eol") or eol)
                + head[existing.end():])
    return head + rest


def without_bcc(raw: bytes) -> bytes:
    """``raw`` without its Bcc (and Resent-Bcc) fields, as an SMTP client submits it.

    Over SMTP the envelope names every recipient; the header would only show the blind
    copies to everyone if a server kept it.  The body is untouched.
    """
    head, rest = split_head(raw)
    stripped = _ANY_BCC_FIELD.sub(b"", head)
    return raw if stripped == head else stripped + rest


def with_from(raw: bytes, address: str, display_name: str | None = None) -> bytes:
    """``raw`` sent as ``address`` (force_from): its From and Sender fields replaced.

    Only the header block changes; the body and every other field stay as they are.
    """
    if not _PLAIN_ADDRESS.fullmatch(address):
        raise PermanentError(f"the connection's sender {address!r} cannot be written into a From "
                             "field", entry="R365-CONFIG")
    head, rest = split_head(raw)
    eol = b"\r\n" if b"\r\n" in head or (not head and rest.startswith(b"\r\n")) else b"\n"
    field = formataddr((display_name or "", address), charset="utf-8").encode("utf-8")
    head = _FROM_FIELDS.sub(b"", head)
    if head and not head.endswith(b"\n"):
        head += eol
    return b"From: " + field + eol + head + rest
