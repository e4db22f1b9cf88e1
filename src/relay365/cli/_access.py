"""Who may use the relay: SMTP users, HTTP API keys, and the admin page's password."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import config_path, settings_from_dict, write_settings
from ..errors import Relay365Error
from ._common import ConfigOption, app, err, fail, out, set_admin_password


def _add_client(config: Path | None, table: str, entry: dict[str, Any]) -> Path:
    """Append ``entry`` to ``relay.<table>`` in the configuration, validated, 0600."""
    import tomllib

    path = config_path(config)
    data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    relay = data.setdefault("relay", {})
    entries = relay.setdefault(table, [])
    if any(e.get("name") == entry["name"] for e in entries):
        err.print(f"[red]error:[/] {path} already has relay.{table} entry {entry['name']!r}")
        raise typer.Exit(1)
    entries.append(entry)
    try:
        write_settings(settings_from_dict(data, source=str(path), env={}), path)
    except Relay365Error as exc:
        fail(exc)
    return path


user_app = typer.Typer(help="SMTP clients that log in (printers, LAN apps).", no_args_is_help=True)
app.add_typer(user_app, name="user")
api_key_app = typer.Typer(help="Keys for the HTTP API.", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")


@user_app.command("add")
def user_add(
    name: str,
    sender: Annotated[list[str] | None, typer.Option(help="a sender this user may use (repeat)")] = None,
    config: ConfigOption = None,
) -> None:
    """Add an SMTP login (the password is asked for and stored as an argon2id hash)."""
    from ..ingress import hash_password

    password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    path = _add_client(config, "users", {"name": name, "password_hash": hash_password(password),
                                         "senders": list(sender or [])})
    out.print(f"Added SMTP user {name!r} to {path}; restart or SIGHUP `relay365 serve` to use it.")


@api_key_app.command("add")
def api_key_add(
    name: str,
    sender: Annotated[list[str] | None, typer.Option(help="a sender this key may use (repeat)")] = None,
    config: ConfigOption = None,
) -> None:
    """Create an HTTP API key: printed once, stored only as an argon2id hash."""
    from ..ingress import hash_password, new_api_key

    key = new_api_key()
    path = _add_client(config, "api_keys", {"name": name, "key_hash": hash_password(key),
                                            "senders": list(sender or [])})
    out.print(f"API key {name!r} (shown once, keep it now): {key}", markup=False, soft_wrap=True)
    out.print(f"Stored as a hash in {path}; send it as `Authorization: Bearer KEY`.")


admin_app = typer.Typer(help="The web admin page.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")


@admin_app.command("set-password")
def admin_set_password(
    config: ConfigOption = None,
    stdin: Annotated[bool, typer.Option("--stdin", help="read the password from standard input")] = False,
) -> None:
    """Set the password of the web admin page (stored as an argon2id hash)."""
    password = sys.stdin.readline().rstrip("\r\n") if stdin else \
        typer.prompt("Admin password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        err.print("[red]error:[/] the admin password must have at least 8 characters")
        raise typer.Exit(1)
    path = config_path(config)
    try:
        set_admin_password(path, password)
    except Relay365Error as exc:
        fail(exc)
    out.print(f"Admin password set in {path}. Restart or SIGHUP `relay365 serve`, then log in at its "
              "web address (default http://127.0.0.1:8025).")
