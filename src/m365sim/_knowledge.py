"""What m365sim knows about Microsoft, read from the TOML files in ``m365sim/data``.

Error texts, SMTP replies and permission metadata are data, not code: when Microsoft's
wording changes, the data file changes and no handler does.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


def _load(name: str) -> dict[str, Any]:
    text = (resources.files("m365sim") / "data" / name).read_text(encoding="utf-8")
    return tomllib.loads(text)


@dataclass(frozen=True)
class IdentityError:
    code: int
    error: str
    status: int
    message: str
    suberror: str | None = None
    page: str | None = None


@dataclass(frozen=True)
class GraphError:
    status: int
    code: str
    message: str


@dataclass(frozen=True)
class Resource:
    name: str
    app_id: str
    uris: tuple[str, ...]
    audience: str


@cache
def identity_errors() -> dict[str, IdentityError]:
    out = {}
    for key, e in _load("identity_errors.toml").items():
        out[key] = IdentityError(
            code=int(key.partition("_")[0]),
            error=e["error"],
            status=e["status"],
            message=e["message"],
            suberror=e.get("suberror"),
            page=e.get("page"),
        )
    return out


def identity_error(key: int | str) -> IdentityError:
    return identity_errors()[str(key)]


@cache
def graph_errors() -> dict[str, GraphError]:
    return {
        k: GraphError(status=v["status"], code=v["code"], message=v["message"])
        for k, v in _load("graph_errors.toml").items()
    }


def graph_error(key: str) -> GraphError:
    return graph_errors()[key]


@cache
def smtp_replies() -> dict[str, str]:
    return {k: str(v) for k, v in _load("smtp_replies.toml").items()}


@cache
def _permissions() -> dict[str, Any]:
    return _load("permissions.toml")


@cache
def resources_by_name() -> dict[str, Resource]:
    return {
        name: Resource(name=name, app_id=r["app_id"], uris=tuple(r["uris"]), audience=r["audience"])
        for name, r in _permissions()["resources"].items()
    }


def resource_for_uri(uri: str) -> Resource | None:
    """The resource a scope prefix (``https://graph.microsoft.com``) or app id names."""
    u = uri.rstrip("/").lower()
    for r in resources_by_name().values():
        if u in (x.lower() for x in r.uris):
            return r
    return None


def oidc_scopes() -> frozenset[str]:
    return frozenset(_permissions()["oidc"]["scopes"])


def delegated_permission(name: str) -> dict[str, Any] | None:
    """Metadata of a delegated permission, matched case-insensitively as Entra does."""
    for key, value in _permissions()["delegated"].items():
        if key.lower() == name.lower():
            return {"name": key, **value}
    return None


def application_permission(name: str) -> dict[str, Any] | None:
    for key, value in _permissions()["application"].items():
        if key.lower() == name.lower():
            return {"name": key, **value}
    return None
