"""Signing in, sending now (``send``, ``test``) and the demo on the emulator."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import ConfigOption, app, out, run, settings


@app.command()
def login(
    connection: Annotated[str | None, typer.Argument(help="connection name")] = None,
    config: ConfigOption = None,
    device: Annotated[bool, typer.Option(help="device code flow, for a server without a browser")] = False,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="print the URL only")] = False,
    paste: Annotated[bool, typer.Option(help="finish in any browser and paste the final URL back")] = False,
) -> None:
    """Sign in (delegated) or check that a token can be had (app-only)."""
    from .._client import Client

    async def main() -> None:
        async with Client(settings(config)) as client:
            conn = await client.connection(connection)
            result = await sign_in(conn, device=device, no_browser=no_browser, paste=paste)
            show_sign_in(result)

    run(main())


async def sign_in(conn: Any, *, device: bool, no_browser: bool, paste: bool) -> Any:
    from ..auth import sign_in_with_browser

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
    from .._client import Client
    from ..message import build_message, read_eml

    async def main() -> None:
        async with Client(settings(config)) as client:
            msg: EmailMessage | bytes
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
    from .._client import Client

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
    from ..demo import run_demo

    raise typer.Exit(run_demo(scenario=scenario, check=check, workdir=workdir, console=out))

