"""The Python API: ``async with relay365.Client(settings) as client: await client.send(msg)``.

A message from Python takes the relay's path: the same ``Policy`` routes it and refuses
what the relay refuses, ``prepare`` completes it as it completes a sendmail or HTTP
submission, and it is an outbox message with its log, attempts and diagnosis.  ``send``
sends it now through ``Outbound`` (as the delivery engine does, without pacing or
retries: a failure is raised, and the message waits in the dead letter to be retried
from the log); ``enqueue`` leaves it to the running relay's delivery engine, paced and
retried.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.policy
import os
import secrets
import socket
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType

from . import mime, policy
from .auth import Connection, SecretBox
from .config import ConnectionSettings, Settings, load_settings
from .errors import ConfigError, Relay365Error
from .outbound import Outbound
from .store import AttemptResult, NewMessage, Store
from .transport import Envelope

# Who a message from the Python API comes from, for the policy and the log.
_SUBMITTER = policy.Client("local", "python")


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


class Client:
    """relay365 for Python code: send ``email.message.EmailMessage`` objects."""

    def __init__(self, settings: Settings | str | Path | None = None) -> None:
        self.settings = settings if isinstance(settings, Settings) else load_settings(settings)
        self.policy = policy.Policy(self.settings)
        self._store: Store | None = None
        self._outbound: Outbound | None = None

    async def __aenter__(self) -> Client:
        await self.store()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._outbound is not None:
            await self._outbound.aclose()
            self._outbound = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def store(self) -> Store:
        if self._store is None:
            box = SecretBox.from_environment(self.settings.key_file)
            self._store = await Store.open(self.settings.store_url, box)
        return self._store

    async def outbound(self) -> Outbound:
        if self._outbound is None:
            self._outbound = Outbound(self.settings, await self.store())
        return self._outbound

    async def connection(self, name: str | None = None) -> Connection:
        """The auth side of a configured connection (sign-in, tokens)."""
        return (await self.outbound()).connection(name)

    def route(self, sender: str | None, connection: str | None = None) -> ConnectionSettings:
        """The connection that sends as ``sender``, as the relay routes it; ConfigError when none may.

        No sender means the default one (``connection``'s, else the default connection's).
        """
        if sender is None:
            sender = (self.settings.connection(connection).sender if connection is not None
                      else self.policy.default_sender())
            if sender is None:
                return self.settings.connection(connection)
        route = (self.policy.route(sender, _SUBMITTER) if connection is None
                 else self.policy.route_to(connection, sender, _SUBMITTER))
        if isinstance(route, policy.Refusal):
            raise ConfigError(f"{route.message}: {route.fix}")
        return route.connection

    def prepare(self, message: EmailMessage | bytes, *, connection: str | None = None,
                recipients: list[str] | None = None) -> NewMessage:
        """The outbox message for ``message``, routed and checked as the relay does; ConfigError if refused.

        ``message`` as bytes is sent as it is (line ends made CRLF), as the relay takes it.
        Recipients are those of To, Cc and Bcc, and ``recipients``; the sender is the From,
        else the default connection's sender.  ``connection`` picks the connection instead
        of the senders' routing (it must own the sender, or have force_from).
        """
        raw = (mime.normalise_newlines(message) if isinstance(message, bytes)
               else message.as_bytes(policy=email.policy.SMTP))
        head = mime.read_head(raw)
        rcpts = head.addresses("To", "Cc", "Bcc") + list(recipients or [])
        sender = None
        if connection is not None and not head.has("From"):
            sender = self.settings.connection(connection).sender
        prepared = policy.prepare(self.policy, raw, sender=sender, recipients=rcpts, client=_SUBMITTER,
                                  source="api", client_label=_SUBMITTER.name, head=head,
                                  connection=connection)
        if isinstance(prepared, policy.Refusal):
            raise ConfigError(f"{prepared.message}: {prepared.fix}")
        return prepared

    async def enqueue(self, message: EmailMessage | bytes, *, connection: str | None = None,
                      recipients: list[str] | None = None) -> str:
        """Queue ``message`` for the relay's delivery engine (paced, retried); its queue id."""
        prepared = self.prepare(message, connection=connection, recipients=recipients)
        return await (await self.store()).enqueue(prepared)

    async def send(self, message: EmailMessage | bytes, *, connection: str | None = None,
                   recipients: list[str] | None = None) -> SendResult:
        """Send now through Microsoft 365; raise a relay365 error with cause and fix if not.

        The message is in the outbox either way: sent, or failed with its diagnosis (retry
        it from the log).  Cancelled while sending, it keeps its lease and the relay's
        delivery engine tries it again when the lease ends.
        """
        prepared = self.prepare(message, connection=connection, recipients=recipients)
        store = await self.store()
        outbound = await self.outbound()
        worker = f"{socket.gethostname()}:{os.getpid()}:send:{secrets.token_hex(3)}"
        queued = await store.enqueue_claimed(prepared, worker,
                                             lease_seconds=self.settings.delivery.lease_seconds)
        transport = self.settings.connection(queued.connection).transport
        started = dt.datetime.now(dt.UTC)
        try:
            outcome = await outbound.send(Envelope(queued.sender, queued.recipients, prepared.raw),
                                          connection=queued.connection)
        except Relay365Error as exc:
            await asyncio.shield(store.finish_attempt(queued.id, worker, AttemptResult(
                "failed", transport, code=exc.code, entry_id=exc.entry.id, request_id=exc.request_id,
                detail=exc.message), started))
            raise
        await asyncio.shield(store.finish_attempt(queued.id, worker, AttemptResult(
            "sent", outcome.transport, request_id=outcome.request_id,
            detail=f"{outcome.path}, {outcome.size} bytes"), started))
        return SendResult(id=queued.id, connection=queued.connection, sender=outcome.sender or queued.sender,
                          recipients=queued.recipients, transport=outcome.transport, path=outcome.path,
                          request_id=outcome.request_id)

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
