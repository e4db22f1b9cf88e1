"""Scopes and consent: what a client asked for, and what the tenant has granted.

Scope strings arrive as Microsoft's clients send them (``https://graph.microsoft.com/
Mail.Send``, bare ``Mail.Send``, ``.default``, and the OpenID scopes).  This module
turns them into (resource, permission names) and answers the consent questions the
sign-in page and the token endpoint ask.  Permission metadata lives in
``data/permissions.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ._knowledge import (
    Resource,
    application_permission,
    delegated_permission,
    oidc_scopes,
    resource_for_uri,
    resources_by_name,
)
from ._scenario import App, User
from ._state import SimState


class ScopeError(Exception):
    """A scope string is not acceptable; ``code`` is the AADSTS number to answer."""

    def __init__(self, code: int, scope: str) -> None:
        super().__init__(scope)
        self.code = code
        self.scope = scope


@dataclass(frozen=True)
class Requested:
    """Parsed scopes: the permissions per resource, plus the OpenID scopes."""

    permissions: dict[str, tuple[str, ...]]  # resource name -> permission names ('.default' kept)
    oidc: frozenset[str]

    @property
    def resources(self) -> list[Resource]:
        return [resources_by_name()[name] for name in self.permissions]

    def single_resource(self) -> Resource | None:
        """The one resource a token request may name (reference §2.2)."""
        if len(self.permissions) > 1:
            raise ScopeError(700022, " ".join(self.all_scopes()))
        return self.resources[0] if self.permissions else None

    def all_scopes(self) -> list[str]:
        out: list[str] = []
        for name, perms in self.permissions.items():
            r = resources_by_name()[name]
            out.extend(f"{r.audience}/{p}" for p in perms)
        return out + sorted(self.oidc)


def parse_scopes(scope: str) -> Requested:
    perms: dict[str, list[str]] = {}
    oidc: set[str] = set()
    for item in scope.split():
        if item.lower() in oidc_scopes():
            oidc.add(item.lower())
            continue
        if "/" in item:
            uri, _, name = item.rpartition("/")
            resource = resource_for_uri(uri)
            if resource is None:
                raise ScopeError(70011, item)
        else:
            resource, name = resources_by_name()["graph"], item
        if name.lower() == ".default":
            canonical = ".default"
        else:
            meta = delegated_permission(name) or application_permission(name)
            if meta is None or meta["resource"] != resource.name:
                raise ScopeError(70011, item)
            canonical = meta["name"]
        perms.setdefault(resource.name, [])
        if canonical not in perms[resource.name]:
            perms[resource.name].append(canonical)
    return Requested({k: tuple(v) for k, v in perms.items()}, frozenset(oidc))


def _of_resource(names: tuple[str, ...] | set[str], resource: str, *, delegated: bool) -> list[str]:
    out = []
    for n in names:
        meta = delegated_permission(n) if delegated else application_permission(n)
        if meta is not None and meta["resource"] == resource:
            out.append(meta["name"])
    return out


def granted_delegated(state: SimState, app: App, user: User) -> set[str]:
    """Delegated permissions this user may use with this app (any resource)."""
    granted: set[str] = set()
    if app.admin_consent:
        granted |= set(app.delegated_permissions)
    if user.upn.lower() in (u.lower() for u in app.consented_users):
        granted |= set(app.delegated_permissions)
    granted |= state.user_consents.get((app.client_id.lower(), user.id), set())
    return granted


def missing_consent(state: SimState, app: App, user: User, requested: Requested) -> list[str]:
    """Permissions the request names that this user has not been granted yet."""
    granted = {g.lower() for g in granted_delegated(state, app, user)}
    missing = []
    for name, perms in requested.permissions.items():
        for p in perms:
            if p == ".default":
                continue
            if p.lower() not in granted:
                missing.append(p)
        del name
    if "offline_access" in requested.oidc and "offline_access" not in granted and missing:
        missing.append("offline_access")
    return missing


def needs_admin(state: SimState, user: User, missing: list[str]) -> bool:
    """True when only an admin can grant ``missing`` (the "Need admin approval" page)."""
    if user.admin or not missing:
        return False
    if not state.scenario.tenant.user_consent:
        return True
    return any((delegated_permission(p) or {}).get("admin", False) for p in missing)


def record_consent(state: SimState, app: App, user: User, permissions: list[str], *,
                   for_organization: bool) -> None:
    """The person clicked Accept: remember the grant for the user or the whole tenant."""
    if for_organization:
        merged = tuple(dict.fromkeys([*app.delegated_permissions, *permissions]))
        state.set_scenario(state.scenario.replace_app(
            replace(app, delegated_permissions=merged, admin_consent=True)))
        return
    key = (app.client_id.lower(), user.id)
    state.user_consents.setdefault(key, set()).update(permissions)


def token_permissions(state: SimState, app: App, user: User, resource: Resource,
                      requested: Requested) -> list[str] | None:
    """The ``scp`` of a delegated token for ``resource``, or None when consent is missing.

    Entra puts every consented permission of the resource in ``scp``, not only the
    requested ones, so a client sees at once what it may do.
    """
    granted = granted_delegated(state, app, user)
    asked = [p for p in requested.permissions.get(resource.name, ()) if p != ".default"]
    lowered = {g.lower() for g in granted}
    if any(p.lower() not in lowered for p in asked):
        return None
    return sorted(_of_resource(granted, resource.name, delegated=True))


def app_roles(app: App, resource: Resource) -> list[str]:
    """``roles`` of an app-only token: admin-consented application permissions."""
    if not app.admin_consent:
        return []
    return sorted(_of_resource(set(app.application_permissions), resource.name, delegated=False))
