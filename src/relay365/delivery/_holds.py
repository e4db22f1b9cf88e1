"""Sign-in holds: a connection that needs a sign-in keeps its mail waiting, attempts unburned.

When a send meets ``NeedsSignIn``, the connection's waiting messages are deferred in the
store (``Store.defer_connection``, no attempt counted) until the hold ends, and the
engine claims none of its mail meanwhile.  The first time, one warning is logged and the
``on_needs_sign_in`` hook is called; holds that follow (the sign-in still missing when a
hold ends) are logged quietly, until the connection has a token again.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from ..config import ConnectionSettings
from ..errors import NeedsSignIn, StoreError
from ..store import Store

log = logging.getLogger("relay365.delivery")

NeedsSignInHook = Callable[[str, NeedsSignIn], Awaitable[None] | None]


class SignInHolds:
    """Which connections are held for a sign-in, and until when."""

    def __init__(self, store: Store, hold: timedelta, hook: NeedsSignInHook | None) -> None:
        self._store = store
        self._hold = hold
        self._hook = hook
        self._until: dict[str, datetime] = {}  # connection → end of its hold
        self._signed_out: set[str] = set()  # warned about and hooked; cleared when a token comes back

    def until(self, connection: str) -> datetime | None:
        """When the connection's hold ends (possibly in the past); None when it is not held."""
        return self._until.get(connection)

    def end(self, connection: str) -> None:
        """The hold ended and the connection may send (its token is back, or will tell)."""
        self._until.pop(connection, None)

    def signed_in_again(self, connection: str) -> None:
        """The connection got a token or sent a message: the next NeedsSignIn warns again."""
        if connection in self._signed_out:
            self._signed_out.discard(connection)
            log.info("connection %s has a token again: its mail is being sent", connection)

    async def hold(self, conn: ConnectionSettings, error: NeedsSignIn) -> datetime:
        """Hold the connection's waiting mail until a sign-in may have happened; when the hold ends."""
        now = datetime.now(UTC)
        held = self._until.get(conn.name)
        if held is not None and held > now:
            return held  # another worker met it first and held the connection
        until = self._until[conn.name] = now + self._hold
        try:
            count = await self._store.defer_connection(conn.name, until, error.entry.id, error.message)
        except StoreError as exc:
            log.error("connection %s needs sign-in, but its waiting mail could not be held: %s",
                      conn.name, exc)
            count = 0
        if conn.name in self._signed_out:
            log.info("connection %s still needs sign-in: %d waiting messages held until %s",
                     conn.name, count, until.isoformat(timespec="seconds"))
            return until
        self._signed_out.add(conn.name)
        log.warning("connection %s needs sign-in (%s%s: %s): %d waiting messages held, looked at "
                    "again at %s; fix: %s", conn.name, error.entry.id,
                    f" [{error.code}]" if error.code else "", error.message, count,
                    until.isoformat(timespec="seconds"), error.entry.fix)
        if self._hook is not None:
            try:
                called = self._hook(conn.name, error)
                if inspect.isawaitable(called):
                    await called
            except Exception:
                log.exception("connection %s: the needs-sign-in hook failed", conn.name)
        return until
