"""The ``relay365`` command: set up, sign in, send, and try it all on the emulator.

Every command is a thin shell over the async core; failures print their cause and fix
(from the catalogue) and exit non-zero, never a traceback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import (
    ConnectionSettings,
    Settings,
    config_path,
    load_settings,
    settings_from_dict,
    write_settings,
)
from .errors import Relay365Error

T = TypeVar("T")
app = typer.Typer(help="Send your applications' email through Microsoft 365 with OAuth 2.0.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="relay365.toml to use "
                                                   "(default: RELAY365_CONFIG or the user config dir)")]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run the async core; turn relay365 errors into their explanation and exit 1."""
    try:
        return asyncio.run(coro)
    except Relay365Error as exc:
        fail(exc)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def fail(exc: Relay365Error) -> NoReturn:
    err.print(f"[bold red]error:[/] {exc.message}" + (f" [{exc.code}]" if exc.code else ""))
    err.print(f"[bold]{exc.entry.id}[/]: {exc.entry.title}")
    err.print(f"[bold]Cause:[/] {exc.entry.cause}")
    err.print(f"[bold]Fix:[/] {exc.entry.fix}")
    raise typer.Exit(1)


def settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except Relay365Error as exc:
        fail(exc)


@app.command()
def version() -> None:
    """Print relay365's version."""
    out.print(__version__)


# ---- init & entra-script ---------------------------------------------------------------------
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
    from .setup import entra_plan

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
    from .setup import azure_cli_script

    conn = settings(config).connection(connection) if connection else settings(config).connection()
    sys.stdout.write(azure_cli_script(conn, device_code=device))


# ---- login -------------------------------------------------------------------------------------
@app.command()
def login(
    connection: Annotated[str | None, typer.Argument(help="connection name")] = None,
    config: ConfigOption = None,
    device: Annotated[bool, typer.Option(help="device code flow, for a server without a browser")] = False,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="print the URL only")] = False,
    paste: Annotated[bool, typer.Option(help="finish in any browser and paste the final URL back")] = False,
) -> None:
    """Sign in (delegated) or check that a token can be had (app-only)."""
    from ._client import Client

    async def main() -> None:
        async with Client(settings(config)) as client:
            conn = await client.connection(connection)
            result = await sign_in(conn, device=device, no_browser=no_browser, paste=paste)
            show_sign_in(result)

    run(main())


async def sign_in(conn: Any, *, device: bool, no_browser: bool, paste: bool) -> Any:
    from .auth import sign_in_with_browser

    if conn.settings.mode == "app-only":
        return await conn.verify_app_only()
    if device:
        return await conn.sign_in_with_device_code(lambda message: out.print(message))
    if paste:
        # The pasted address carries the code in its query: form_post would leave it empty.
        flow = await conn.start_sign_in(conn.settings.redirect_uri, response_mode="query")
        out.print("Open this URL in a browser, sign in, then paste the address you land on:")
        out.print(flow.auth_uri)
        pasted = typer.prompt("Final URL")
        return await conn.finish_sign_in_from_url(flow, pasted)
    return await sign_in_with_browser(
        conn, on_url=lambda url: out.print(f"Sign in here (opening your browser):\n{url}"),
        open_browser=not no_browser)


def show_sign_in(result: Any) -> None:
    out.print(f"[green]Signed in[/] as [bold]{result.account or 'the app itself (app-only)'}[/] "
              f"in tenant {result.tenant_id}")
    out.print("Granted: " + (", ".join(result.scopes) or "nothing"))
    for warning in result.warnings:
        out.print(f"[yellow]warning:[/] {warning}")


# ---- send & test ----------------------------------------------------------------------------------
@app.command()
def send(
    to: Annotated[list[str] | None, typer.Option("--to", help="recipient (repeat)")] = None,
    cc: Annotated[list[str] | None, typer.Option("--cc", help="Cc recipient (repeat)")] = None,
    bcc: Annotated[list[str] | None, typer.Option("--bcc", help="Bcc recipient (repeat)")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="sender (default: the connection's)")] = None,
    subject: Annotated[str, typer.Option(help="subject")] = "",
    text: Annotated[str | None, typer.Option(help="plain-text body")] = None,
    html: Annotated[str | None, typer.Option(help="HTML body")] = None,
    attach: Annotated[list[Path] | None, typer.Option(help="file to attach (repeat)")] = None,
    raw: Annotated[Path | None, typer.Option(help="send this .eml file as it is")] = None,
    connection: Annotated[str | None, typer.Option(help="connection to send with")] = None,
    config: ConfigOption = None,
) -> None:
    """Send a message now through Microsoft 365."""
    from ._client import Client
    from .message import build_message, read_eml

    async def main() -> None:
        async with Client(settings(config)) as client:
            if raw is not None:
                msg = read_eml(raw)
            else:
                msg = build_message(sender=from_ or client.route(None, connection).sender, to=to or [],
                                    cc=cc or [], bcc=bcc or [], subject=subject, text=text, html=html,
                                    attachments=attach or [])
            result = await client.send(msg, connection=connection)
            out.print(f"[green]Sent[/] {result.id} from {result.sender} to {', '.join(result.recipients)} "
                      f"via {result.transport} (request id {result.request_id or '-'})")

    run(main())


@app.command("test")
def send_test(
    to: Annotated[str | None, typer.Option("--to", help="recipient (default: the account)")] = None,
    connection: Annotated[str | None, typer.Option(help="connection to test")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="sender (default: the connection's)")] = None,
    config: ConfigOption = None,
) -> None:
    """Send the test email: it says which connection, account, sender and transport carried it."""
    from ._client import Client

    async def main() -> None:
        async with Client(settings(config)) as client:
            result = await client.send_test_email(connection=connection, to=to, sender=from_)
            out.print(f"[green]Test email sent[/] {result.id} from {result.sender} to "
                      f"{', '.join(result.recipients)} via {result.transport}")

    run(main())


# ---- demo -------------------------------------------------------------------------------------------
@app.command()
def demo(
    scenario: Annotated[str, typer.Option(help="m365sim scenario to run on")] = "seed",
    check: Annotated[bool, typer.Option(help="exit 0 once the test email is delivered")] = False,
    workdir: Annotated[Path | None, typer.Option(help="where the demo writes its config and state")] = None,
) -> None:
    """Run relay365 end to end against m365sim (no Microsoft 365 tenant needed)."""
    from .demo import run_demo

    raise typer.Exit(run_demo(scenario=scenario, check=check, workdir=workdir, console=out))


# ---- serve ------------------------------------------------------------------------------------------
@app.command("serve")
def serve_command(
    config: ConfigOption = None,
    log_format: Annotated[str, typer.Option(help="text | json")] = "text",
    grace: Annotated[float, typer.Option(help="seconds deliveries in flight get at shutdown")] = 30.0,
) -> None:
    """Run the relay: SMTP listener(s), HTTP API and delivery workers."""
    from .logs import configure_logging
    from .serve import serve

    current = settings(config)
    configure_logging(log_format)

    def ready(info: dict[str, Any]) -> None:
        import json

        out.print("READY " + json.dumps(info), markup=False, highlight=False, soft_wrap=True)

    run(serve(current, grace=grace, on_ready=ready, config_file=config_path(config)))


# ---- queue & log ---------------------------------------------------------------------------------------
queue_app = typer.Typer(help="Look at and act on the outbox.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")


async def _with_store(config: Path | None, action: Any) -> Any:
    from .auth import SecretBox
    from .store import Store

    current = settings(config)
    store = await Store.open(current.store_url, SecretBox.from_environment(current.key_file))
    try:
        return await action(store)
    finally:
        await store.close()


def _messages_table(messages: list[Any]) -> Table:
    table = Table("id", "received", "state", "from", "to", "attempts", "code / diagnosis")
    for m in messages:
        table.add_row(m.id, m.received_at.strftime("%Y-%m-%d %H:%M:%S"), str(m.state), m.sender,
                      ", ".join(m.recipients), str(m.attempts),
                      " ".join(x for x in (m.last_code, m.last_entry_id) if x) or "-")
    return table


@queue_app.command("list")
def queue_list(
    state: Annotated[list[str] | None, typer.Option(help="queued|sending|deferred|failed|sent")] = None,
    limit: Annotated[int, typer.Option(help="how many")] = 50,
    config: ConfigOption = None,
) -> None:
    """Messages waiting, deferred or failed (newest first)."""
    from .store import MessageState

    states = {MessageState(s) for s in state} if state else {
        MessageState.QUEUED, MessageState.SENDING, MessageState.DEFERRED, MessageState.FAILED}
    messages = run(_with_store(config, lambda st: st.list_messages(states=states, limit=limit)))
    out.print(_messages_table(messages))


@queue_app.command("show")
def queue_show(message_id: str, config: ConfigOption = None) -> None:
    """One message: its state, every attempt with Microsoft's code, and the diagnosis."""
    from .catalogue import lookup_entry

    async def action(store: Any) -> Any:
        return await store.get_message(message_id), await store.attempts(message_id)

    message, attempts = run(_with_store(config, action))
    if message is None:
        err.print(f"[red]error:[/] no message {message_id} in the queue")
        raise typer.Exit(1)
    out.print(f"[bold]{message.id}[/] {message.state} from {message.sender} "
              f"to {', '.join(message.recipients)}")
    out.print(f"subject: {message.subject}  size: {message.size}  received: {message.received_at}  "
              f"via: {message.source}")
    table = Table("#", "finished", "outcome", "transport", "code", "request id", "detail")
    for a in attempts:
        table.add_row(str(a.number), a.finished_at.strftime("%Y-%m-%d %H:%M:%S"), a.outcome, a.transport,
                      a.code or "-", a.request_id or "-", a.detail or "-")
    out.print(table)
    if message.last_entry_id:
        entry = lookup_entry(message.last_entry_id)
        out.print(f"[bold]{entry.id}[/]: {entry.title}\n[bold]Cause:[/] {entry.cause}\n"
                  f"[bold]Fix:[/] {entry.fix}")


@queue_app.command("retry")
def queue_retry(
    message_id: Annotated[str | None, typer.Argument(help="queue id")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="every dead-letter message")] = False,
    config: ConfigOption = None,
) -> None:
    """Send a deferred or dead-letter message again now."""
    if all_failed:
        count = run(_with_store(config, lambda st: st.retry_all_failed()))
        out.print(f"{count} message(s) queued again")
        return
    if message_id is None:
        err.print("[red]error:[/] give a queue id or --all-failed")
        raise typer.Exit(2)
    if not run(_with_store(config, lambda st: st.retry(message_id))):
        err.print(f"[red]error:[/] {message_id} is not a deferred or failed message")
        raise typer.Exit(1)
    out.print(f"{message_id} queued again")


@queue_app.command("delete")
def queue_delete(message_id: str, config: ConfigOption = None) -> None:
    """Remove a message from the queue for good."""
    if not run(_with_store(config, lambda st: st.delete_message(message_id))):
        err.print(f"[red]error:[/] no message {message_id}")
        raise typer.Exit(1)
    out.print(f"{message_id} deleted")


@queue_app.command("purge")
def queue_purge(
    failed: Annotated[bool, typer.Option("--failed", help="delete every dead-letter message")] = False,
    config: ConfigOption = None,
) -> None:
    """Delete dead-letter messages."""
    if not failed:
        err.print("[red]error:[/] say what to purge: --failed")
        raise typer.Exit(2)
    count = run(_with_store(config, lambda st: st.purge_failed()))
    out.print(f"{count} failed message(s) deleted")


@app.command()
def log(
    to: Annotated[str | None, typer.Option("--to", help="only mail to this address")] = None,
    status: Annotated[str | None, typer.Option(help="queued | sending | deferred | failed | sent")] = None,
    since: Annotated[str | None, typer.Option(help="ISO date or time, e.g. 2026-11-27")] = None,
    limit: Annotated[int, typer.Option(help="how many")] = 50,
    config: ConfigOption = None,
) -> None:
    """What went through the relay, and the direct sends, with the diagnosis of failures."""
    from .store import MessageState

    since_dt = dt.datetime.fromisoformat(since).replace(tzinfo=dt.UTC) if since else None
    states = {MessageState(status)} if status else None

    async def action(store: Any) -> Any:
        queued = await store.list_messages(states=states, limit=limit, recipient=to, since=since_dt)
        direct = [r for r in await store.recent_sends(limit)
                  if (to is None or to.lower() in r.recipients) and (status is None or r.status == status)
                  and (since_dt is None or r.time >= since_dt)]
        return queued, direct

    queued, direct = run(_with_store(config, action))
    out.print(_messages_table(queued))
    if direct:
        table = Table("id", "time", "connection", "from", "to", "status", "code / diagnosis",
                      title="Sent directly (relay365 send / test / Python API)")
        for r in direct:
            table.add_row(r.id, r.time.strftime("%Y-%m-%d %H:%M:%S"), r.connection, r.sender,
                          ", ".join(r.recipients), r.status,
                          " ".join(x for x in (r.code, r.entry_id) if x) or "-")
        out.print(table)


# ---- clients of the relay: SMTP users and API keys -----------------------------------------------
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
    from .ingress import hash_password

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
    from .ingress import hash_password, new_api_key

    key = new_api_key()
    path = _add_client(config, "api_keys", {"name": name, "key_hash": hash_password(key),
                                            "senders": list(sender or [])})
    out.print(f"API key {name!r} (shown once, keep it now): {key}", markup=False, soft_wrap=True)
    out.print(f"Stored as a hash in {path}; send it as `Authorization: Bearer KEY`.")


admin_app = typer.Typer(help="The web admin page.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")


def set_admin_password(path: Path, password: str) -> None:
    """Store the admin page's password (argon2id) in the configuration file."""
    from .config import update_config_file
    from .ingress import hash_password

    password_hash = hash_password(password)

    def change(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "admin": {**data.get("admin", {}), "password_hash": password_hash}}

    update_config_file(path, change)


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

# Commands of other parts register themselves on `app` (kept in their own modules).
from . import diagnose_cli, integrations_cli  # noqa: E402, F401


def main() -> None:
    # `relay365 sendmail` takes sendmail's own flags (-oi, -fSENDER, -FName), which a
    # Typer command would mangle, and is also reached through a `sendmail` symlink.
    invoked_as = Path(sys.argv[0]).name
    if invoked_as == "sendmail" or sys.argv[1:2] == ["sendmail"]:
        from .ingress import sendmail_command

        args = sys.argv[1:] if invoked_as == "sendmail" else sys.argv[2:]
        raise SystemExit(sendmail_command(args))
    app()


if __name__ == "__main__":
    main()
