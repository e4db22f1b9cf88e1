"""Outbound: the delivery agent (Postfix's ``smtp``), between the outbox and Microsoft 365.

    outbound = Outbound(settings, store)
    outcome = await outbound.send(Envelope(sender, recipients, raw), connection="contoso")
    await outbound.aclose()

``Outbound`` is the only place where a connection, its credential (``auth.Connection``)
and its transport are put together, and ``prepare`` the only place a message is changed
on its way out (force_from, Bcc).  The delivery engine and ``relay365.Client`` both send
through it, so a message leaves the same way whichever way it came in.  It also owns each
connection's HTTP client for Graph, which the doctor and the expiry watch use too.
"""

from ._outbound import Outbound, TransportFactory, prepare

__all__ = ["Outbound", "TransportFactory", "prepare"]
