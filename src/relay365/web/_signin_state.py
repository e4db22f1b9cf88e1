"""Sign-ins started from the page and not yet back, and the latest results: the site keeps
them across configuration reloads (``AdminSite.sign_ins``), the sign-in pages fill them."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from ..auth import Connection, SignInFlow, SignInResult
from ..catalogue import Entry
from ..errors import Relay365Error

PENDING_FOR = 15 * 60.0  # seconds a started sign-in may take
_KEEP_RESULTS = 50


@dataclass
class Pending:
    """A sign-in started from the page, waiting for Microsoft's answer on the callback."""

    connection: Connection
    flow: SignInFlow
    origin: str  # where the admin started: the result is shown there
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class SignInOutcome:
    """What a sign-in from the page came to, for its result page."""

    connection: str
    result: SignInResult | None = None
    missing: tuple[str, ...] = ()
    error: Relay365Error | None = None

    @property
    def entry(self) -> Entry | None:
        return self.error.entry if self.error is not None else None


class SignIns:
    """Sign-ins started from the page and not yet back, and the latest results."""

    def __init__(self) -> None:
        self._pending: dict[str, Pending] = {}
        self._results: dict[str, SignInOutcome] = {}

    def started(self, pending: Pending) -> None:
        now = time.monotonic()
        for state in [s for s, p in self._pending.items() if now - p.started > PENDING_FOR]:
            self._pending.pop(state).connection.close()
        self._pending[pending.flow.state] = pending

    def came_back(self, state: str) -> Pending | None:
        pending = self._pending.pop(state, None)
        if pending is not None and time.monotonic() - pending.started > PENDING_FOR:
            pending.connection.close()
            return None
        return pending

    def record(self, outcome: SignInOutcome) -> str:
        while len(self._results) >= _KEEP_RESULTS:
            self._results.pop(next(iter(self._results)))
        result_id = secrets.token_urlsafe(12)
        self._results[result_id] = outcome
        return result_id

    def result(self, result_id: str) -> SignInOutcome | None:
        return self._results.get(result_id)
