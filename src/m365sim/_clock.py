"""The emulator's clock: real time plus an offset that tests move forward.

Tokens, codes, device codes and secrets expire against this clock, so a test can
expire an access token with ``advance(3600)`` instead of waiting an hour.  Rate-limit
windows are different: they run on real (monotonic) time divided by ``time_scale``,
because the client under test waits in real time for a ``Retry-After``.

``freeze()`` stops real time from moving either: then only ``advance`` does, so a test
that counts what a window allows gets the same answer on a fast machine and a slow one.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """Wall-clock time as the emulated Microsoft sees it."""

    def __init__(self, offset: float = 0.0) -> None:
        self._offset = offset
        self._frozen: tuple[float, float] | None = None  # time.time(), time.monotonic() at freeze()

    def now(self) -> float:
        """Epoch seconds, including every ``advance``."""
        return (self._frozen[0] if self._frozen else time.time()) + self._offset

    def monotonic(self) -> float:
        """Real monotonic seconds, without ``advance``: what limit windows scale by ``time_scale``."""
        return self._frozen[1] if self._frozen else time.monotonic()

    def freeze(self) -> None:
        """Stop real time from moving the clock (and the limit windows): only ``advance`` will."""
        if self._frozen is None:
            self._frozen = (time.time(), time.monotonic())

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
