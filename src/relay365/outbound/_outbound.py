"""``Outbound``: the delivery agent, the one place a message meets its connection and transport."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import httpx

from .. import mime
from ..auth import Connection
from ..config import ConnectionSettings, Settings
from ..errors import PermanentError
from ..store import Store
from ..transport import Envelope, SendOutcome, Transport, graph_client, transport_for

log = logging.getLogger("relay365.outbound")

TransportFactory = Callable[[ConnectionSettings], Transport]


class Outbound:
    """Sends envelopes through their connection: its credential, its transport, its Graph client.

    ``transports`` builds a connection's transport instead (tests hand in fakes); the
    message is still made ready here, so a fake sees what Microsoft would.
    """

    def __init__(self, settings: Settings, store: Store, *,
                 transports: TransportFactory | None = None) -> None:
        self.settings = settings
        self._store = store
        self._factory = transports
        self._connections: dict[str, Connection] = {}
        self._transports: dict[str, Transport] = {}
        self._http: dict[str, httpx.AsyncClient] = {}

    def __repr__(self) -> str:
        return f"Outbound({len(self._transports)} transports open)"

    def connection(self, name: str | None = None) -> Connection:
        """The credential side of a configured connection (sign-in, tokens), one per connection."""
        conn = self.settings.connection(name)
        if conn.name not in self._connections:
            self._connections[conn.name] = Connection(conn, self._store)
        return self._connections[conn.name]

    def tokens_in_use(self, name: str) -> Connection | None:
        """The credential the connection's transport sends with; None before its first message,
        or when its transport came from a factory (which holds its own)."""
        if self._factory is not None or name not in self._transports:
            return None
        return self._connections.get(name)

    def graph_client(self, conn: ConnectionSettings) -> httpx.AsyncClient:
        """The connection's one HTTP client for Microsoft Graph (keep-alive, its CA file)."""
        if conn.name not in self._http:
            self._http[conn.name] = graph_client(conn)
        return self._http[conn.name]

    def transport(self, conn: ConnectionSettings) -> Transport:
        """The transport the connection's settings name, built on first use."""
        transport = self._transports.get(conn.name)
        if transport is None:
            if self._factory is not None:
                transport = self._factory(conn)
            else:
                http = self.graph_client(conn) if conn.transport == "graph" else None
                transport = transport_for(conn, self.connection(conn.name), http=http)
            self._transports[conn.name] = transport
        return transport

    async def send(self, envelope: Envelope, *, connection: str) -> SendOutcome:
        """Make the message ready for its connection and transport, and send it.

        TransientError / PermanentError when Microsoft 365 does not take it; AuthError
        (NeedsSignIn...) when no token can be had.
        """
        conn = self.settings.connection(connection)
        ready = prepare(conn, envelope)
        outcome = await self.transport(conn).send(ready)
        return dataclasses.replace(outcome, sender=ready.sender)

    async def aclose(self) -> None:
        """Close every transport, Graph client and credential (a failure is logged, not raised)."""
        transports, self._transports = self._transports, {}
        for name, transport in transports.items():
            try:
                await transport.aclose()
            except Exception:
                log.exception("connection %s: closing its transport failed", name)
        clients, self._http = self._http, {}
        for client in clients.values():
            await client.aclose()
        connections, self._connections = self._connections, {}
        for credential in connections.values():
            credential.close()


def prepare(conn: ConnectionSettings, envelope: Envelope) -> Envelope:
    """``envelope`` as ``conn``'s transport sends it: the one place force_from and Bcc apply.

    force_from: a From the connection does not own (an application's default such as
    wordpress@host, or none) becomes the connection's sender, with its ``sender_name``, and
    so does the envelope sender when it is not the connection's; Microsoft refuses to send
    as an address the account has no right to.  A From the connection owns is kept as it is.
    Graph takes its recipients from To, Cc and Bcc, not from an envelope: every envelope
    recipient the head does not name goes into a Bcc field (Graph keeps it from the copies
    recipients see).  SMTP takes them from RCPT TO: a Bcc field is removed, as SMTP
    clients do, since a server that kept it would show the blind copies to everyone.
    """
    raw, sender = envelope.raw, envelope.sender
    head = mime.read_head(raw)
    if conn.force_from and conn.sender is not None:
        owned = set(conn.senders)
        if (head.from_address or "").lower() not in owned:
            raw = _rewritten(raw, head, conn)
            head = mime.read_head(raw)
            sender = conn.sender
        elif sender.lower() not in owned:
            sender = conn.sender
    if conn.transport == "graph":
        raw = _with_bcc(raw, head, envelope)
    else:
        raw = mime.without_fields(raw, head, "Bcc", "Resent-Bcc")
    return Envelope(sender, envelope.recipients, raw, header_from=head.from_address)


def _rewritten(raw: bytes, head: mime.Head, conn: ConnectionSettings) -> bytes:
    assert conn.sender is not None
    try:
        return mime.with_from(raw, head, conn.sender, conn.sender_name)
    except ValueError as exc:
        raise PermanentError(f"connection {conn.name}: its sender {conn.sender!r} cannot be written into "
                             "a From field", entry="R365-CONFIG") from exc


def _with_bcc(raw: bytes, head: mime.Head, envelope: Envelope) -> bytes:
    try:
        return mime.with_bcc(raw, head, head.missing_recipients(envelope.recipients))
    except ValueError as exc:
        raise PermanentError(f"an envelope recipient cannot be written into a Bcc field ({exc}; message "
                             f"from {envelope.sender})", entry="M365-INVALID-RECIPIENT") from exc
