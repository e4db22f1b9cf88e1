"""Keep-alive: a daily silent refresh of every delegated sign-in.

Microsoft expires a refresh token after 90 days without use (AADSTS700082).  A relay
that sends rarely would otherwise need a new sign-in after a quiet quarter; one forced
refresh a day, which rotates the refresh token, keeps the sign-in alive indefinitely.
"""

from __future__ import annotations

import logging

from ..auth import Connection, Resource
from ..errors import AuthError, NeedsSignIn

log = logging.getLogger("relay365.alerts")


async def keep_alive(connection: Connection) -> AuthError | None:
    """Refresh ``connection``'s token silently (delegated only); the error when it failed.

    A ``NeedsSignIn`` here is what the keep-alive exists to find early: the caller alerts.
    """
    if connection.settings.mode != "delegated":
        return None
    resource: Resource = "smtp" if connection.settings.transport == "smtp-xoauth2" else "graph"
    try:
        await connection.acquire_token(resource, force_refresh=True)
    except NeedsSignIn as exc:
        log.warning("keep-alive: connection %s needs sign-in (%s)", connection.name, exc.entry.id)
        return exc
    except AuthError as exc:
        log.warning("keep-alive: connection %s could not refresh: %s", connection.name, exc)
        return exc
    log.info("keep-alive: connection %s refreshed its sign-in", connection.name)
    return None
