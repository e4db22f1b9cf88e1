"""The emulator's clock: real time plus an offset that tests move forward.

Tokens, codes, device codes and secrets expire against this clock, so a test can
expire an access token with ``advance(3600)`` instead of waiting an hour.  Rate-limit
windows are different: they run on real (monotonic) time divided by ``time_scale``,
because the client under test waits in real time for a ``Retry-After``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """Wall-clock time as the emulated Microsoft sees it."""

    def __init__(self, offset: float = 0.0) -> None:
        self._offset = offset

    def now(self) -> float:
        """Epoch seconds, including every ``advance``."""
        return time.time() + self._offset

    def now_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)

    def advance(self, seconds: float) -> None:
        """Move the clock forward (never back: Microsoft's clock does not go back)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward; got a negative number of seconds")
        self._offset += seconds

    @property
    def offset(self) -> float:
        return self._offset


def set_offset_from_start(start: datetime | None) -> float:
    """Offset that makes the clock read ``start`` now (scenario ``[clock] start``)."""
    if start is None:
        return 0.0
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return start.timestamp() - time.time()
