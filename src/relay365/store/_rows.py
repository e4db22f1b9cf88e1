"""The rows the store hands out: frozen dataclasses, each built from a result row by ``from_row``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Self, get_args

SendStatus = Literal["sent", "failed"]
SEND_STATUSES: tuple[str, ...] = get_args(SendStatus)


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
class SendRecord:
    """One message sent directly (not through the queue), and how it ended."""

    id: str  # queue-style id, first on every log line about the message
    time: datetime
    connection: str
    transport: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    size: int
    status: SendStatus
    code: str | None = None  # what Microsoft answered (Graph error code, AADSTS number, SMTP reply)
    entry_id: str | None = None  # catalogue id of the diagnosis
    request_id: str | None = None  # Graph's request-id, for Microsoft support
    detail: str | None = None

    def __post_init__(self) -> None:
        _require_aware("SendRecord.time", self.time)
        if self.status not in SEND_STATUSES:
            raise ValueError(f"SendRecord.status must be one of {SEND_STATUSES}, got {self.status!r}")

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Self:
        return cls(id=row["id"], time=row["time"], connection=row["connection"],
                   transport=row["transport"], sender=row["sender"],
                   recipients=tuple(row["recipients"]), subject=row["subject"], size=row["size"],
                   status=row["status"], code=row["code"], entry_id=row["entry_id"],
                   request_id=row["request_id"], detail=row["detail"])
