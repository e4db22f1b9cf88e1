"""The rows the store hands out: frozen dataclasses, each built from a result row by ``from_row``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Self, get_args

# How an attempt ended; also the state the message goes to.
AttemptOutcome = Literal["sent", "deferred", "failed"]
ATTEMPT_OUTCOMES: tuple[str, ...] = get_args(AttemptOutcome)
# Which way in a message came by.
MessageSource = Literal["smtp", "sendmail", "http", "api"]
MESSAGE_SOURCES: tuple[str, ...] = get_args(MessageSource)


class MessageState(StrEnum):
    """Where a message is in its life; the database's CHECK constraints list the same values.

    queued ──claim──► sending ──finish──► sent | deferred | failed
    deferred ──due──► sending;  sending ──lease expired──► sending (another worker)
    failed, deferred ──retry──► queued;  queued, deferred ──defer_connection──► deferred
    """

    QUEUED = "queued"  # waiting for its first attempt, due at once
    SENDING = "sending"  # claimed by a worker, under a lease
    SENT = "sent"  # Microsoft 365 accepted it
    DEFERRED = "deferred"  # waiting for next_attempt_at
    FAILED = "failed"  # dead letter: it will not be tried again unless retried by hand


def _require_aware(name: str, value: datetime | None) -> None:
    # A naive datetime would be read back as UTC whatever zone it meant: refuse it here,
    # where the caller's mistake is visible, rather than store a wrong time.
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")


@dataclass(frozen=True)
class ConnectionState:
    """What relay365 knows of one connection's sign-in."""

    connection: str
    needs_sign_in: bool = False
    entry_id: str | None = None  # catalogue id of the last authentication failure
    detail: str | None = None
    account: str | None = None  # the UPN that signed in
    scopes: tuple[str, ...] = ()
    signed_in_at: datetime | None = None
    last_refresh_at: datetime | None = None
    updated_at: datetime | None = None  # None: never recorded (the default state)

    def __post_init__(self) -> None:
        _require_aware("ConnectionState.signed_in_at", self.signed_in_at)
        _require_aware("ConnectionState.last_refresh_at", self.last_refresh_at)
        _require_aware("ConnectionState.updated_at", self.updated_at)
        if isinstance(self.scopes, str):  # a tuple of scope names; one string would be split into letters
            raise TypeError(f"ConnectionState.scopes must be a tuple of scope names, got {self.scopes!r}")

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Self:
        return cls(connection=row["connection"], needs_sign_in=bool(row["needs_sign_in"]),
                   entry_id=row["entry_id"], detail=row["detail"], account=row["account"],
                   scopes=tuple(row["scopes"] or ()), signed_in_at=row["signed_in_at"],
                   last_refresh_at=row["last_refresh_at"], updated_at=row["updated_at"])


@dataclass(frozen=True)
class QueuedMessage:
    """One message of the outbox, without its body (``Store.message_body`` reads that)."""

    id: str  # queue id, first on every log line about the message
    connection: str
    sender: str  # envelope sender
    recipients: tuple[str, ...]  # envelope recipients
    subject: str
    size: int  # bytes of the raw message
    source: MessageSource
    client: str | None  # peer address, SMTP user or API key name
    state: MessageState
    attempts: int  # attempts started (a claim starts one, even if its worker then dies)
    received_at: datetime
    next_attempt_at: datetime | None  # deferred: when it is due again; None otherwise
    lease_owner: str | None  # sending: the worker holding it
    lease_until: datetime | None  # sending: when another worker may take it over
    last_code: str | None  # what Microsoft answered last (Graph error code, AADSTS, SMTP reply)
    last_entry_id: str | None  # catalogue id of the last diagnosis
    last_detail: str | None
    sent_at: datetime | None
    request_id: str | None  # Graph's request-id of the last attempt, for Microsoft support
    updated_at: datetime | None = None  # the last change of state

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Self:
        return cls(id=row["id"], connection=row["connection"], sender=row["sender"],
                   recipients=tuple(row["recipients"]), subject=row["subject"], size=row["size"],
                   source=row["source"], client=row["client"], state=MessageState(row["state"]),
                   attempts=row["attempts"], received_at=row["received_at"],
                   next_attempt_at=row["next_attempt_at"], lease_owner=row["lease_owner"],
                   lease_until=row["lease_until"], last_code=row["last_code"],
                   last_entry_id=row["last_entry_id"], last_detail=row["last_detail"],
                   sent_at=row["sent_at"], request_id=row["request_id"], updated_at=row["updated_at"])


@dataclass(frozen=True)
class Attempt:
    """One finished attempt to hand a message to Microsoft 365."""

    message_id: str
    number: int  # 1 for the first attempt started; a number is missing when its worker died
    started_at: datetime
    finished_at: datetime
    connection: str
    transport: str
    outcome: AttemptOutcome
    code: str | None
    entry_id: str | None
    request_id: str | None
    detail: str | None
    worker: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Self:
        return cls(message_id=row["message_id"], number=row["number"], started_at=row["started_at"],
                   finished_at=row["finished_at"], connection=row["connection"],
                   transport=row["transport"], outcome=row["outcome"], code=row["code"],
                   entry_id=row["entry_id"], request_id=row["request_id"], detail=row["detail"],
                   worker=row["worker"])


@dataclass(frozen=True)
class Event:
    """One change of a message's state; ``from_state`` is None when the message was received."""

    message_id: str
    time: datetime
    from_state: MessageState | None
    to_state: MessageState
    detail: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Self:
        before = row["from_state"]
        return cls(message_id=row["message_id"], time=row["time"],
                   from_state=None if before is None else MessageState(before),
                   to_state=MessageState(row["to_state"]), detail=row["detail"])


@dataclass(frozen=True)
class OutcomeCount:
    """How many messages were sent and how many failed for good from ``start`` until ``end``."""

    start: datetime
    end: datetime
    sent: int
    failed: int
