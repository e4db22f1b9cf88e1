"""What the rest of relay365 needs from auth: an access token, asked for by resource.

Transports depend on this protocol, not on MSAL: a test can hand them any token source.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal, Protocol

Resource = Literal["graph", "smtp"]


@dataclass(frozen=True)
class AccessToken:
    """A bearer token; its value never appears in ``repr`` (and so in no log line)."""

    value: str = field(repr=False)
    expires_at: dt.datetime
    account: str | None  # UPN that signed in; None for app-only tokens
    scopes: tuple[str, ...] = ()  # scp (delegated) or roles (app-only), as granted


class TokenSource(Protocol):
    """Something that hands out access tokens for one connection."""

    async def acquire_token(self, resource: Resource = "graph", *, force_refresh: bool = False,
                            stale: str | None = None) -> AccessToken:
        """A valid token for ``resource``.

        ``force_refresh`` asks for a new token (after a 401). ``stale`` is the token that
        was refused: when another caller already replaced it, its replacement is returned
        without a second refresh, so many concurrent 401s cost one token request.
        """
        ...
