"""Exchange Online's sending limits, with time that tests can compress.

Limit windows run on *limit time*: the emulator clock's monotonic seconds multiplied by
the scenario's ``time_scale``, plus its offset.  With ``time_scale = 60`` the
30-messages-a-minute window lasts one real second, and ``advance(86400)`` ends the
day of a daily recipient quota.  ``Retry-After`` answers are converted back to real
seconds, because the client under test waits in real time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ._clock import Clock


@dataclass(frozen=True)
class Refusal:
    """A limit said no; ``retry_after`` is in real seconds."""

    limit: str  # concurrency | rate | recipients
    retry_after: float


class SendingLimits:
    """Per-mailbox message and recipient windows and per app+mailbox concurrency."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._sent: dict[str, deque[float]] = {}
        self._recipients: dict[str, deque[tuple[float, int]]] = {}
        # Running sum of each window, so admitting a message costs O(expired), not O(window).
        self._recipient_totals: dict[str, int] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        self._smtp_connections: dict[str, int] = {}

    def limit_time(self, time_scale: float) -> float:
        return self._clock.monotonic() * time_scale + self._clock.offset

    # ---- concurrency (Graph: 4 per app + mailbox) -------------------------------
    def enter(self, app: str, mailbox: str, limit: int) -> bool:
        key = (app, mailbox.lower())
        n = self._in_flight.get(key, 0)
        if n >= limit:
            return False
        self._in_flight[key] = n + 1
        return True

    def leave(self, app: str, mailbox: str) -> None:
        key = (app, mailbox.lower())
        n = self._in_flight.get(key, 0) - 1
        if n <= 0:
            self._in_flight.pop(key, None)
        else:
            self._in_flight[key] = n

    # ---- SMTP connections (3 per mailbox) ---------------------------------------
    def smtp_connect(self, mailbox: str, limit: int) -> bool:
        key = mailbox.lower()
        n = self._smtp_connections.get(key, 0)
        if n >= limit:
            return False
        self._smtp_connections[key] = n + 1
        return True

    def smtp_disconnect(self, mailbox: str) -> None:
        key = mailbox.lower()
        n = self._smtp_connections.get(key, 0) - 1
        if n <= 0:
            self._smtp_connections.pop(key, None)
        else:
            self._smtp_connections[key] = n

    # ---- windows (30 messages a minute, 10,000 recipients a day) ----------------
    def admit(
        self, mailbox: str, recipients: int, *, per_minute: int, per_day: int, time_scale: float
    ) -> Refusal | None:
        """Count one message to ``recipients`` addresses, or say which limit refuses it."""
        now = self.limit_time(time_scale)
        key = mailbox.lower()
        sent = self._sent.setdefault(key, deque())
        while sent and sent[0] <= now - 60:
            sent.popleft()
        if len(sent) >= per_minute:
            return Refusal("rate", self._real_seconds(sent[0] + 60 - now, time_scale))
        window = self._recipients.setdefault(key, deque())
        used = self._recipient_totals.get(key, 0)
        while window and window[0][0] <= now - 86400:
            used -= window.popleft()[1]
        if used + recipients > per_day:
            self._recipient_totals[key] = used
            wait = window[0][0] + 86400 - now if window else 86400.0
            return Refusal("recipients", self._real_seconds(wait, time_scale))
        sent.append(now)
        window.append((now, recipients))
        self._recipient_totals[key] = used + recipients
        return None

    @staticmethod
    def _real_seconds(limit_seconds: float, time_scale: float) -> float:
        return max(limit_seconds / time_scale, 0.001)

    def reset(self) -> None:
        self._sent.clear()
        self._recipients.clear()
        self._recipient_totals.clear()


def retry_after_header(seconds: float, fractional: bool) -> str:
    """Microsoft sends whole seconds; many clients parse it with int() (reference §6.2)."""
    if fractional:
        return f"{max(seconds, 0.001):.3f}"
    return str(max(1, math.ceil(seconds)))
