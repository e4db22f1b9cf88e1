"""The Entra registration a connection needs, derived from its settings.

Each seed pitfall becomes a step that cannot be missed: the account type (single
tenant is fine: relay365 uses the tenant's own authority), the exact redirect URI,
every permission with the reason it is needed, admin consent, and the secret's expiry.
"""

from __future__ import annotations

import datetime as dt
import shlex
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ..config import ConnectionSettings


@dataclass(frozen=True)
class EntraStep:
    title: str
    where: str  # the portal page
    detail: str


@dataclass(frozen=True)
class EntraPlan:
    delegated: tuple[str, ...]
    application: tuple[str, ...]
    redirect_uri: str | None
    public_client: bool
    steps: tuple[EntraStep, ...]


@cache
def _permissions() -> dict[str, Any]:
    return tomllib.loads((resources.files("relay365.setup") / "permissions.toml").read_text("utf-8"))


def _is_shared(conn: ConnectionSettings) -> bool:
    """A sender other than the signing-in account is a shared mailbox (or another user)."""
    if conn.account is None:
        return len(conn.senders) > 1
    return any(s != conn.account for s in conn.senders)


def needed_permissions(conn: ConnectionSettings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(delegated, application) Graph permissions for this connection."""
    if conn.mode == "app-only":
        app = ["Mail.Send"] + (["Mail.ReadWrite"] if conn.large_messages else [])
        return (), tuple(app)
    if conn.transport == "smtp-xoauth2":
        return ("SMTP.Send", "offline_access"), ()
    delegated = ["Mail.Send"]
    if _is_shared(conn):
        delegated.append("Mail.Send.Shared")
    if conn.large_messages:
        delegated.append("Mail.ReadWrite")
    delegated.append("offline_access")
    return tuple(delegated), ()


def entra_plan(conn: ConnectionSettings, *, device_code: bool = False,
               today: dt.date | None = None) -> EntraPlan:
    delegated, application = needed_permissions(conn)
    perms = _permissions()
    registrations = "Microsoft Entra admin centre → Identity → Applications → App registrations"
    steps = [EntraStep(
        "Register the app",
        f"{registrations} → New registration",
        "Name: anything (e.g. relay365). Supported account types: \"Accounts in this organizational "
        "directory only\" is fine — relay365 signs in through your tenant "
        f"({conn.tenant}), so the AADSTS50194 multi-tenant error cannot happen.",
    )]
    redirect = None
    if conn.mode == "delegated":
        redirect = conn.redirect_uri
        loopback = redirect.rstrip("/") in ("http://localhost", "http://127.0.0.1")
        steps.append(EntraStep(
            "Add the redirect URI (App Callback URL)",
            # Web, not "Mobile and desktop": a secret sent with a public-client redirect URI
            # is refused (AADSTS700025).
            f"{registrations} → your app → Authentication → Add a platform → Web",
            f"Redirect URI: {redirect}" + (" (relay365 listens on a free local port; Entra accepts "
                                           "any port for http://localhost)" if loopback else ""),
        ))
        if device_code:
            steps.append(EntraStep(
                "Allow public client flows",
                f"{registrations} → your app → Authentication → Advanced settings",
                "Set \"Allow public client flows\" to Yes (needed for `relay365 login --device`).",
            ))
    for name in delegated:
        steps.append(EntraStep(
            f"Add delegated permission {name}",
            f"{registrations} → your app → API permissions → Add a permission → Microsoft Graph → "
            "Delegated permissions",
            f"{name}: {perms['delegated'][name]['why']}.",
        ))
    for name in application:
        steps.append(EntraStep(
            f"Add application permission {name}",
            f"{registrations} → your app → API permissions → Add a permission → Microsoft Graph → "
            "Application permissions",
            f"{name}: {perms['application'][name]['why']}.",
        ))
    steps.append(EntraStep(
        "Grant admin consent",
        f"{registrations} → your app → API permissions → Grant admin consent for your organization",
        "Every permission must show a green \"Granted\" status. Signing in as a Global Administrator "
        "and ticking \"Consent on behalf of your organization\" does the same.",
    ))
    if conn.mode == "delegated" and _is_shared(conn):
        shared = [s for s in conn.senders if s != conn.account]
        steps.append(EntraStep(
            "Give the account Send As on the shared mailbox(es)",
            "Microsoft 365 admin centre → Teams & groups → Shared mailboxes → the mailbox → "
            "Send As permissions",
            f"Add {conn.account or 'the account relay365 signs in with'} to: {', '.join(shared)} "
            "(changes can take up to an hour).",
        ))
    expiry = (today or dt.date.today()) + dt.timedelta(days=730)
    steps.append(EntraStep(
        "Create a client secret" if conn.certificate_file is None else "Upload the certificate",
        f"{registrations} → your app → Certificates & secrets",
        "New client secret, expiry 24 months at most (Microsoft recommends less than 12); copy its "
        f"Value (not the Secret ID). Note the expiry date (e.g. {expiry.isoformat()}) as "
        "secret_expires: relay365 warns 60 days before." if conn.certificate_file is None else
        f"Upload {conn.certificate_file} under Certificates.",
    ))
    return EntraPlan(delegated=delegated, application=application, redirect_uri=redirect,
                     public_client=device_code, steps=tuple(steps))


def azure_cli_script(conn: ConnectionSettings, *, display_name: str = "relay365",
                     device_code: bool = False) -> str:
    """A bash script with the Azure CLI doing every step of ``entra_plan``."""
    plan = entra_plan(conn, device_code=device_code)
    perms = _permissions()
    graph = perms["graph_app_id"]
    access = [f"{perms['delegated'][p]['id']}=Scope" for p in plan.delegated]
    access += [f"{perms['application'][p]['id']}=Role" for p in plan.application]
    q = shlex.quote
    lines = [
        "#!/usr/bin/env bash",
        f"# Creates the Entra app registration for relay365 connection {conn.name!r}.",
        "# Run it signed in as a Global Administrator: az login --tenant " + q(conn.tenant),
        "set -euo pipefail",
        f"APP_ID=$(az ad app create --display-name {q(display_name)} "
        "--sign-in-audience AzureADMyOrg --query appId -o tsv)",
    ]
    if plan.redirect_uri:
        lines.append(f"az ad app update --id \"$APP_ID\" --web-redirect-uris {q(plan.redirect_uri)}")
    if device_code:
        lines.append("az ad app update --id \"$APP_ID\" --is-fallback-public-client true")
    lines += [
        f"az ad app permission add --id \"$APP_ID\" --api {graph} --api-permissions {' '.join(access)}",
        "az ad sp create --id \"$APP_ID\" >/dev/null",
        "az ad app permission admin-consent --id \"$APP_ID\"",
        "SECRET=$(az ad app credential reset --id \"$APP_ID\" --display-name relay365 --years 2 "
        "--query password -o tsv)",
        "END=$(date -u -d '+2 years' +%F)",
        "echo \"client_id = $APP_ID\"",
        "echo \"client_secret = $SECRET   (shown once: store it now)\"",
        "echo \"secret_expires = $END\"",
    ]
    if conn.mode == "delegated" and _is_shared(conn):
        lines.append("# Then grant Send As on the shared mailbox(es) in Exchange Online PowerShell:")
        for s in conn.senders:
            if s != conn.account:
                lines.append(f"#   Add-RecipientPermission -Identity {s} -Trustee "
                             f"{conn.account or 'ACCOUNT'} -AccessRights SendAs")
    return "\n".join(lines) + "\n"
