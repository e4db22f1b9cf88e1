"""Failed logins per client address: the admin page's password and SMTP AUTH both count them."""

from __future__ import annotations

import time
from collections import deque


class FailedLogins:
    """Wrong passwords per client address: ``attempts`` per ``window`` seconds, then a pause.

    In memory, per process: a restart forgets, and each node of a cluster counts its own.
    """

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str, attempts: int, window: float) -> float | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        failures = self._failures.get(client)
        if not failures:
            return None
        now = time.monotonic()
        while failures and failures[0] <= now - window:
            failures.popleft()
        if len(failures) < attempts:
            return None
        return failures[0] + window - now

    def failed(self, client: str) -> None:
        self._failures.setdefault(client, deque()).append(time.monotonic())
        if len(self._failures) > 10_000:  # a flood of addresses must not grow memory forever
            self._failures.pop(next(iter(self._failures)))

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
