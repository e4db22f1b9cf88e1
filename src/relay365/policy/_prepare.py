"""Turning a locally submitted message (sendmail, HTTP API) into a ``NewMessage``, or a refusal.

Local submissions get what Postfix's cleanup gives mail that did not come by SMTP: a From
when there is none, a Date and a Message-ID when missing, and no Bcc header (the Bcc
recipients stay in the envelope; the transport tells Microsoft 365 about them).  Mail that
came by SMTP is kept byte for byte and never goes through here.
"""

from __future__ import annotations

import email.utils

from . import replies
from ._headers import Header, add_fields, read_header, remove_fields
from ._outbox import MessageSource, NewMessage
from ._policy import Client, Policy, Refusal


def dedupe(addresses: list[str]) -> tuple[str, ...]:
    """``addresses`` in order, each once (compared without case)."""
    seen: dict[str, str] = {}
    for address in addresses:
        seen.setdefault(address.lower(), address)
    return tuple(seen.values())


def prepare(policy: Policy, raw: bytes, *, sender: str | None, recipients: list[str],
            client: Client | None, source: MessageSource, client_label: str,
            display_name: str | None = None, header: Header | None = None) -> NewMessage | Refusal:
    """The message to enqueue from ``raw`` (CRLF line ends), after every policy check.

    ``sender`` None means the header From, else the policy's default sender.
    ``recipients`` are addr-specs; the caller has gathered them (arguments, -t, JSON).
    """
    header = header or read_header(raw)
    header_from = header.addresses("From")
    envelope_sender = sender or (header_from[0] if header_from else policy.default_sender(client))
    if not envelope_sender:
        return Refusal("sender", "no_sender", replies.NO_SENDER, replies.NO_SENDER_FIX)
    route = policy.route(envelope_sender, client)
    if isinstance(route, Refusal):
        return route
    refusal = policy.check_header_from(route, header_from, client)
    if refusal is not None:
        return refusal
    rcpts = dedupe(recipients)
    for rcpt in rcpts:
        refusal = policy.check_recipient(rcpt)
        if refusal is not None:
            return refusal
    refusal = policy.check_recipients(len(rcpts))
    if refusal is not None:
        return refusal

    added: list[tuple[str, str]] = []
    if not header.get_all("From"):
        added.append(("From", email.utils.formataddr((display_name or "", envelope_sender), charset="utf-8")))
    if not header.get_all("Date"):
        added.append(("Date", email.utils.formatdate(localtime=True)))
    if not header.get_all("Message-ID"):
        domain = envelope_sender.rpartition("@")[2] or None
        added.append(("Message-ID", email.utils.make_msgid(domain=domain)))
    if header.get_all("Bcc"):
        raw = remove_fields(raw, header, "Bcc")
        header = read_header(raw)
    raw = add_fields(raw, header, added)

    refusal = policy.check_size(len(raw))
    if refusal is not None:
        return refusal
    return NewMessage(connection=route.connection.name, sender=envelope_sender, recipients=rcpts,
                      raw=raw, source=source, client=client_label, subject=header.subject)
