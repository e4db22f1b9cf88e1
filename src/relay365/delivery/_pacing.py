"""Pacing: stay inside Exchange Online's per-mailbox limits instead of learning them from 429s.

For each sending mailbox, at most ``messages_per_minute`` message starts in any 60 s,
``recipients_per_day`` recipients in any 24 h, and ``concurrent_requests`` sends at once
(the connection's settings; reference §6).  ``async with pacer.slot(conn, sender, n):``
waits until all three allow one more message; waiters of a mailbox go in arrival order,
so a big message is not starved by small ones.  A 429's ``Retry-After`` cools the whole
mailbox down (``cool_down``): one throttled answer pauses its mailbox instead of every
queued message meeting the same 429.

Which mailbox Microsoft counts: the one the request acts on.  A delegated connection
sends at ``/me`` (and SMTP authenticates as the signed-in user) whatever the From, so
all of its senders (the user and the shared mailboxes it sends as) share the user's
limits; Graph's concurrency limit is per app and ``/me`` mailbox for certain.  An
app-only connection sends at ``/users/{sender}``: each sender is its own mailbox.

A message is counted at its start and counted again, in place, at its end: Microsoft
counted it at some moment in between, which we cannot see, so the window always holds
the latest moment it may have been counted.  Counting at the start alone would let the
31st message through a minute after the 1st *started* while Microsoft counted the 1st
when it *arrived*, and answer 429.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ..config import ConnectionSettings

MINUTE = 60.0
DAY = 86400.0


def sending_mailbox(conn: ConnectionSettings, sender: str) -> str:
    """The mailbox Microsoft counts a message from ``sender`` against (see the module docstring)."""
    if conn.mode == "app-only":
        return sender.lower()
    return conn.account or "me"


@dataclass(eq=False)
class _Mailbox:
    """One mailbox's windows, in the pacer clock's seconds."""

    starts: list[float] = field(default_factory=list)  # sorted; one per message in the last minute
    recipients: list[tuple[float, int]] = field(default_factory=list)  # sorted; the last day
    recipients_total: int = 0
    in_flight: int = 0
    cool_until: float = -math.inf
    waiting: deque[object] = field(default_factory=deque)  # waiters, in arrival order
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def expire(self, now: float) -> None:
        cut = bisect.bisect_right(self.starts, now - MINUTE)
        del self.starts[:cut]
        cut = 0
        while cut < len(self.recipients) and self.recipients[cut][0] <= now - DAY:
            self.recipients_total -= self.recipients[cut][1]
            cut += 1
        del self.recipients[:cut]

    def wait_time(self, now: float, conn: ConnectionSettings, n: int) -> float:
        """0 when a message to ``n`` recipients may start now; else how long until it may
        (``inf``: until a message in flight ends)."""
        self.expire(now)
        if self.in_flight >= conn.concurrent_requests:
            return math.inf
        wait = max(0.0, self.cool_until - now)
        if len(self.starts) >= conn.messages_per_minute:
            wait = max(wait, self.starts[-conn.messages_per_minute] + MINUTE - now)
        excess = self.recipients_total + n - conn.recipients_per_day
        if excess > 0 and self.recipients:
            # Wait for the oldest entries to leave the day until the message fits; a message
            # bigger than the whole day's allowance waits for an empty window.
            freed, i = 0, 0
            while i < len(self.recipients) - 1 and freed + self.recipients[i][1] < excess:
                freed += self.recipients[i][1]
                i += 1
            wait = max(wait, self.recipients[i][0] + DAY - now)
        return wait

    def admit(self, now: float, n: int) -> tuple[float, int]:
        bisect.insort(self.starts, now)
        bisect.insort(self.recipients, (now, n))
        self.recipients_total += n
        self.in_flight += 1
        return now, n

    def release(self, now: float, started: tuple[float, int]) -> None:
        """The message ended: count it at ``now`` instead of its start, free its concurrency."""
        at, n = started
        with contextlib.suppress(ValueError):  # already out of the window: counted anew
            self.starts.remove(at)
        bisect.insort(self.starts, now)
        try:
            self.recipients.remove(started)
        except ValueError:
            self.recipients_total += n
        bisect.insort(self.recipients, (now, n))
        self.in_flight -= 1
        self.signal()

    def signal(self) -> None:
        """Wake every waiter to look again (an Event per generation: no lock needed)."""
        self.changed.set()
        self.changed = asyncio.Event()


class Pacer:
    """Per-mailbox pacing inside Microsoft's limits, shared by all the engine's workers.

    ``clock`` gives the time in seconds that the windows run on (``time.monotonic`` by
    default); ``time_scale`` is how many of its seconds pass in a real second, so waits
    can be slept in real time: a test against m365sim's ``throttled`` scenario, where a
    minute lasts a second, uses ``Pacer(time_scale=60)``.
    """

    def __init__(self, clock: Callable[[], float] | None = None, *, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be more than zero, got {time_scale}")
        self._scale = time_scale
        self._clock = clock or (time.monotonic if time_scale == 1.0
                                else (lambda: time.monotonic() * time_scale))
        self._mailboxes: dict[tuple[str, str], _Mailbox] = {}

    def _mailbox(self, conn: ConnectionSettings, sender: str) -> _Mailbox:
        key = (conn.name, sending_mailbox(conn, sender))
        box = self._mailboxes.get(key)
        if box is None:
            box = self._mailboxes[key] = _Mailbox()
        return box

    def wait_time(self, conn: ConnectionSettings, sender: str, recipients: int) -> float:
        """How long (clock seconds) a message would wait now, not counting waiters ahead of it.

        0: it could start at once; ``inf``: the mailbox has ``concurrent_requests`` in flight.
        """
        return self._mailbox(conn, sender).wait_time(self._clock(), conn, recipients)

    def cool_down(self, conn: ConnectionSettings, sender: str, seconds: float) -> None:
        """Start nothing from the sender's mailbox for ``seconds`` real seconds (a Retry-After)."""
        box = self._mailbox(conn, sender)
        box.cool_until = max(box.cool_until, self._clock() + seconds * self._scale)
        box.signal()  # waiters look again and see the longer wait

    @contextlib.asynccontextmanager
    async def slot(self, conn: ConnectionSettings, sender: str, recipients: int) -> AsyncIterator[None]:
        """Wait until the sender's mailbox may start a message to ``recipients`` addresses; hold it."""
        box = self._mailbox(conn, sender)
        me = object()
        box.waiting.append(me)
        try:
            while True:
                now = self._clock()
                wait = box.wait_time(now, conn, recipients) if box.waiting[0] is me else math.inf
                if wait <= 0:
                    started = box.admit(now, recipients)
                    break
                changed = box.changed
                timeout = None if math.isinf(wait) else wait / self._scale
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
        finally:
            box.waiting.remove(me)
            box.signal()  # the next in line may start, or take the head if this one was cancelled
        try:
            yield
        finally:
            box.release(self._clock(), started)
