"""The Python API: ``async with relay365.Client(settings) as client: await client.send(msg)``.

The client routes a message to the connection that owns its sender, gets a token from
that connection and hands the message to its transport, then records the outcome in the
store.  Failures arrive as relay365 errors carrying their cause and fix.
"""

from __future__ import annotations

import datetime as dt
import email.policy
from copy import deepcopy
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from types import TracebackType

from .auth import Connection, SecretBox
from .config import ConnectionSettings, Settings, load_settings
from .errors import ConfigError, DeliveryError, Relay365Error
from .store import SendRecord, SendStatus, Store, new_queue_id
from .transport import Envelope, Transport, transport_for


@dataclass(frozen=True)
class SendResult:
    """What happened to a message sent with ``Client.send``."""

    id: str
    connection: str
    sender: str
    recipients: tuple[str, ...]
    transport: str
    path: str
    request_id: str | None


def new_message_id() -> str:
    """A queue-style id for a direct send (the same form as the outbox's ids)."""
    return new_queue_id()


def _addresses(msg: EmailMessage, *headers: str) -> list[str]:
    values = [str(v) for h in headers for v in msg.get_all(h, [])]
    return [a.lower() for _, a in getaddresses(values) if a]


class Client:
    """relay365 for Python code: send ``email.message.EmailMessage`` objects."""

    def __init__(self, settings: Settings | str | Path | None = None) -> None:
        self.settings = settings if isinstance(settings, Settings) else load_settings(settings)
        self._store: Store | None = None
        self._connections: dict[str, Connection] = {}
        self._transports: dict[str, Transport] = {}

    async def __aenter__(self) -> Client:
        await self.store()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()
        self._transports.clear()
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def store(self) -> Store:
        if self._store is None:
            box = SecretBox.from_environment(self.settings.key_file)
            self._store = await Store.open(self.settings.store_url, box)
        return self._store

    async def connection(self, name: str | None = None) -> Connection:
        """The auth side of a configured connection (sign-in, tokens)."""
        conn = self.settings.connection(name)
        if conn.name not in self._connections:
            self._connections[conn.name] = Connection(conn, await self.store())
        return self._connections[conn.name]

    def route(self, sender: str | None, connection: str | None = None) -> ConnectionSettings:
        """The connection that sends for ``sender`` (explicit name first)."""
        if connection is not None:
            conn = self.settings.connection(connection)
            if sender and sender.lower() not in conn.senders and not conn.force_from:
                raise ConfigError(f"connection {conn.name!r} does not send as {sender}; its senders: "
                                  f"{', '.join(conn.senders) or 'none'} (add it to senders)")
            return conn
        if sender:
            owner = self.settings.connection_for_sender(sender)
            if owner is not None:
                return owner
            forcing = [c for c in self.settings.connections if c.force_from]
            if forcing:
                return forcing[0]
            raise ConfigError(f"no connection sends as {sender}; add it to a connection's senders")
        return self.settings.connection()

    async def send(self, message: EmailMessage, *, connection: str | None = None,
                   recipients: list[str] | None = None) -> SendResult:
        """Send now through Microsoft 365; raise a relay365 error with cause and fix if not."""
        sender = next(iter(_addresses(message, "From")), None)
        conn = self.route(sender, connection)
        if conn.force_from or sender is None:
            message = self._with_from(message, conn)
            sender = conn.sender
        if sender is None:
            raise ConfigError(f"connection {conn.name!r} has no sender; set default_sender")
        rcpts = tuple(dict.fromkeys(
            _addresses(message, "To", "Cc", "Bcc") + [r.lower() for r in recipients or []]))
        if not rcpts:
            raise ConfigError("the message has no recipient (To, Cc, Bcc or recipients=)")
        raw = message.as_bytes(policy=email.policy.SMTP)
        envelope = Envelope(sender=sender, recipients=rcpts, raw=raw)
        message_id = new_message_id()
        store = await self.store()
        try:
            outcome = await self._transport(conn).send(envelope)
        except Relay365Error as exc:
            await store.record_send(self._record(message_id, conn, envelope, message, "failed", exc))
            raise
        await store.record_send(SendRecord(
            id=message_id, time=dt.datetime.now(dt.UTC), connection=conn.name,
            transport=outcome.transport, sender=sender, recipients=rcpts,
            subject=str(message.get("Subject", "")), size=len(raw), status="sent", code=None,
            entry_id=None, request_id=outcome.request_id, detail=None))
        return SendResult(id=message_id, connection=conn.name, sender=sender, recipients=rcpts,
                          transport=outcome.transport, path=outcome.path, request_id=outcome.request_id)

    async def send_test_email(self, *, connection: str | None = None, to: str | None = None,
                              sender: str | None = None) -> SendResult:
        """Send the test email: it says which connection, account, sender and transport carried it."""
        conn = self.route(sender, connection)
        account = None
        if conn.mode == "delegated":
            tokens = await self.connection(conn.name)
            await tokens.load()  # the account is known once the token cache is read
            account = tokens.account
        sender = sender or conn.sender
        recipient = to or conn.account or sender
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = recipient
        msg["Subject"] = f"relay365 test email ({conn.name})"
        msg.set_content(
            "This is a test email from relay365.\n\n"
            f"Connection: {conn.name}\nTenant: {conn.tenant}\n"
            f"Signed-in account: {account or ('none (app-only)' if conn.mode == 'app-only' else 'unknown')}\n"
            f"Sender: {sender}\nTransport: {conn.transport}\n"
            f"Sent at: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}\n\n"
            "If you can read this, every application on this machine can send through Microsoft 365.\n")
        return await self.send(msg, connection=conn.name)

    def _transport(self, conn: ConnectionSettings) -> Transport:
        if conn.name not in self._transports:
            tokens = self._connections.get(conn.name)
            if tokens is None:
                assert self._store is not None
                tokens = self._connections[conn.name] = Connection(conn, self._store)
            self._transports[conn.name] = transport_for(conn, tokens)
        return self._transports[conn.name]

    @staticmethod
    def _with_from(message: EmailMessage, conn: ConnectionSettings) -> EmailMessage:
        """A copy of ``message`` sent as the connection's default sender (force_from)."""
        copy = deepcopy(message)
        del copy["From"]
        del copy["Sender"]
        copy["From"] = Address(display_name=conn.sender_name or "", addr_spec=conn.sender or "")
        return copy

    @staticmethod
    def _record(message_id: str, conn: ConnectionSettings, envelope: Envelope, message: EmailMessage,
                status: SendStatus, exc: Relay365Error) -> SendRecord:
        return SendRecord(
            id=message_id, time=dt.datetime.now(dt.UTC), connection=conn.name,
            transport=conn.transport, sender=envelope.sender, recipients=envelope.recipients,
            subject=str(message.get("Subject", "")), size=len(envelope.raw), status=status,
            code=exc.code, entry_id=exc.entry.id,
            request_id=exc.request_id if isinstance(exc, DeliveryError) else None,
            detail=exc.message)
