"""Setting up a connection: ``init`` writes the configuration, ``entra-script`` the Azure
CLI script of its app registration; both show the Entra steps."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ..config import ConnectionSettings, config_path, settings_from_dict, write_settings
from ..errors import Relay365Error
from ._common import ConfigOption, app, err, fail, out, set_admin_password, settings


@app.command()
def init(
    config: ConfigOption = None,
    name: Annotated[str | None, typer.Option(help="connection name")] = None,
    tenant: Annotated[str | None, typer.Option(help="tenant id or domain")] = None,
    client_id: Annotated[str | None, typer.Option(help="Application (client) ID")] = None,
    client_secret: Annotated[str | None, typer.Option(help="client secret Value (prompted, hidden)")] = None,
    mode: Annotated[str, typer.Option(help="delegated | app-only")] = "delegated",
    account: Annotated[str | None, typer.Option(help="account that signs in (delegated)")] = None,
    sender: Annotated[list[str] | None, typer.Option(help="an address to send as (repeat)")] = None,
    default_sender: Annotated[str | None, typer.Option(help="sender when a message names none")] = None,
    sender_name: Annotated[str | None, typer.Option(help="display name of the default sender")] = None,
    secret_expires: Annotated[str | None, typer.Option(help="secret expiry date, YYYY-MM-DD")] = None,
    transport: Annotated[str, typer.Option(help="graph | smtp-xoauth2")] = "graph",
    device: Annotated[bool, typer.Option(help="plan for device-code sign-in (headless server)")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="no questions: values from flags")] = False,
    force: Annotated[bool, typer.Option(help="replace an existing connection of the same name")] = False,
) -> None:
    """Write the configuration for a connection, then print the Entra steps it needs."""

    def ask(value: str | None, prompt: str, *, secret: bool = False,
            default: str | None = None) -> str | None:
        if value is not None or yes:
            return value if value is not None else default
        answer: str = typer.prompt(prompt, default=default or "", hide_input=secret, show_default=not secret)
        return answer or None

    name = ask(name, "Connection name", default="default")
    tenant = ask(tenant, "Tenant (directory id, or domain such as contoso.onmicrosoft.com)")
    client_id = ask(client_id, "Application (client) ID")
    account = ask(account, "Account that signs in (licensed user)") if mode == "delegated" else None
    senders = list(sender or [])
    if not senders and not yes:
        typed = typer.prompt("Addresses to send from, comma-separated (own mailbox, shared mailboxes)",
                             default=account or "")
        senders = [s.strip() for s in typed.split(",") if s.strip()]
    client_secret = ask(client_secret, "Client secret Value (input hidden; empty to set later)", secret=True)
    secret_expires = ask(secret_expires, "Secret expiry date (YYYY-MM-DD, from Certificates & secrets)")
    path = config_path(config)
    existing: dict[str, Any] = {}
    if path.exists():
        import tomllib

        existing = tomllib.loads(path.read_text(encoding="utf-8"))
    connections = [c for c in existing.get("connections", []) if c.get("name") != name]
    if len(connections) != len(existing.get("connections", [])) and not force:
        err.print(f"[red]error:[/] {path} already has a connection named {name!r} "
                  "(use --force to replace it)")
        raise typer.Exit(1)
    entry: dict[str, Any] = {"name": name, "tenant": tenant, "client_id": client_id, "mode": mode,
                             "senders": senders, "transport": transport}
    for key, value in (("account", account), ("default_sender", default_sender),
                       ("sender_name", sender_name), ("client_secret", client_secret),
                       ("secret_expires", secret_expires)):
        if value:
            entry[key] = value
    data = {**existing, "connections": [*connections, entry]}
    try:
        new = settings_from_dict(data, source=str(path), env={})
    except Relay365Error as exc:
        fail(exc)
    write_settings(new, path)
    out.print(f"Wrote {path} (mode 0600).")
    if not yes and not new.admin.password_hash:
        password = typer.prompt("Password for the web admin page (empty: set it later with "
                                "`relay365 admin set-password`)", default="", hide_input=True,
                                show_default=False, confirmation_prompt=True)
        if password:
            set_admin_password(path, password)
            out.print("Admin password set.")
    conn = new.connection(name)
    print_entra_steps(conn, device=device)
    out.print(f"\nThen: [bold]relay365 login {conn.name}[/]" + (" --device" if device else "")
              + f" and [bold]relay365 test --connection {conn.name} --to YOU@EXAMPLE[/].")


def print_entra_steps(conn: ConnectionSettings, *, device: bool = False) -> None:
    from ..setup import entra_plan

    plan = entra_plan(conn, device_code=device)
    out.print(f"\n[bold]In Microsoft Entra, for connection {conn.name!r}:[/]")
    for i, step in enumerate(plan.steps, 1):
        out.print(f"{i}. [bold]{step.title}[/] — {step.where}\n   {step.detail}")
    out.print("Or let the Azure CLI do it: [bold]relay365 entra-script " + conn.name + "[/]")


@app.command("entra-script")
def entra_script(
    connection: Annotated[str | None, typer.Argument(help="connection name")] = None,
    config: ConfigOption = None,
    device: Annotated[bool, typer.Option(help="also allow public client flows (device code)")] = False,
) -> None:
    """Print an Azure CLI script that creates the app registration for a connection."""
    from ..setup import azure_cli_script

    conn = settings(config).connection(connection) if connection else settings(config).connection()
    sys.stdout.write(azure_cli_script(conn, device_code=device))
