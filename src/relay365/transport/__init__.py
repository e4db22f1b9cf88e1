"""Transport: hands messages to Microsoft 365, by Graph sendMail or SMTP with XOAUTH2.

    transport = transport_for(settings, tokens)      # the connection's `transport` setting
    outcome = await transport.send(Envelope(sender, recipients, raw))
    await transport.aclose()

Graph (the default) sends the MIME exactly as the application built it, adding a Bcc
field for envelope recipients the headers do not name; past Graph's 4 MB request limit
it sends a draft with upload sessions.  Every failure leaves as ``TransientError``
(retry; ``retry_after`` when Microsoft said) or ``PermanentError``, with its catalogue
entry, Microsoft's code, the HTTP status and request id; token errors (``AuthError``)
pass through unchanged.
"""

from __future__ import annotations

from ..auth import TokenSource
from ..config import ConnectionSettings
from ._graph import GraphTransport
from ._mime import from_address, prepare_mime, split_head, with_from
from ._smtp import SmtpXoauth2Transport
from ._types import Envelope, SendOutcome, Transport

__all__ = [
    "Envelope",
    "GraphTransport",
    "SendOutcome",
    "SmtpXoauth2Transport",
    "Transport",
    "from_address",
    "prepare_mime",
    "split_head",
    "transport_for",
    "with_from",
]


def transport_for(settings: ConnectionSettings, tokens: TokenSource) -> Transport:
    """The transport the connection's settings name (``graph`` or ``smtp-xoauth2``)."""
    if settings.transport == "smtp-xoauth2":
        return SmtpXoauth2Transport(settings, tokens)
    return GraphTransport(settings, tokens)
