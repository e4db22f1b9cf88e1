"""Turning a locally submitted message (sendmail, HTTP API, Client) into a ``NewMessage``, or a refusal.

Local submissions get what Postfix's cleanup gives mail that did not come by SMTP: a From
when there is none, a Date and a Message-ID when missing, and no Bcc header (the Bcc
recipients stay in the envelope; the delivery agent tells Microsoft 365 about them).  Mail that
came by SMTP is kept byte for byte and never goes through here.
"""

from __future__ import annotations

import email.utils

from ..mime import Head, read_head, with_fields, without_fields
from ..store import MessageSource, NewMessage
from . import replies
from ._policy import Client, Policy, Refusal


def dedupe(addresses: list[str]) -> tuple[str, ...]:
    """``addresses`` in order, each once (compared without case)."""
    seen: dict[str, str] = {}
    for address in addresses:
        seen.setdefault(address.lower(), address)
    return tuple(seen.values())


def prepare(policy: Policy, raw: bytes, *, sender: str | None, recipients: list[str],
            client: Client | None, source: MessageSource, client_label: str,
            display_name: str | None = None, head: Head | None = None,
            connection: str | None = None) -> NewMessage | Refusal:
    """The message to enqueue from ``raw`` (CRLF line ends), after every policy check.

    ``sender`` None means the header From, else the policy's default sender.
    ``recipients`` are addr-specs; the caller has gathered them (arguments, -t, JSON).
    ``connection`` names the connection instead of routing by sender (the Python API's).
    """
    head = head or read_head(raw)
    header_from = head.addresses("From")
    envelope_sender = sender or (header_from[0] if header_from else policy.default_sender(client))
    if not envelope_sender:
        return Refusal("sender", "no_sender", replies.NO_SENDER, replies.NO_SENDER_FIX)
    route = (policy.route(envelope_sender, client) if connection is None
             else policy.route_to(connection, envelope_sender, client))
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
    refusal = policy.check_recipients(len(rcpts), route)
    if refusal is not None:
        return refusal

    added: list[tuple[str, str]] = []
    if not head.has("From"):
        added.append(("From", email.utils.formataddr((display_name or "", envelope_sender), charset="utf-8")))
    if not head.has("Date"):
        added.append(("Date", email.utils.formatdate(localtime=True)))
    if not head.has("Message-ID"):
        domain = envelope_sender.rpartition("@")[2] or None
        added.append(("Message-ID", email.utils.make_msgid(domain=domain)))
    if head.has("Bcc"):
        raw = without_fields(raw, head, "Bcc")
        head = read_head(raw)
    raw = with_fields(raw, head, added)

    refusal = policy.check_size(len(raw))
    if refusal is not None:
        return refusal
    return NewMessage(connection=route.connection.name, sender=envelope_sender, recipients=rcpts,
                      raw=raw, source=source, client=client_label, subject=head.subject)
