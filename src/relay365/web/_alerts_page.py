"""Alerts: the channels, the thresholds, and a test alert through every channel.

Apprise URLs often carry a token (a webhook's secret, a bot token, a password), and the
page must never show one.  So each URL is shown masked (``masked_url``), and on save a
line that is still exactly the masked form of a stored URL keeps that stored URL: an
admin who changes a threshold does not have to paste every webhook again.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..catalogue import lookup_entry
from ..config import AlertSettings
from ..errors import ConfigError
from ._site import Admin, action, page

MASK = "****"
SUMMARIES = ("off", "daily", "weekly")
# A host name as DNS has them: dotted labels of up to 63 characters.  Anything else in the
# host position (Slack's, Discord's and Telegram's tokens sit there) is masked.
_HOST_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


def _shown_host(host: str) -> bool:
    if host.lower() == "localhost" or _HOST_NAME.match(host):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def masked_url(url: str) -> str:
    """``url`` with only its scheme, host and port left: user, password, path and query masked."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or not scheme.isascii() or not scheme.replace("+", "").isalnum():
        return MASK
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    _, at, hostport = authority.rpartition("@")
    if hostport.startswith("["):
        host, _, after = hostport.partition("]")
        host, port = host + "]", after.removeprefix(":")
    else:
        host, _, port = hostport.partition(":")
    shown = host if host and _shown_host(host) and (not port or port.isdigit()) else MASK
    masked = f"{scheme}://{MASK + '@' if at else ''}{shown}"
    if shown != MASK and port:
        masked += f":{port}"
    if tail.strip("/"):
        masked += f"/{MASK}"
    return masked


def resolve_urls(lines: list[str], stored: list[str]) -> list[str]:
    """The URLs to store for the submitted ``lines``: a line still masked keeps its stored URL."""
    remaining = list(stored)
    urls: list[str] = []
    for number, line in enumerate(lines, start=1):
        kept = next((url for url in remaining if masked_url(url) == line), None)
        if kept is not None:
            remaining.remove(kept)  # two URLs may mask alike: each line keeps one of them
            urls.append(kept)
        elif MASK in line:
            raise ConfigError(f"alerts.urls: line {number} ({line}) is partly masked and matches no saved "
                              "URL: paste the whole URL again, or put the line back as it was")
        else:
            urls.append(line)
    return urls


def _check_apprise(urls: list[str], stored: list[str]) -> None:
    """Refuse a URL Apprise cannot read before it is written: the relay builds its channels from it."""
    from ..alerts import AppriseChannel  # Apprise loads its plugins: only when a URL is new

    for url in urls:
        if url not in stored:
            AppriseChannel(url)  # ConfigError names only the scheme


@dataclass(frozen=True)
class AlertsForm:
    """The alert settings the page edits, as text fields (a refused form comes back as typed)."""

    urls: str
    email_to: str
    backlog_threshold: str
    expiry_days: str
    failure_interval: str
    summary: str

    @classmethod
    def from_settings(cls, alerts: AlertSettings) -> AlertsForm:
        return cls(urls="\n".join(masked_url(u) for u in alerts.urls), email_to=", ".join(alerts.email_to),
                   backlog_threshold=str(alerts.backlog_threshold),
                   expiry_days=", ".join(str(d) for d in alerts.expiry_days),
                   failure_interval=f"{alerts.failure_interval:g}", summary=alerts.summary)

    @classmethod
    def from_form(cls, form: FormData) -> AlertsForm:
        def text(name: str) -> str:
            value = form.get(name)
            return value.strip() if isinstance(value, str) else ""

        return cls(urls=text("urls"), email_to=text("email_to"), backlog_threshold=text("backlog_threshold"),
                   expiry_days=text("expiry_days"), failure_interval=text("failure_interval"),
                   summary=text("summary"))

    def values(self) -> dict[str, Any]:
        """The ``[alerts]`` keys this form sets, typed as TOML should hold them; ConfigError if unreadable."""
        return {
            "email_to": [a for a in re.split(r"[,\s]+", self.email_to) if a],
            "backlog_threshold": _whole("backlog_threshold", self.backlog_threshold),
            "expiry_days": [_whole("expiry_days", d) for d in re.split(r"[,\s]+", self.expiry_days) if d],
            "failure_interval": _seconds("failure_interval", self.failure_interval),
            "summary": self.summary,
        }

    def url_lines(self) -> list[str]:
        return [line.strip() for line in self.urls.splitlines() if line.strip()]


def _whole(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"alerts.{name}: {text!r} is not a whole number") from None


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"alerts.{name}: {text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise ConfigError(f"alerts.{name}: give a finite number of seconds")
    return int(value) if value.is_integer() else value


def _alerts_page(admin: Admin, request: Request, status_code: int = 200, *, form: AlertsForm | None = None,
                 error: str | None = None, results: list[tuple[str, bool]] | None = None) -> Response:
    alerts = admin.settings.alerts
    return admin.render(request, "alerts.html", status_code,
                        form=form or AlertsForm.from_settings(alerts), summaries=SUMMARIES, error=error,
                        results=results, any_failed=any(not ok for _, ok in results or []),
                        channel_entry=lookup_entry("R365-ALERT-CHANNEL"),
                        has_channels=bool(alerts.urls or alerts.email_to))


async def alerts_page(admin: Admin, request: Request) -> Response:
    return _alerts_page(admin, request)


async def _save_alerts(admin: Admin, request: Request, form: FormData) -> Response:
    wanted = AlertsForm.from_form(form)

    def change(data: dict[str, Any]) -> dict[str, Any]:
        # The file's own URLs, not the running ones: a URL from RELAY365_* must not land in the file.
        section = dict(data.get("alerts") or {})
        stored = [u for u in section.get("urls", []) if isinstance(u, str)]
        urls = resolve_urls(wanted.url_lines(), stored)
        _check_apprise(urls, stored)
        section.update(wanted.values(), urls=urls)
        return {**data, "alerts": section}

    try:
        await admin.site.change_settings(change)
    except ConfigError as exc:
        return _alerts_page(admin, request, 400, form=wanted, error=exc.message)
    Admin.flash(request, "Alert settings saved")
    return RedirectResponse("/alerts", status_code=303)


async def _send_test_alert(admin: Admin, request: Request, form: FormData) -> Response:
    from ..alerts import make_test_alert

    if admin.alerts is None:
        return _alerts_page(admin, request, 503, error="Alerts are not running in this process: start "
                                                       "relay365 with `relay365 serve`.")
    if not admin.alerts.alerter.channels:
        return _alerts_page(admin, request, 400, error="No alert channel is configured: add an Apprise URL "
                                                       "or an email address below and save first.")
    sent = await admin.alerts.alerter.send(make_test_alert())
    # Channel names are Apprise's privacy URLs, which still show some tokens (custom headers).
    results = [(masked_url(name) if "://" in name else name, ok) for name, ok in sent.items()]
    return _alerts_page(admin, request, results=results)


save_alerts = action(_save_alerts)
send_test_alert = action(_send_test_alert)

ROUTES = [
    ("/alerts", page(alerts_page), ["GET"]),
    ("/alerts", save_alerts, ["POST"]),
    ("/alerts/test", send_test_alert, ["POST"]),
]
