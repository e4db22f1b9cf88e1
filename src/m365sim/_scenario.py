"""Scenario files: the tenant m365sim pretends to be.

A scenario is a TOML file (format in ``src/m365sim/README.md``) read into frozen
dataclasses.  Shipped scenarios live in ``m365sim/scenarios/`` and are found by name.
The model is immutable: changing the scenario at run time means building a new one
(``Scenario.from_dict(...)``) and handing it to the running emulator, so a request in
flight always sees one consistent tenant.
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

SIGN_IN_AUDIENCES = ("AzureADMyOrg", "AzureADMultipleOrgs", "AzureADandPersonalMicrosoftAccount")
BASIC_AUTH_REJECTIONS = (
    "security-defaults",
    "tenant-disabled",
    "mailbox-disabled",
    "basic-disabled",
    "retired",
    "conditional-access",
)
_NAMESPACE = uuid.UUID("4d365a1e-0000-4000-8000-6d3635736d00")


class ScenarioError(ValueError):
    """A scenario file or dict is malformed; the message names the key and the fix."""


def stable_id(kind: str, key: str) -> str:
    """A GUID derived from a name, so object ids stay the same across runs."""
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{key.lower()}"))


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    domains: tuple[str, ...]
    security_defaults: bool = False
    # Set-TransportConfig -SmtpClientAuthenticationDisabled is the inverse of this.
    smtp_client_authentication: bool = True
    # How AUTH LOGIN/PLAIN (basic auth) is refused when it is refused.
    basic_auth_rejection: str = "basic-disabled"
    # Users may consent to permissions that do not need an admin.
    user_consent: bool = True

    @property
    def default_domain(self) -> str:
        return self.domains[0]


@dataclass(frozen=True)
class User:
    upn: str
    name: str
    id: str
    mailbox: bool = True  # an Exchange Online licence and mailbox
    admin: bool = False  # Global Administrator
    mfa: bool = False
    password: str | None = None
    # Set-CASMailbox -SmtpClientAuthenticationDisabled; None follows the tenant.
    smtp_client_authentication: bool | None = None
    max_send_size: int | None = None  # bytes; None = limits.max_send_size
    # An admin revokes this user's sessions right after every sign-in (or the password
    # is reset): refresh tokens fail with AADSTS50173, access tokens live on until expiry.
    sessions_revoked: bool = False


@dataclass(frozen=True)
class SharedMailbox:
    address: str
    name: str
    id: str
    send_as: tuple[str, ...] = ()
    send_on_behalf: tuple[str, ...] = ()
    full_access: tuple[str, ...] = ()


@dataclass(frozen=True)
class Secret:
    value: str
    key_id: str
    display_name: str
    start: datetime
    end: datetime

    def __repr__(self) -> str:  # never print the secret value
        return f"Secret(key_id={self.key_id!r}, display_name={self.display_name!r}, end={self.end})"


@dataclass(frozen=True)
class Certificate:
    pem: str
    display_name: str = "certificate"


@dataclass(frozen=True)
class App:
    client_id: str
    name: str
    sign_in_audience: str = "AzureADMyOrg"
    redirect_uris: tuple[str, ...] = ()
    public_client: bool = False
    delegated_permissions: tuple[str, ...] = ()
    application_permissions: tuple[str, ...] = ()
    admin_consent: bool = False
    consented_users: tuple[str, ...] = ()
    secrets: tuple[Secret, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    # ApplicationAccessPolicy / RBAC scope: when set, app-only tokens may use only
    # these mailboxes; others get 403 "Access to OData is disabled.".
    mailbox_scope: tuple[str, ...] | None = None
    object_id: str = ""

    @property
    def multi_tenant(self) -> bool:
        return self.sign_in_audience != "AzureADMyOrg"


@dataclass(frozen=True)
class Limits:
    time_scale: float = 1.0
    messages_per_minute: int = 30
    recipients_per_day: int = 10_000
    recipients_per_message: int = 500
    concurrent_requests: int = 4
    smtp_concurrent_connections: int = 3
    max_request_bytes: int = 4 * 1024 * 1024
    max_send_size: int = 35 * 1024 * 1024
    upload_session_max: int = 150 * 1024 * 1024
    oversize_status: int = 413  # Microsoft has answered both 400 and 413 (reference §4.3)
    fractional_retry_after: bool = False
    access_token_lifetime: tuple[int, int] = (3600, 5400)
    refresh_token_inactivity: int = 90 * 86400
    auth_code_lifetime: int = 600
    device_code_lifetime: int = 900
    device_code_interval: int = 5
    messages_kept_per_mailbox: int = 10_000


@dataclass(frozen=True)
class Fault:
    """Make the next ``count`` requests whose path starts with ``path`` misbehave."""

    path: str
    kind: str = "status"  # status | hang | reset | latency
    status: int = 503
    count: int = 1  # 0 = every request until cleared
    retry_after: float | None = None
    latency: float = 0.0
    method: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    tenant: Tenant
    users: tuple[User, ...] = ()
    shared_mailboxes: tuple[SharedMailbox, ...] = ()
    apps: tuple[App, ...] = ()
    limits: Limits = field(default_factory=Limits)
    faults: tuple[Fault, ...] = ()
    browser_user: str | None = None
    clock_start: datetime | None = None

    # ---- lookups -------------------------------------------------------------
    def user(self, upn_or_id: str) -> User | None:
        key = upn_or_id.lower()
        for u in self.users:
            if u.upn.lower() == key or u.id == key:
                return u
        return None

    def shared_mailbox(self, address_or_id: str) -> SharedMailbox | None:
        key = address_or_id.lower()
        for m in self.shared_mailboxes:
            if m.address.lower() == key or m.id == key:
                return m
        return None

    def app(self, client_id: str) -> App | None:
        for a in self.apps:
            if a.client_id.lower() == client_id.lower():
                return a
        return None

    def is_tenant(self, segment: str) -> bool:
        """True when ``segment`` names this tenant (its id or a verified domain)."""
        s = segment.lower()
        return s == self.tenant.id.lower() or s in (d.lower() for d in self.tenant.domains)

    def is_local_address(self, address: str) -> bool:
        domain = address.rpartition("@")[2].lower()
        return domain in (d.lower() for d in self.tenant.domains)

    def replace_app(self, app: App) -> Scenario:
        apps = tuple(app if a.client_id == app.client_id else a for a in self.apps)
        return replace(self, apps=apps)

    # ---- (de)serialisation ----------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<scenario>") -> Scenario:
        return _Parser(source).scenario(data)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that ``from_dict`` reads back (secrets included)."""
        return _to_plain(self)  # type: ignore[no-any-return]


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, tuple | list):
        return [_to_plain(x) for x in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    return obj


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str, example: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {key}: {problem} (for example: {example})")

    def table(self, data: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(data, Mapping):
            raise self.fail(key, "must be a table", f"[{key}]")
        return data

    def text(self, data: Mapping[str, Any], key: str, where: str, example: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{where}.{key}", "is missing or not a string", example)
        return value

    def strings(self, data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{where}.{key}", "must be a list of strings", f'{key} = ["a", "b"]')
        return tuple(value)

    def date(self, value: Any, key: str) -> datetime:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                value = None
        if not isinstance(value, datetime):
            raise self.fail(key, "must be a date-time", f"{key.rpartition('.')[2]} = 2027-01-31T00:00:00Z")
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def known_keys(self, data: Mapping[str, Any], allowed: set[str], where: str) -> None:
        unknown = set(data) - allowed
        if unknown:
            raise self.fail(
                where, f"unknown key(s) {sorted(unknown)}", f"one of {sorted(allowed)}"
            )

    def scenario(self, data: Mapping[str, Any]) -> Scenario:
        top = {"name", "description", "tenant", "users", "shared_mailboxes", "apps", "limits",
               "faults", "browser_user", "clock"}
        self.known_keys(data, top, "scenario")
        tenant = self.tenant(self.table(data.get("tenant"), "tenant"))
        users = tuple(self.user(u, i) for i, u in enumerate(data.get("users", [])))
        shared = tuple(
            self.shared(m, i) for i, m in enumerate(data.get("shared_mailboxes", []))
        )
        apps = tuple(self.app(a, i) for i, a in enumerate(data.get("apps", [])))
        limits = self.limits(self.table(data.get("limits", {}), "limits"))
        faults = tuple(self.fault(f, i) for i, f in enumerate(data.get("faults", [])))
        clock = self.table(data.get("clock", {}), "clock")
        self.known_keys(clock, {"start"}, "clock")
        start = self.date(clock["start"], "clock.start") if "start" in clock else None
        browser_user = data.get("browser_user")
        scenario = Scenario(
            name=str(data.get("name", Path(self.source).stem)),
            description=str(data.get("description", "")),
            tenant=tenant,
            users=users,
            shared_mailboxes=shared,
            apps=apps,
            limits=limits,
            faults=faults,
            browser_user=browser_user,
            clock_start=start,
        )
        self.check_references(scenario)
        return scenario

    def tenant(self, t: Mapping[str, Any]) -> Tenant:
        allowed = {f.name for f in fields(Tenant)}
        self.known_keys(t, allowed, "tenant")
        domains = self.strings(t, "domains", "tenant")
        if not domains:
            raise self.fail("tenant.domains", "needs at least one domain", '["contoso.com"]')
        rejection = t.get("basic_auth_rejection", "basic-disabled")
        if rejection not in BASIC_AUTH_REJECTIONS:
            raise self.fail("tenant.basic_auth_rejection", f"unknown value {rejection!r}",
                            " | ".join(BASIC_AUTH_REJECTIONS))
        return Tenant(
            id=str(t.get("id") or stable_id("tenant", domains[0])),
            name=str(t.get("name", domains[0])),
            domains=domains,
            security_defaults=bool(t.get("security_defaults", False)),
            smtp_client_authentication=bool(t.get("smtp_client_authentication", True)),
            basic_auth_rejection=rejection,
            user_consent=bool(t.get("user_consent", True)),
        )

    def user(self, u: Any, i: int) -> User:
        where = f"users[{i}]"
        u = self.table(u, where)
        self.known_keys(u, {f.name for f in fields(User)}, where)
        upn = self.text(u, "upn", where, 'upn = "adele@contoso.com"')
        return User(
            upn=upn,
            name=str(u.get("name", upn.partition("@")[0].title())),
            id=str(u.get("id") or stable_id("user", upn)),
            mailbox=bool(u.get("mailbox", True)),
            admin=bool(u.get("admin", False)),
            mfa=bool(u.get("mfa", False)),
            password=u.get("password"),
            smtp_client_authentication=u.get("smtp_client_authentication"),
            max_send_size=u.get("max_send_size"),
            sessions_revoked=bool(u.get("sessions_revoked", False)),
        )

    def shared(self, m: Any, i: int) -> SharedMailbox:
        where = f"shared_mailboxes[{i}]"
        m = self.table(m, where)
        self.known_keys(m, {f.name for f in fields(SharedMailbox)}, where)
        address = self.text(m, "address", where, 'address = "info@contoso.com"')
        return SharedMailbox(
            address=address,
            name=str(m.get("name", address.partition("@")[0].title())),
            id=str(m.get("id") or stable_id("mailbox", address)),
            send_as=self.strings(m, "send_as", where),
            send_on_behalf=self.strings(m, "send_on_behalf", where),
            full_access=self.strings(m, "full_access", where),
        )

    def app(self, a: Any, i: int) -> App:
        where = f"apps[{i}]"
        a = self.table(a, where)
        self.known_keys(a, {f.name for f in fields(App)}, where)
        client_id = self.text(a, "client_id", where, 'client_id = "11111111-2222-3333-4444-555555555555"')
        audience = a.get("sign_in_audience", "AzureADMyOrg")
        if audience not in SIGN_IN_AUDIENCES:
            raise self.fail(f"{where}.sign_in_audience", f"unknown value {audience!r}",
                            " | ".join(SIGN_IN_AUDIENCES))
        secrets = []
        for j, s in enumerate(a.get("secrets", [])):
            sw = f"{where}.secrets[{j}]"
            s = self.table(s, sw)
            self.known_keys(s, {f.name for f in fields(Secret)}, sw)
            value = self.text(s, "value", sw, 'value = "abc~..."')
            secrets.append(Secret(
                value=value,
                key_id=str(s.get("key_id") or stable_id("secret", client_id + value)),
                display_name=str(s.get("display_name", "secret")),
                start=self.date(s.get("start", "2025-01-01T00:00:00Z"), f"{sw}.start"),
                end=self.date(s.get("end", "2099-01-01T00:00:00Z"), f"{sw}.end"),
            ))
        certs = []
        for j, c in enumerate(a.get("certificates", [])):
            cw = f"{where}.certificates[{j}]"
            c = self.table(c, cw)
            self.known_keys(c, {"pem", "display_name"}, cw)
            certs.append(Certificate(
                pem=self.text(c, "pem", cw, 'pem = """-----BEGIN CERTIFICATE-----..."""'),
                display_name=str(c.get("display_name", "certificate")),
            ))
        scope = a.get("mailbox_scope")
        return App(
            client_id=client_id,
            name=str(a.get("name", "app")),
            sign_in_audience=audience,
            redirect_uris=self.strings(a, "redirect_uris", where),
            public_client=bool(a.get("public_client", False)),
            delegated_permissions=self.strings(a, "delegated_permissions", where),
            application_permissions=self.strings(a, "application_permissions", where),
            admin_consent=bool(a.get("admin_consent", False)),
            consented_users=self.strings(a, "consented_users", where),
            secrets=tuple(secrets),
            certificates=tuple(certs),
            mailbox_scope=None if scope is None else self.strings(a, "mailbox_scope", where),
            object_id=str(a.get("object_id") or stable_id("application", client_id)),
        )

    def limits(self, lim: Mapping[str, Any]) -> Limits:
        defaults = Limits()
        self.known_keys(lim, {f.name for f in fields(Limits)}, "limits")
        values: dict[str, Any] = {}
        for f in fields(Limits):
            if f.name not in lim:
                continue
            value, default = lim[f.name], getattr(defaults, f.name)
            if isinstance(default, tuple):
                if not (isinstance(value, list) and len(value) == 2):
                    raise self.fail(f"limits.{f.name}", "must be [min, max]", f"{f.name} = [3600, 5400]")
                value = (int(value[0]), int(value[1]))
            elif isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, int | float):
                if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                    raise self.fail(f"limits.{f.name}", "must be a positive number",
                                    f"{f.name} = {default}")
                value = type(default)(value)
            values[f.name] = value
        return replace(defaults, **values)

    def fault(self, f: Any, i: int) -> Fault:
        where = f"faults[{i}]"
        f = self.table(f, where)
        self.known_keys(f, {x.name for x in fields(Fault)}, where)
        kind = f.get("kind", "status")
        if kind not in ("status", "hang", "reset", "latency"):
            raise self.fail(f"{where}.kind", f"unknown kind {kind!r}", 'kind = "status"')
        return Fault(
            path=self.text(f, "path", where, 'path = "/v1.0/me/sendMail"'),
            kind=kind,
            status=int(f.get("status", 503)),
            count=int(f.get("count", 1)),
            retry_after=f.get("retry_after"),
            latency=float(f.get("latency", 0.0)),
            method=f.get("method"),
        )

    def check_references(self, s: Scenario) -> None:
        upns = {u.upn.lower() for u in s.users}
        for m in s.shared_mailboxes:
            for grant in ("send_as", "send_on_behalf", "full_access"):
                for who in getattr(m, grant):
                    if who.lower() not in upns:
                        raise self.fail(f"shared_mailboxes[{m.address}].{grant}",
                                        f"{who!r} is not a user of this scenario",
                                        f'{grant} = ["{next(iter(upns), "adele@contoso.com")}"]')
        if s.browser_user and s.browser_user.lower() not in upns:
            raise self.fail("browser_user", f"{s.browser_user!r} is not a user of this scenario",
                            f'browser_user = "{next(iter(upns), "adele@contoso.com")}"')
        for addr in [u.upn for u in s.users] + [m.address for m in s.shared_mailboxes]:
            if not s.is_local_address(addr):
                raise self.fail("users/shared_mailboxes", f"{addr!r} is not in a tenant domain",
                                f"tenant.domains = {list(s.tenant.domains)!r}")


def shipped_scenarios() -> list[str]:
    """Names of the scenarios shipped with m365sim."""
    folder = resources.files("m365sim") / "scenarios"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a shipped scenario by name, or a scenario file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise ScenarioError(f"{path}: no such scenario file")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        resource = resources.files("m365sim") / "scenarios" / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ScenarioError(
                f"no shipped scenario named {name_or_path!r}; "
                f"choose one of {shipped_scenarios()} or give a path to a .toml file"
            )
        text, source = resource.read_text(encoding="utf-8"), f"{name_or_path}.toml"
    data = _read_toml(text, source)
    data.setdefault("name", Path(source).stem)
    return Scenario.from_dict(data, source=source)


def scenario_from_toml(text: str, source: str = "<scenario>") -> Scenario:
    """A scenario from TOML text (``extends`` names a shipped scenario)."""
    data = _read_toml(text, source)
    data.setdefault("name", "custom")
    return Scenario.from_dict(data, source=source)


def _read_toml(text: str, source: str, depth: int = 0) -> dict[str, Any]:
    """Parse a scenario file, resolving ``extends = "other"`` into one merged dict."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from exc
    parent_name = data.pop("extends", None)
    if parent_name is None:
        return data
    if depth > 8:
        raise ScenarioError(f"{source}: extends: chain too long (a loop?)")
    resource = resources.files("m365sim") / "scenarios" / f"{parent_name}.toml"
    parent_path = Path(source).parent / f"{parent_name}.toml"
    if parent_path.exists():
        parent_text = parent_path.read_text(encoding="utf-8")
    elif resource.is_file():
        parent_text = resource.read_text(encoding="utf-8")
    else:
        raise ScenarioError(f"{source}: extends: no scenario named {parent_name!r} "
                            f"(shipped: {shipped_scenarios()})")
    parent = _read_toml(parent_text, f"{parent_name}.toml", depth + 1)
    for key in ("name", "description"):
        parent.pop(key, None)
    return _merge(parent, data)


# Arrays of tables merge entry by entry on these keys; other arrays are replaced.
_MERGE_KEYS = {"users": "upn", "shared_mailboxes": "address", "apps": "client_id"}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif key in _MERGE_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            ident = _MERGE_KEYS[key]
            merged = {str(item.get(ident, "")).lower(): item for item in out[key]}
            for item in value:
                k = str(item.get(ident, "")).lower()
                if item.get("remove"):
                    merged.pop(k, None)
                    continue
                merged[k] = _merge(merged[k], item) if k in merged else item
            out[key] = list(merged.values())
        else:
            out[key] = value
    return out
