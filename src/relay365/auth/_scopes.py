"""What a connection asks Microsoft for, and what a token shows it was given.

Delegated Graph: ``Mail.Send``; ``Mail.Send.Shared`` when the connection sends as an
address other than the signed-in account (a shared mailbox, the seed's info@);
``Mail.ReadWrite`` for large messages (draft + upload session).  Delegated SMTP:
``SMTP.Send``.  App-only: ``{resource}/.default``, which names every application
permission an admin granted.  MSAL adds ``offline_access openid profile`` itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from ..config import ConnectionSettings
from ._types import Resource

GRAPH = "https://graph.microsoft.com"
OUTLOOK = "https://outlook.office.com"
OUTLOOK_APP = "https://outlook.office365.com"
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def transport_resource(settings: ConnectionSettings) -> Resource:
    """The resource the connection's transport sends through."""
    return "smtp" if settings.transport == "smtp-xoauth2" else "graph"


def sends_as_others(settings: ConnectionSettings) -> bool:
    """True when a sender may not be the signed-in account's own mailbox."""
    return len(settings.senders) > 1 or any(s != settings.account for s in settings.senders)


def needed_scopes(settings: ConnectionSettings, resource: Resource) -> tuple[str, ...]:
    """Short names of the delegated permissions (or app roles) ``resource`` needs."""
    if settings.mode == "app-only":
        if resource == "smtp":
            return ("SMTP.SendAsApp",)
        return ("Mail.Send", "Mail.ReadWrite") if settings.large_messages else ("Mail.Send",)
    if resource == "smtp":
        return ("SMTP.Send",)
    scopes = ["Mail.Send"]
    if sends_as_others(settings):
        scopes.append("Mail.Send.Shared")
    if settings.large_messages:
        scopes.append("Mail.ReadWrite")
    return tuple(scopes)


def request_scopes(settings: ConnectionSettings, resource: Resource) -> list[str]:
    """The scopes MSAL is asked for (resource-qualified)."""
    if settings.mode == "app-only":
        return [f"{OUTLOOK_APP if resource == 'smtp' else GRAPH}/.default"]
    prefix = OUTLOOK if resource == "smtp" else GRAPH
    return [f"{prefix}/{scope}" for scope in needed_scopes(settings, resource)]


def token_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT access token, decoded without checking its signature.

    Microsoft asks clients to treat Graph tokens as opaque and not to validate them; the
    claims are read for diagnostics only (who, which tenant, which permissions).  An
    opaque (non-JWT) token gives ``{}``.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def granted(claims: dict[str, Any]) -> tuple[str, ...]:
    """What a token grants: its ``scp`` (delegated) or its ``roles`` (app-only)."""
    scp = claims.get("scp")
    if isinstance(scp, str) and scp.strip():
        return tuple(scp.split())
    roles = claims.get("roles")
    if isinstance(roles, list):
        return tuple(str(r) for r in roles)
    return ()


def token_account(claims: dict[str, Any]) -> str | None:
    """The signed-in user of a delegated token (``upn``, ``preferred_username``...)."""
    for name in ("upn", "preferred_username", "unique_name", "email"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value.lower()
    return None


@dataclass(frozen=True)
class SignInResult:
    """Who signed in, in which tenant, with which permissions, and what looks wrong."""

    account: str | None  # UPN; None for app-only
    tenant_id: str
    scopes: tuple[str, ...]  # delegated scopes (scp) or application roles
    warnings: tuple[str, ...] = ()


def sign_in_result(settings: ConnectionSettings, claims: dict[str, Any], resource: Resource,
                   account: str | None) -> SignInResult:
    """The result of a sign-in (or app-only check), with a warning for each likely mistake."""
    scopes = granted(claims)
    tenant_id = str(claims.get("tid") or "")
    warnings: list[str] = []
    name = settings.name
    if account and settings.account and account != settings.account:
        warnings.append(
            f"signed in as {account}, but connection {name!r} expects {settings.account}: the "
            "browser was probably signed in to another account (another browser profile); sign "
            f"in again as {settings.account}, for example in a private window")
    if _GUID.match(settings.tenant) and tenant_id and tenant_id.lower() != settings.tenant.lower():
        warnings.append(f"the token comes from tenant {tenant_id}, but connection {name!r} is "
                        f"configured for tenant {settings.tenant}")
    needed = list(needed_scopes(settings, resource))
    if settings.mode == "delegated" and "Mail.Send.Shared" in needed and account is not None \
            and not any(s != account for s in settings.senders):
        needed.remove("Mail.Send.Shared")  # the account sends as itself only
    kind = "application permission" if settings.mode == "app-only" else "permission"
    for scope in needed:
        if scope not in scopes:
            why = {
                "Mail.Send.Shared": " (needed to send as the shared mailbox "
                                    f"{', '.join(s for s in settings.senders if s != account)})",
                "Mail.ReadWrite": " (needed for messages over 4 MB; or set large_messages = false)",
            }.get(scope, "")
            warnings.append(f"the token lacks the {kind} {scope}{why}: add it to the app "
                            "registration and grant admin consent, then sign in again")
    return SignInResult(account=account, tenant_id=tenant_id, scopes=scopes,
                        warnings=tuple(warnings))
