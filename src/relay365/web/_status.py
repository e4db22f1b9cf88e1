"""Status: every connection's health, the queue, sent and failed over time, the latest failures."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..catalogue import Entry, lookup_entry
from ..config import ConnectionSettings
from ..diagnose import local_expiries
from ..errors import StoreError
from ..store import ConnectionState, MessageState, OutcomeCount
from ._log_page import failure_entry
from ._site import Admin, page

DAYS_SHOWN = 7
FAILURES_SHOWN = 10
# Credential countdown colours: the expiry watch warns from 30 days on; a week is urgent.
WARN_DAYS = 30
BAD_DAYS = 7
# The chart, in SVG user units (it scales with the page).
CHART_WIDTH, CHART_HEIGHT, CHART_TOP, CHART_BOTTOM = 350, 150, 16, 34
SENT_FILL, FAILED_FILL = "#116329", "#a40e26"  # the stylesheet's --ok and --bad


@dataclass(frozen=True)
class Expiry:
    """One credential's countdown as the page shows it."""

    kind: str
    expires_at: dt.datetime | None
    days_left: int | None
    badge: str  # ok | warn | bad, the stylesheet's badge classes
    source: str


@dataclass(frozen=True)
class ConnectionHealth:
    """What the status page says of one connection."""

    settings: ConnectionSettings
    state: ConnectionState
    health: str  # the badge's words
    badge: str
    token_valid_until: dt.datetime | None  # the latest access token in the cache
    cache_problem: str | None  # why the token cache could not be read
    diagnosis: Entry | None  # why it needs sign-in
    expiries: list[Expiry]


def token_valid_until(serialized: str | None) -> dt.datetime | None:
    """When the latest access token in an MSAL cache expires; None without one."""
    if not serialized:
        return None
    try:
        tokens = json.loads(serialized).get("AccessToken") or {}
        ends = [int(t["expires_on"]) for t in tokens.values() if isinstance(t, dict) and "expires_on" in t]
    except (ValueError, TypeError, AttributeError):
        return None  # not a cache MSAL wrote: nothing to say about its tokens
    return dt.datetime.fromtimestamp(max(ends), dt.UTC) if ends else None


def _expiry(kind: str, expires_at: dt.datetime | None, days_left: int | None, source: str) -> Expiry:
    if days_left is None:
        badge = "warn"  # unknown: nobody will be warned before it stops working
    elif days_left <= BAD_DAYS:
        badge = "bad"
    elif days_left <= WARN_DAYS:
        badge = "warn"
    else:
        badge = "ok"
    return Expiry(kind, expires_at, days_left, badge, source)


async def connection_health(admin: Admin, conn: ConnectionSettings, now: dt.datetime) -> ConnectionHealth:
    state = await admin.store.connection_state(conn.name)
    cache_problem: str | None = None
    try:
        cache = await admin.store.load_token_cache(conn.name)
    except StoreError as exc:  # another key, or the database is down: say so on the card
        cache, cache_problem = None, exc.message
    expiries = [_expiry(e.kind, e.expires_at, e.days_left(now), e.source) for e in local_expiries(conn)]
    diagnosis = None
    if state.needs_sign_in:
        health, badge = "Needs sign-in", "bad"
        diagnosis = lookup_entry(state.entry_id or "R365-NEEDS-SIGN-IN")
    elif conn.mode == "app-only":
        health, badge = "App-only (no sign-in)", "ok"
    elif cache is None:
        health, badge = "Not signed in yet", "warn"
    else:
        health, badge = f"Signed in as {state.account}" if state.account else "Signed in", "ok"
    return ConnectionHealth(conn, state, health, badge, token_valid_until(cache), cache_problem,
                            diagnosis, expiries)


def _day_periods(now: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    # UTC calendar days, today last: the page shows every time in UTC.
    today = dt.datetime.combine(now.astimezone(dt.UTC).date(), dt.time(), tzinfo=dt.UTC)
    return [(today - dt.timedelta(days=n), today - dt.timedelta(days=n - 1))
            for n in range(DAYS_SHOWN - 1, -1, -1)]


def chart_bars(days: list[OutcomeCount]) -> dict[str, Any]:
    """Bar positions for the SVG chart: a sent and a failed bar per day, scaled to the busiest."""
    highest = max([1, *(max(d.sent, d.failed) for d in days)])
    slot = CHART_WIDTH / len(days)
    bar = slot * 0.35
    usable = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM
    bars = []
    for i, d in enumerate(days):
        left = i * slot + slot * 0.12
        for offset, count, fill, what in ((0.0, d.sent, SENT_FILL, "sent"),
                                          (bar, d.failed, FAILED_FILL, "failed")):
            height = usable * count / highest
            bars.append({"x": round(left + offset, 1), "y": round(CHART_TOP + usable - height, 1),
                         "width": round(bar, 1), "height": round(height, 1), "fill": fill,
                         "label": f"{d.start:%a %d %b}: {count} {what}"})
    labels = [{"x": round(i * slot + slot / 2, 1), "text": f"{d.start:%a}", "date": f"{d.start:%d %b}"}
              for i, d in enumerate(days)]
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "baseline": CHART_HEIGHT - CHART_BOTTOM,
            "bars": bars, "labels": labels, "highest": highest, "sent_fill": SENT_FILL,
            "failed_fill": FAILED_FILL}


async def status_page(admin: Admin, request: Request) -> Response:
    now = dt.datetime.now(dt.UTC)
    connections = [await connection_health(admin, conn, now) for conn in admin.settings.connections]
    queue = await admin.store.queue_counts()
    days = _day_periods(now)
    counts = await admin.store.outcome_counts(
        [*days, (now - dt.timedelta(hours=24), now + dt.timedelta(seconds=1)),
         (now - dt.timedelta(days=7), now + dt.timedelta(seconds=1))])
    per_day, last_24h, last_7d = counts[:DAYS_SHOWN], counts[DAYS_SHOWN], counts[DAYS_SHOWN + 1]
    failures = await admin.store.list_messages(states={MessageState.FAILED, MessageState.DEFERRED},
                                               limit=FAILURES_SHOWN)
    return admin.render(
        request, "status.html", connections=connections, queue=queue,
        waiting=queue[MessageState.QUEUED] + queue[MessageState.SENDING] + queue[MessageState.DEFERRED],
        last_24h=last_24h, last_7d=last_7d, per_day=per_day, chart=chart_bars(per_day),
        failures=[(m, failure_entry(m.last_entry_id, m.last_code, m.last_detail)) for m in failures],
        now=now, states=list(MessageState))


ROUTES = [
    ("/", page(status_page), ["GET"]),
]
