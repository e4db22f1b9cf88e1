"""Minting the tokens the identity platform hands out.

Kept apart from the endpoint handlers so that every grant (authorization code,
refresh, device code, client credentials, password) builds its tokens the same way.
"""

from __future__ import annotations

import random
from typing import Any

from ._knowledge import Resource
from ._scenario import App, User
from ._state import SimState
from ._tokens import b64url_json

# appidacr: how the client proved itself (reference §7.4).
PUBLIC_CLIENT, CLIENT_SECRET, CLIENT_CERTIFICATE = 0, 1, 2


def access_token_lifetime(state: SimState) -> int:
    low, high = state.scenario.limits.access_token_lifetime
    return random.randint(min(low, high), max(low, high))


def issue_access_token(
    state: SimState, *, app: App, user: User | None, permissions: list[str],
    resource: Resource, appidacr: int, lifetime: int | None = None,
) -> tuple[str, int]:
    """A v1.0-format access token for ``resource``; returns (token, expires_in)."""
    now = int(state.clock.now())
    expires_in = lifetime if lifetime is not None else access_token_lifetime(state)
    tenant = state.scenario.tenant
    claims: dict[str, Any] = {
        "aud": resource.audience,
        "iss": f"https://sts.windows.net/{tenant.id}/",
        "iat": now,
        "nbf": now,
        "exp": now + expires_in,
        "appid": app.client_id,
        "app_displayname": app.name,
        "appidacr": str(appidacr),
        "tid": tenant.id,
        "ver": "1.0",
        "uti": state.tokens.new_jti(),
    }
    if user is None:
        claims.update({
            "idtyp": "app",
            "oid": app.object_id,
            "sub": app.object_id,
            "roles": permissions,
        })
    else:
        claims.update({
            "idtyp": "user",
            "oid": user.id,
            "sub": user.id,
            "upn": user.upn,
            "unique_name": user.upn,
            "name": user.name,
            "scp": " ".join(permissions),
        })
        if user.admin:
            claims["wids"] = ["62e90394-69f5-4237-9190-012177145e10"]  # Global Administrator
    return state.tokens.sign(claims), expires_in


def issue_id_token(state: SimState, *, app: App, user: User, nonce: str | None,
                   issuer_base: str) -> str:
    now = int(state.clock.now())
    tenant = state.scenario.tenant
    claims: dict[str, Any] = {
        "aud": app.client_id,
        "iss": f"{issuer_base}/{tenant.id}/v2.0",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "name": user.name,
        "oid": user.id,
        "preferred_username": user.upn,
        "sub": user.id,
        "tid": tenant.id,
        "ver": "2.0",
    }
    if nonce is not None:
        claims["nonce"] = nonce
    return state.tokens.sign(claims)


def client_info(state: SimState, user: User) -> str:
    """base64url ``{"uid": oid, "utid": tid}``: MSAL's home account id comes from it."""
    return b64url_json({"uid": user.id, "utid": state.scenario.tenant.id})
