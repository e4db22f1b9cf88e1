"""What every transport takes and gives back: an envelope in, an outcome out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

TransportName = Literal["graph", "smtp-xoauth2"]
SendPath = Literal["mime", "draft", "smtp"]


@dataclass(frozen=True)
class Envelope:
    """One message to send: envelope sender and recipients, the RFC 5322 bytes, and its From.

    ``raw`` is the message as the transport sends it: ``relay365.outbound`` has made it
    ready (force_from, Bcc), and ``header_from`` is its From address as read there (None
    when it has none), so no transport reads the head again.
    """

    sender: str
    recipients: tuple[str, ...]
    raw: bytes = field(repr=False)
    header_from: str | None = None

    @property
    def mailbox(self) -> str:
        """The mailbox the message is sent from: its From, else the envelope sender."""
        return self.header_from or self.sender


@dataclass(frozen=True)
class SendOutcome:
    """What Microsoft 365 accepted: by which transport and path, its request id, the size.

    ``sender``: the envelope sender it went out as (force_from may have changed it); set
    by ``relay365.outbound``, which knows it.
    """

    transport: TransportName
    path: SendPath
    request_id: str | None
    size: int
    sender: str | None = None


class Transport(Protocol):
    """Hands envelopes to Microsoft 365; raises TransientError or PermanentError."""

    async def send(self, envelope: Envelope) -> SendOutcome: ...

    async def aclose(self) -> None: ...
