"""``AlertService``: what ``relay365 serve`` runs beside delivery to watch and warn.

    service = AlertService(settings, alert_settings, store, enqueue=outbox.enqueue)
    task = asyncio.create_task(service.run())        # until cancelled

Each tick looks at the store (new dead letters, connections that need sign-in, the
backlog) and, when due, at credential expiry (the expiry watch), the keep-alive and the
summary.  Every step can also be called on its own, with an injected clock: tests drive
the expiry watch with m365sim's clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import replace

from ..auth import Connection, TokenSource
from ..config import Settings
from ..diagnose import CredentialExpiry, credential_expiries
from ..errors import Relay365Error
from ..outbound import Outbound
from ..store import MessageState, Store
from ._alerter import Alerter, Clock, utc_now
from ._channels import Alert, AppriseChannel, Channel, EmailChannel, Enqueue
from ._keepalive import keep_alive
from ._settings import AlertSettings

log = logging.getLogger("relay365.alerts")


def build_channels(settings: Settings, alerts: AlertSettings, enqueue: Enqueue) -> list[Channel]:
    """One channel per Apprise URL, and one for email through relay365 when ``email_to`` is set."""
    channels: list[Channel] = [AppriseChannel(url) for url in alerts.urls]
    if alerts.email_to:
        channels.append(EmailChannel(settings, alerts.email_to, enqueue, sender=alerts.email_from,
                                     connections=alerts.email_connections))
    return channels


def make_test_alert() -> Alert:
    return Alert("test", "relay365 test alert",
                 "This is a test alert from relay365 (`relay365 alerts test`): this channel works.", "info")


class AlertService:
    """Watches the store and the connections; the ``Alerter`` says what is found.

    ``outbound``: the relay's delivery agent, whose credentials and Graph clients the expiry
    watch and the keep-alive use (one token cache per connection and process); by default
    one of the service's own, closed by ``close``.
    """

    def __init__(self, settings: Settings, alerts: AlertSettings, store: Store, *,
                 enqueue: Enqueue | None = None, channels: list[Channel] | None = None,
                 clock: Clock = utc_now, outbound: Outbound | None = None) -> None:
        self.settings = settings
        self.alerts = alerts
        self.store = store
        self.clock = clock
        chosen = channels if channels is not None else build_channels(settings, alerts,
                                                                       enqueue or store.enqueue)
        self.alerter = Alerter(alerts, chosen, store=store, clock=clock)
        self._owns_outbound = outbound is None
        self._outbound = outbound or Outbound(settings, store)
        self._known_failed: set[str] | None = None
        self._last: dict[str, dt.datetime] = {}

    def connection(self, name: str) -> Connection:
        return self._outbound.connection(name)

    async def close(self) -> None:
        if self._owns_outbound:
            await self._outbound.aclose()

    # ---- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick every ``check_interval`` seconds until cancelled; a failing tick is logged."""
        try:
            while True:
                try:
                    await self.tick()
                except Relay365Error as exc:
                    log.warning("alerts: %s", exc)
                except Exception:
                    log.exception("alerts: a check failed; trying again at the next tick")
                await asyncio.sleep(self.alerts.check_interval)
        finally:
            await self.close()

    async def tick(self) -> None:
        await self.check_failed_messages()
        await self.alerter.flush_failures()
        await self.check_sign_in_states()
        await self.check_backlog()
        if self._due("expiry", self.alerts.expiry_interval):
            await self.check_expiry()
        if self.alerts.keep_alive and self._due("keep-alive", self.alerts.keep_alive_interval):
            await self.keep_alive()
        await self.maybe_summary()

    def _due(self, what: str, every: float) -> bool:
        now = self.clock()
        last = self._last.get(what)
        if last is not None and (now - last).total_seconds() < every:
            return False
        self._last[what] = now
        return True

    # ---- the watches -------------------------------------------------------------------------

    async def check_failed_messages(self) -> int:
        """Dead letters that appeared since the last look join the next grouped alert.

        The first look only learns what is already there: a restart does not re-alert.
        """
        failed = await self.store.list_messages(states={MessageState.FAILED}, limit=1000)
        ids = {m.id for m in failed}
        if self._known_failed is None:
            self._known_failed = ids
            return 0
        new = [m for m in failed if m.id not in self._known_failed]
        self._known_failed = ids
        for m in reversed(new):  # oldest first
            self.alerter.delivery_failed(m.id, m.connection, m.last_entry_id, m.last_code)
        return len(new)

    async def check_sign_in_states(self) -> list[Alert]:
        sent = []
        for conn in self.settings.connections:
            state = await self.store.connection_state(conn.name)
            if state.needs_sign_in:
                alert = await self.alerter.needs_sign_in(conn.name, entry_id=state.entry_id,
                                                         detail=state.detail)
                if alert is not None:
                    sent.append(alert)
            else:
                self.alerter.signed_in(conn.name)
        return sent

    async def check_backlog(self) -> Alert | None:
        counts = await self.store.queue_counts()
        waiting = sum(counts.get(s, 0) for s in (MessageState.QUEUED, MessageState.DEFERRED,
                                                  MessageState.SENDING))
        return await self.alerter.backlog(waiting)

    async def expiries(self) -> list[CredentialExpiry]:
        """Every connection's credentials and their end dates (Graph when permitted).

        An end date once read is remembered in the store: after the secret expired, Graph
        cannot be asked any more (no token), yet the expiry is still to be told.
        """
        found: list[CredentialExpiry] = []
        for conn in self.settings.connections:
            tokens: list[TokenSource] = [self.connection(conn.name)]
            expiries, _ = await credential_expiries(conn, tokens, self._outbound.graph_client(conn))
            for expiry in expiries:
                key = f"alerts.expiry-date.{conn.name}.{expiry.kind}"
                if expiry.expires_at is not None:
                    await self.store.set_setting(key, f"{expiry.expires_at.isoformat()} {expiry.source}")
                elif (known := await self.store.get_setting(key)) is not None:
                    when, _, source = known.partition(" ")
                    expiry = replace(expiry, expires_at=dt.datetime.fromisoformat(when),
                                     source=f"{source} (last read)")
                found.append(expiry)
        return found

    async def check_expiry(self) -> list[Alert]:
        """The expiry watch: one alert per credential and threshold crossed."""
        now = self.clock()
        sent = []
        for expiry in await self.expiries():
            alert = await self.alerter.credential_expiring(expiry, now)
            if alert is not None:
                sent.append(alert)
        return sent

    async def keep_alive(self) -> list[str]:
        """Refresh every delegated sign-in; the connections that turned out to need sign-in."""
        lost = []
        for conn in self.settings.connections:
            if conn.mode != "delegated":
                continue
            error = await keep_alive(self.connection(conn.name))
            if error is not None and error.entry.kind == "auth":
                lost.append(conn.name)
                await self.alerter.needs_sign_in(conn.name, error)
        return lost

    async def maybe_summary(self) -> Alert | None:
        if self.alerts.summary == "off":
            return None
        now = self.clock()
        if now.hour != self.alerts.summary_hour or (self.alerts.summary == "weekly" and now.weekday() != 0):
            return None
        stamp = now.date().isoformat()
        if await self.store.get_setting("alerts.summary.last") == stamp:
            return None
        await self.store.set_setting("alerts.summary.last", stamp)
        return await self.alerter.summary(self.store, self.alerts.summary, now)

