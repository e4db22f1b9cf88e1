"""What callers hand the outbox: a new message, an attempt's result; and the queue ids."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from ._rows import ATTEMPT_OUTCOMES, MESSAGE_SOURCES, AttemptOutcome, MessageSource, _require_aware

QUEUE_ID_LENGTH = 16
_RANDOM_BITS = 20
_id_lock = threading.Lock()
_last_id = 0


def new_queue_id() -> str:
    """A new queue id: 16 upper-case hex digits, ordered by creation time, e.g. ``0197A3F2C41B5E09``.

    The first 11 digits are the Unix time in milliseconds, the last 5 are random when the
    millisecond is new and count up within it, as Postfix's long queue ids mix time and a
    per-process value.  Ids of one process are strictly increasing; two relay nodes collide
    only by drawing the same 20 random bits in the same millisecond (the insert then
    fails and the client is told to retry, it is never overwritten).  12 digits, like
    ``SendRecord`` ids, would leave too few random bits for several nodes.
    """
    global _last_id
    now = time.time_ns() // 1_000_000 << _RANDOM_BITS
    with _id_lock:
        value = now | secrets.randbits(_RANDOM_BITS) if now > _last_id else _last_id + 1
        _last_id = value
    return f"{value:0{QUEUE_ID_LENGTH}X}"


@dataclass(frozen=True)
class NewMessage:
    """A message accepted by a way in, to be queued: envelope, raw RFC 5322 bytes, origin."""

    connection: str  # the connection that will send it (chosen by the policy)
    sender: str  # envelope sender
    recipients: tuple[str, ...]  # envelope recipients
    raw: bytes  # passed through to the database as it is: never copied for the queue
    source: MessageSource
    client: str | None  # peer address, SMTP user or API key name
    subject: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.recipients, list):  # a list is welcome, kept as the tuple it is typed as
            object.__setattr__(self, "recipients", tuple(self.recipients))
        if (isinstance(self.recipients, str) or not self.recipients
                or not all(isinstance(r, str) for r in self.recipients)):
            raise ValueError(f"NewMessage.recipients must be a non-empty tuple of addresses, "
                             f"got {self.recipients!r}")
        if not isinstance(self.raw, bytes):
            raise TypeError(f"NewMessage.raw must be bytes, got {type(self.raw).__name__}")
        if self.source not in MESSAGE_SOURCES:
            raise ValueError(f"NewMessage.source must be one of {MESSAGE_SOURCES}, got {self.source!r}")
        if not self.connection:
            raise ValueError("NewMessage.connection must name a connection")

    def __repr__(self) -> str:
        # Never the body in a log line or a traceback: it is the user's mail, and may be 100 MB.
        return (f"NewMessage(connection={self.connection!r}, sender={self.sender!r}, "
                f"recipients={self.recipients!r}, size={len(self.raw)}, source={self.source!r}, "
                f"client={self.client!r}, subject={self.subject!r})")


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt ended, as the delivery worker tells ``Store.finish_attempt``."""

    outcome: AttemptOutcome
    transport: str
    code: str | None = None  # what Microsoft answered (Graph error code, AADSTS number, SMTP reply)
    entry_id: str | None = None  # catalogue id of the diagnosis
    request_id: str | None = None  # Graph's request-id
    detail: str | None = None
    next_attempt_at: datetime | None = None  # required for "deferred", refused otherwise

    def __post_init__(self) -> None:
        if self.outcome not in ATTEMPT_OUTCOMES:
            raise ValueError(f"AttemptResult.outcome must be one of {ATTEMPT_OUTCOMES}, got {self.outcome!r}")
        if (self.outcome == "deferred") != (self.next_attempt_at is not None):
            raise ValueError("AttemptResult.next_attempt_at is required for a deferred outcome "
                             f"and only for it (outcome {self.outcome!r})")
        _require_aware("AttemptResult.next_attempt_at", self.next_attempt_at)
