"""Who may send what through relay365: pure decisions, no I/O, shared by every way in.

relay365 is not an open relay.  A client is trusted because of where it connects from
(``relay.allowed_networks``) or because it logged in (an SMTP user or an API key), and
whoever it is, it may only send as an address that a connection owns: the senders of a
connection route the message, and a connection with ``force_from`` takes any other
sender (its From is rewritten at delivery).  A logged-in client with its own ``senders``
list is held to that list.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from ..config import ConnectionSettings, Settings
from . import replies

RefusalKind = Literal["auth", "client", "sender", "recipients", "size", "data"]
ClientKind = Literal["user", "api-key", "network", "local"]
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Client:
    """Who submits a message: a logged-in user or API key, a trusted network, a local user.

    ``senders`` empty means any sender a connection owns.
    """

    kind: ClientKind
    name: str
    senders: tuple[str, ...] = ()

    def may_send_as(self, address: str) -> bool:
        return not self.senders or address.lower() in self.senders


@dataclass(frozen=True)
class Refusal:
    """A "no": what kind, a short reason code (the HTTP API's), the SMTP reply and the fix."""

    kind: RefusalKind
    reason: str
    reply: str
    fix: str

    @property
    def message(self) -> str:
        """The reply's words without its codes."""
        return replies.text_of(self.reply)

    @property
    def temporary(self) -> bool:
        return self.reply.startswith("4")


@dataclass(frozen=True)
class Route:
    """The connection that sends a message; ``forced`` when it rewrites the From (force_from)."""

    connection: ConnectionSettings
    forced: bool = False


class Policy:
    """The relay's rules, read once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in settings.relay.allowed_networks)
        # force_from takes the senders nobody owns: the first such connection.
        self._forcing = next((c for c in settings.connections if c.force_from), None)

    @property
    def max_message_size(self) -> int:
        return self._settings.relay.max_message_size

    @property
    def max_recipients(self) -> int:
        return self._settings.relay.max_recipients

    def client_allowed(self, address: str | None) -> bool:
        """Is this client address in ``relay.allowed_networks`` (may submit without logging in)?"""
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)

    def check_client(self, address: str | None, client: Client | None, *,
                     require_auth: bool = False) -> Refusal | None:
        """May this client submit at all?  ``client`` is who logged in, None when nobody did."""
        if client is not None:
            return None
        if require_auth:
            return Refusal("auth", "auth_required", replies.AUTH_REQUIRED, replies.AUTH_REQUIRED_FIX)
        if not self.client_allowed(address):
            return Refusal("client", "client_not_allowed",
                           replies.CLIENT_NOT_ALLOWED.format(client=address or "unknown"),
                           replies.CLIENT_NOT_ALLOWED_FIX)
        return None

    def default_sender(self, client: Client | None = None) -> str | None:
        """The sender of a message that names none: the client's first sender, else the
        default connection's."""
        if client is not None and client.senders:
            return client.senders[0]
        if not self._settings.connections:
            return None
        return self._settings.connections[0].sender

    def route(self, sender: str, client: Client | None = None) -> Route | Refusal:
        """The connection that sends for envelope sender ``sender``, or why none may."""
        if client is not None and not client.may_send_as(sender):
            return _not_permitted(sender, client)
        owner = self._settings.connection_for_sender(sender)
        if owner is not None:
            return Route(owner, forced=owner.force_from)
        if self._forcing is not None:
            return Route(self._forcing, forced=True)
        return Refusal("sender", "sender_not_owned", replies.SENDER_NOT_OWNED.format(sender=sender),
                       replies.SENDER_NOT_OWNED_FIX.format(sender=sender))

    def route_to(self, name: str, sender: str, client: Client | None = None) -> Route | Refusal:
        """The connection named ``name`` for envelope sender ``sender``, or why it may not send it.

        For a caller that picks the connection itself (``Client.send(connection=...)``):
        the connection must own the sender, or take any sender (force_from).
        """
        if client is not None and not client.may_send_as(sender):
            return _not_permitted(sender, client)
        conn = self._settings.connection(name)
        if sender.lower() in conn.senders:
            return Route(conn, forced=conn.force_from)
        if conn.force_from:
            return Route(conn, forced=True)
        return Refusal("sender", "sender_not_owned",
                       replies.SENDER_NOT_OWNED_BY.format(sender=sender, connection=conn.name),
                       replies.SENDER_NOT_OWNED_BY_FIX.format(
                           sender=sender, connection=conn.name, senders=", ".join(conn.senders) or "none"))

    def check_header_from(self, route: Route, addresses: list[str],
                          client: Client | None = None) -> Refusal | None:
        """Do the header From addresses belong to the connection the envelope sender chose?

        A forced route rewrites the From anyway; no From at all is left to the transport,
        which sends as the envelope sender.
        """
        if route.forced:
            return None
        name = route.connection.name
        for address in addresses:
            if client is not None and not client.may_send_as(address):
                return _not_permitted(address, client)
            if address.lower() not in route.connection.senders:
                return Refusal("sender", "from_not_owned",
                               replies.FROM_NOT_OWNED.format(address=address, connection=name),
                               replies.FROM_NOT_OWNED_FIX.format(connection=name))
        return None

    def check_recipient(self, address: str) -> Refusal | None:
        """Is ``address`` one Microsoft 365 can deliver to (``local@domain``)?"""
        local, at, domain = address.rpartition("@")
        if not (at and local and domain):
            return Refusal("recipients", "bad_recipient", replies.BAD_RECIPIENT.format(recipient=address),
                           replies.BAD_RECIPIENT_FIX)
        return None

    def check_recipients(self, count: int, route: Route | None = None) -> Refusal | None:
        """Is ``count`` recipients for one message within ``relay.max_recipients`` and the routed
        connection's ``recipients_per_message`` (Exchange's limit for its mailboxes), and not none?"""
        if count < 1:
            return Refusal("recipients", "no_recipients", replies.NO_RECIPIENTS, replies.NO_RECIPIENTS_FIX)
        if count > self.max_recipients:
            return Refusal("recipients", "too_many_recipients", replies.TOO_MANY_RECIPIENTS,
                           replies.TOO_MANY_RECIPIENTS_FIX.format(limit=self.max_recipients))
        if route is not None and count > route.connection.recipients_per_message:
            conn = route.connection
            return Refusal("recipients", "too_many_recipients", replies.TOO_MANY_RECIPIENTS,
                           replies.TOO_MANY_RECIPIENTS_CONNECTION_FIX.format(
                               limit=conn.recipients_per_message, connection=conn.name))
        return None

    def check_size(self, size: int) -> Refusal | None:
        """Is a message of ``size`` bytes within ``relay.max_message_size``?"""
        if size > self.max_message_size:
            return Refusal("size", "too_large", replies.MESSAGE_TOO_BIG,
                           replies.MESSAGE_TOO_BIG_FIX.format(limit=self.max_message_size))
        return None


def _not_permitted(sender: str, client: Client) -> Refusal:
    return Refusal("sender", "sender_not_permitted",
                   replies.SENDER_NOT_PERMITTED.format(sender=sender, client=client.name),
                   replies.SENDER_NOT_PERMITTED_FIX.format(sender=sender, client=client.name,
                                                           senders=", ".join(client.senders)))
