"""What every transport takes and gives back: an envelope in, an outcome out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

TransportName = Literal["graph", "smtp-xoauth2"]
SendPath = Literal["mime", "draft", "smtp"]


@dataclass(frozen=True)
class Envelope:
    """One message to send: envelope sender and recipients, and the RFC 5322 bytes.

    ``raw`` is the message exactly as the application built it; ``recipients`` may name
    addresses the headers do not (a Bcc the client already stripped).
    """

    sender: str
    recipients: tuple[str, ...]
    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class SendOutcome:
    """What Microsoft 365 accepted: by which transport and path, its request id, the size."""

    transport: TransportName
    path: SendPath
    request_id: str | None
    size: int


class Transport(Protocol):
    """Hands envelopes to Microsoft 365; raises TransientError or PermanentError."""

    async def send(self, envelope: Envelope) -> SendOutcome: ...

    async def aclose(self) -> None: ...
