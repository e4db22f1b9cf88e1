"""Where delivered mail lands: one mailbox per address, any domain.

Every recipient, inside the tenant or outside it, gets the message in an m365sim
mailbox of its own, so a test can read what each recipient received.  Messages are
kept as the raw MIME a recipient would see (Bcc removed) plus the delivery facts.
"""

from __future__ import annotations

import email
import email.policy
import itertools
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

PATHS = ("graph-mime", "graph-json", "graph-draft", "smtp")


@dataclass(frozen=True)
class DeliveredMessage:
    """One accepted submission, as stored in each recipient's mailbox."""

    id: str
    time: datetime
    path: str
    identity: str  # who authenticated: a UPN, or "app:{client_id}"
    sender: str  # the sending mailbox (From, or the SMTP envelope sender)
    recipients: tuple[str, ...]
    raw: bytes = field(repr=False)

    def parsed(self) -> EmailMessage:
        msg = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    @property
    def subject(self) -> str:
        return str(self.parsed().get("Subject", ""))

    def summary(self) -> dict[str, Any]:
        msg = self.parsed()
        return {
            "id": self.id,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "path": self.path,
            "identity": self.identity,
            "envelope": {"sender": self.sender, "recipients": list(self.recipients)},
            "subject": str(msg.get("Subject", "")),
            "from": str(msg.get("From", "")),
            "to": str(msg.get("To", "")),
            "cc": str(msg.get("Cc", "")),
            "size": len(self.raw),
        }


class MailStore:
    """Mailboxes by lower-cased address; each keeps at most ``keep`` messages."""

    def __init__(self, keep: int = 10_000) -> None:
        self._boxes: dict[str, deque[DeliveredMessage]] = {}
        self._ids = itertools.count(1)
        self.keep = keep
        self.total = 0

    def deliver(
        self, *, raw: bytes, path: str, identity: str, sender: str, recipients: list[str],
        now: float,
    ) -> DeliveredMessage:
        if path not in PATHS:
            raise ValueError(f"unknown delivery path {path!r}")
        unique = tuple(dict.fromkeys(r.lower() for r in recipients))
        msg = DeliveredMessage(
            id=f"m{next(self._ids):08d}",
            time=datetime.fromtimestamp(now, UTC),
            path=path,
            identity=identity,
            sender=sender,
            recipients=unique,
            raw=raw,
        )
        for address in unique:
            box = self._boxes.get(address)
            if box is None:
                box = self._boxes[address] = deque(maxlen=self.keep)
            box.append(msg)
        self.total += 1
        return msg

    def messages(self, address: str) -> list[DeliveredMessage]:
        return list(self._boxes.get(address.lower(), ()))

    def find(self, address: str, message_id: str) -> DeliveredMessage | None:
        for m in self._boxes.get(address.lower(), ()):
            if m.id == message_id:
                return m
        return None

    def addresses(self) -> list[str]:
        return sorted(self._boxes)

    def clear(self, address: str | None = None) -> None:
        if address is None:
            self._boxes.clear()
        else:
            self._boxes.pop(address.lower(), None)
