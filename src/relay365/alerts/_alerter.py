"""``Alerter``: turns what happens to the relay into alerts, once, grouped and rate-limited.

    alerter = Alerter(alert_settings, channels, store=store)
    alerter.delivery_failed(message_id, connection, entry_id, code)   # grouped, sent by flush
    await alerter.flush_failures()
    await alerter.needs_sign_in("contoso", entry_id="AAD-REFRESH-REVOKED", detail="...")
    await alerter.credential_expiring(expiry, now)                   # once per threshold
    await alerter.backlog(250)                                       # once per excursion
    await alerter.summary(store, "daily", now)

What was already said survives a restart where repeating it would be noise: the expiry
thresholds already alerted are kept in the store's settings.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..catalogue import lookup_entry
from ..diagnose import CredentialExpiry
from ..store import MessageState, Store
from ._channels import Alert, Channel, Level
from ._settings import AlertSettings

log = logging.getLogger("relay365.alerts")

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Failure:
    message_id: str
    connection: str
    entry_id: str | None
    code: str | None = None
    detail: str | None = None


@dataclass
class _Pending:
    failures: list[Failure] = field(default_factory=list)
    since: dt.datetime | None = None  # when the oldest pending failure arrived


class Alerter:
    """Sends alerts to every channel, deciding what is worth saying and when."""

    def __init__(self, settings: AlertSettings, channels: list[Channel], *, store: Store | None = None,
                 clock: Clock = utc_now) -> None:
        self.settings = settings
        self.channels = channels
        self._store = store
        self._clock = clock
        self._pending = _Pending()
        self._last_failure_alert: dt.datetime | None = None
        self._signed_out: dict[str, dt.datetime] = {}  # connection → when its alert was sent
        self._backlog_alerted = False
        self._said: dict[str, str] = {}  # without a store: what was said, in memory

    async def send(self, alert: Alert) -> dict[str, bool]:
        """Deliver ``alert`` to every channel; which took it (a failing channel is logged)."""
        results: dict[str, bool] = {}
        for channel in self.channels:
            try:
                ok = await channel.deliver(alert)
            except Exception:  # one broken channel must not silence the others
                log.exception("alert channel %s failed", channel.name)
                ok = False
            if not ok:
                entry = lookup_entry("R365-ALERT-CHANNEL")
                log.warning("alert %r not delivered to %s (%s: %s)", alert.title, channel.name,
                            entry.id, entry.title)
            results[channel.name] = ok
        return results

    # ---- delivery failures: grouped, rate-limited ---------------------------------------------

    def delivery_failed(self, message_id: str, connection: str, entry_id: str | None,
                        code: str | None = None, detail: str | None = None) -> None:
        """A message went to the dead letter; it is told about in the next grouped alert."""
        if not self._pending.failures:
            self._pending.since = self._clock()
        self._pending.failures.append(Failure(message_id, connection, entry_id, code, detail))

    async def flush_failures(self, *, force: bool = False) -> Alert | None:
        """Send the grouped failure alert when it is due (``failure_delay`` after the first
        failure, at most one per ``failure_interval``); the alert sent, or None."""
        pending = self._pending
        if not pending.failures:
            return None
        now = self._clock()
        if not force:
            assert pending.since is not None
            if (now - pending.since).total_seconds() < self.settings.failure_delay:
                return None
            last = self._last_failure_alert
            if last is not None and (now - last).total_seconds() < self.settings.failure_interval:
                return None
        failures, self._pending = pending.failures, _Pending()
        self._last_failure_alert = now
        alert = failure_alert(failures)
        await self.send(alert)
        return alert

    # ---- sign-in ----------------------------------------------------------------------------

    async def needs_sign_in(self, connection: str, error: object = None, *, entry_id: str | None = None,
                            detail: str | None = None) -> Alert | None:
        """A connection needs an interactive sign-in (the delivery engine's hook signature too)."""
        now = self._clock()
        sent = self._signed_out.get(connection)
        if sent is not None and (now - sent).total_seconds() < self.settings.sign_in_repeat:
            return None
        entry = getattr(error, "entry", None) or lookup_entry(entry_id or "R365-NEEDS-SIGN-IN")
        message = getattr(error, "message", None) or detail or "its sign-in no longer works"
        self._signed_out[connection] = now
        alert = Alert("needs-sign-in", f"Connection {connection} needs sign-in",
                      f"relay365 cannot get a token for connection {connection!r}: {message}\n"
                      f"Its mail is held (not lost) until someone runs `relay365 login {connection}`.",
                      "failure", connection, entry)
        await self.send(alert)
        return alert

    def signed_in(self, connection: str) -> None:
        """The connection works again: a later loss of its sign-in is alerted again."""
        self._signed_out.pop(connection, None)

    # ---- credential expiry --------------------------------------------------------------------

    async def credential_expiring(self, expiry: CredentialExpiry, now: dt.datetime) -> Alert | None:
        """Alert once per threshold (60, 30, 14, 7, 1 days, on the day; then expired) crossed."""
        days = expiry.days_left(now)
        if days is None:
            return None
        crossed = [d for d in self.settings.expiry_days if days <= d]
        if expiry.expired(now):
            level_key = "expired"
        elif crossed:
            level_key = str(min(crossed))
        else:
            return None
        key = f"alerts.expiry.{expiry.connection}.{expiry.kind}.{expiry.key}"
        if await self._get(key) == level_key:
            return None
        await self._set(key, level_key)
        when = expiry.expires_at.date().isoformat() if expiry.expires_at else "?"
        secret = expiry.kind == "client secret"
        if level_key == "expired":
            entry = lookup_entry("AAD-SECRET-EXPIRED" if secret else "AAD-CERT-INVALID")
            title = f"The {expiry.kind} of connection {expiry.connection} has expired"
            body = (f"The {expiry.kind} of connection {expiry.connection!r} expired on {when} (from "
                    f"{expiry.source}): no token can be had with it, so its mail is not sent.")
            level: Level = "failure"
        else:
            entry = lookup_entry("R365-SECRET-EXPIRING" if secret else "R365-CERT-EXPIRING")
            in_days = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
            title = f"The {expiry.kind} of connection {expiry.connection} expires {in_days}"
            body = (f"The {expiry.kind} of connection {expiry.connection!r} expires on {when}, "
                    f"{in_days} (from {expiry.source}). Renew it before then, or mail stops.")
            level = "failure" if days <= 1 else "warning"
        alert = Alert("credential-expiry", title, body, level, expiry.connection, entry)
        await self.send(alert)
        return alert

    # ---- backlog ---------------------------------------------------------------------------------

    async def backlog(self, waiting: int) -> Alert | None:
        """Alert when ``waiting`` passes the threshold; again only after it fell back to half."""
        threshold = self.settings.backlog_threshold
        if threshold <= 0:
            return None
        if waiting <= threshold // 2:
            self._backlog_alerted = False
            return None
        if waiting <= threshold or self._backlog_alerted:
            return None
        self._backlog_alerted = True
        alert = Alert("backlog", f"{waiting} messages are waiting in the outbox",
                      f"{waiting} messages wait to be sent (alert threshold {threshold}).", "warning",
                      None, lookup_entry("R365-BACKLOG"))
        await self.send(alert)
        return alert

    # ---- summary -------------------------------------------------------------------------------------

    async def summary(self, store: Store, period: str, now: dt.datetime) -> Alert:
        """Send the daily or weekly summary: sent and failed counts, top failure causes."""
        since = now - (dt.timedelta(days=7) if period == "weekly" else dt.timedelta(days=1))
        messages = await store.list_messages(since=since, limit=100_000)
        states = Counter(m.state for m in messages)
        sent = states[MessageState.SENT]
        failed = states[MessageState.FAILED]
        waiting = states[MessageState.QUEUED] + states[MessageState.DEFERRED] + states[MessageState.SENDING]
        causes = Counter(m.last_entry_id or "unknown" for m in messages if m.state == MessageState.FAILED)
        lines = [f"Since {since.isoformat(timespec='minutes')}: {sent} sent, {failed} failed, "
                 f"{waiting} still waiting."]
        if causes:
            lines.append("Top failure causes:")
            for entry_id, count in causes.most_common(5):
                entry = lookup_entry(entry_id)
                lines.append(f"  {count} × {entry_id}: {entry.title}")
        alert = Alert("summary", f"relay365 {period} summary: {sent} sent, {failed} failed",
                      "\n".join(lines), "failure" if failed else "info")
        await self.send(alert)
        return alert

    # ---- what was said, kept in the store --------------------------------------------------------

    async def _get(self, key: str) -> str | None:
        return await self._store.get_setting(key) if self._store is not None else self._said.get(key)

    async def _set(self, key: str, value: str) -> None:
        if self._store is not None:
            await self._store.set_setting(key, value)
        else:
            self._said[key] = value


def failure_alert(failures: list[Failure]) -> Alert:
    """One alert for many failures, grouped by diagnosis (most frequent first)."""
    groups: dict[str, list[Failure]] = {}
    for f in failures:
        groups.setdefault(f.entry_id or "R365-PERMANENT", []).append(f)
    lines = []
    for entry_id, group in sorted(groups.items(), key=lambda g: -len(g[1])):
        entry = lookup_entry(entry_id)
        ids = ", ".join(f.message_id for f in group[:5]) + (" ..." if len(group) > 5 else "")
        connections = ", ".join(sorted({f.connection for f in group}))
        lines.append(f"{len(group)} × {entry.id}: {entry.title} (connection {connections}; {ids})\n"
                     f"  Fix: {entry.fix}")
    count = len(failures)
    title = f"{count} message{'s' if count != 1 else ''} could not be delivered"
    only = {f.connection for f in failures}
    # The diagnosis of each group is in the body; the alert is about a connection when all are.
    return Alert("delivery-failures", title, "\n".join(lines), "failure",
                 next(iter(only)) if len(only) == 1 else None)
