"""Transport: hands messages to Microsoft 365, by Graph sendMail or SMTP with XOAUTH2.

    transport = transport_for(settings, tokens)      # the connection's `transport` setting
    outcome = await transport.send(Envelope(sender, recipients, raw))
    await transport.aclose()

Transports take a message ready to send (``relay365.outbound`` prepares it: force_from,
the Bcc field Graph needs, no Bcc over SMTP) and change nothing in it; only ``Outbound``
calls ``transport_for``.  Graph (the default) sends the MIME as it is; past Graph's 4 MB
request limit it sends a draft with upload sessions.  Every failure leaves as ``TransientError``
(retry; ``retry_after`` when Microsoft said) or ``PermanentError``, with its catalogue
entry, Microsoft's code, the HTTP status and request id; token errors (``AuthError``)
pass through unchanged.
"""

from __future__ import annotations

import httpx

from ..auth import TokenSource
from ..config import ConnectionSettings
from ._graph import GraphTransport, graph_client
from ._smtp import SmtpXoauth2Transport
from ._types import Envelope, SendOutcome, Transport

__all__ = [
    "Envelope",
    "GraphTransport",
    "SendOutcome",
    "SmtpXoauth2Transport",
    "Transport",
    "graph_client",
    "transport_for",
]


def transport_for(settings: ConnectionSettings, tokens: TokenSource, *,
                  http: httpx.AsyncClient | None = None) -> Transport:
    """The transport the connection's settings name (``graph`` or ``smtp-xoauth2``).

    ``http``: the Graph client to send with (``graph_client``); by default the transport
    makes and closes its own.
    """
    if settings.transport == "smtp-xoauth2":
        return SmtpXoauth2Transport(settings, tokens)
    return GraphTransport(settings, tokens, client=http)
