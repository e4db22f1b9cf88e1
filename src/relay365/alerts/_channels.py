"""Where an alert goes: an Apprise URL, or email queued through relay365 itself.

Apprise speaks Slack, Teams, Discord, Telegram, ntfy, JSON/form webhooks, mailto and
about a hundred more from one URL each.  Email through relay365 is queued in the
outbox like any application's mail, on a connection other than the one the alert is
about: a connection that needs sign-in cannot carry the news that it needs sign-in.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal, Protocol

import apprise

from ..catalogue import Entry
from ..config import ConnectionSettings, Settings
from ..store import NewMessage

log = logging.getLogger("relay365.alerts")

Level = Literal["info", "warning", "failure"]
AlertKind = Literal["delivery-failures", "needs-sign-in", "credential-expiry", "backlog", "summary", "test"]
_APPRISE_TYPE = {"info": apprise.NotifyType.INFO, "warning": apprise.NotifyType.WARNING,
                 "failure": apprise.NotifyType.FAILURE}


@dataclass(frozen=True)
class Alert:
    """One notification: what happened, about which connection, and its diagnosis."""

    kind: AlertKind
    title: str
    body: str
    level: Level = "warning"
    connection: str | None = None  # the connection the alert is about (never the one carrying it)
    entry: Entry | None = None

    def text(self) -> str:
        """The body with the diagnosis, as every channel shows it."""
        if self.entry is None:
            return self.body
        return f"{self.body}\n\n{self.entry.id}: {self.entry.title}\nFix: {self.entry.fix}"


class Channel(Protocol):
    name: str

    async def deliver(self, alert: Alert) -> bool:
        """True when the channel took the alert."""
        ...


class AppriseChannel:
    """One Apprise URL."""

    def __init__(self, url: str) -> None:
        self._apprise = apprise.Apprise()
        # Apprise loads its plugins on first use; one of them imports the deprecated
        # imghdr module, whose DeprecationWarning is Apprise's business, not an error here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            added = self._apprise.add(url)
        if not added:
            from ..errors import ConfigError

            raise ConfigError(f"alerts.urls: {url.split('://')[0]}://... is not an Apprise URL "
                              "Apprise understands")
        self.name: str = next(iter(self._apprise)).url(privacy=True)  # type: ignore[no-untyped-call]

    async def deliver(self, alert: Alert) -> bool:
        result = await asyncio.to_thread(self._apprise.notify, body=alert.text(), title=alert.title,
                                         notify_type=_APPRISE_TYPE[alert.level])
        return bool(result)


Enqueue = Callable[[NewMessage], Awaitable[str]]


class EmailChannel:
    """Alert email to admins, queued in relay365's own outbox.

    ``enqueue`` is the outbox's (``relay365 serve`` passes the one that wakes the
    delivery engine).  The message is marked (``X-Relay365-Alert``, ``Auto-Submitted``)
    and goes through a connection other than the alert's.
    """

    def __init__(self, settings: Settings, to: list[str], enqueue: Enqueue, *, sender: str | None = None,
                 connections: list[str] | None = None) -> None:
        self._settings = settings
        self._to = to
        self._enqueue = enqueue
        self._sender = sender
        self._allowed = connections or []
        self.name = f"email to {', '.join(to)}"
        self.last_queue_id: str | None = None

    def carrier(self, about: str | None) -> tuple[ConnectionSettings, str] | None:
        """The connection and sender for an alert about connection ``about``."""
        for conn in self._settings.connections:
            if conn.name == about or (self._allowed and conn.name not in self._allowed):
                continue
            if self._sender is not None:
                if self._sender.lower() in conn.senders:
                    return conn, self._sender
                continue
            if conn.sender is not None:
                return conn, conn.sender
        return None

    async def deliver(self, alert: Alert) -> bool:
        found = self.carrier(alert.connection)
        if found is None:
            log.warning("alert %r not emailed: no connection other than %s can carry it", alert.title,
                        alert.connection)
            return False
        conn, sender = found
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(self._to)
        msg["Subject"] = f"[relay365] {alert.title}"
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Relay365-Alert"] = alert.kind + (f"; about={alert.connection}" if alert.connection else "")
        msg.set_content(alert.text() + "\n")
        self.last_queue_id = await self._enqueue(NewMessage(
            connection=conn.name, sender=sender, recipients=tuple(self._to), raw=msg.as_bytes(),
            source="api", client="relay365-alerts", subject=str(msg["Subject"])))
        return True
