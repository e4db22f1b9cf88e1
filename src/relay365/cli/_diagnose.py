"""Explaining and finding failures: ``explain``, ``doctor``, and ``alerts test``."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from ..catalogue import Entry, catalogue, match_entry
from ._common import ConfigOption, app, err, out, run, settings

if TYPE_CHECKING:  # Apprise loads only for the alerts commands
    from ..alerts import AlertSettings
    from ..config import Settings


def entry_json(entry: Entry) -> dict[str, str]:
    return {"id": entry.id, "title": entry.title, "cause": entry.cause, "fix": entry.fix,
            "kind": entry.kind, "link": entry.link}


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _print_entry(entry: Entry, key: str | None = None) -> None:
    out.print(f"[bold]{entry.id}[/]: {entry.title}" + (f"  [dim](matched {key!r})[/]" if key else ""))
    out.print(f"[bold]Kind:[/] {entry.kind}")
    out.print(f"[bold]Cause:[/] {entry.cause}")
    out.print(f"[bold]Fix:[/] {entry.fix}")
    if entry.link:
        out.print(f"[bold]More:[/] {entry.link}")


@app.command()
def explain(
    text: Annotated[list[str] | None, typer.Argument(
        help="a code (AADSTS50194, ErrorSendAsDenied, 5.7.139, R365-...) or a pasted error "
             "message; '-' or nothing reads it from standard input")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the entry as JSON")] = False,
    list_all: Annotated[bool, typer.Option("--all", help="list every entry of the catalogue")] = False,
) -> None:
    """Explain an error: its catalogue entry, with the cause and the fix."""
    if list_all:
        entries = list(catalogue().values())
        if as_json:
            _print_json([entry_json(e) for e in entries])
        else:
            for e in entries:
                out.print(f"[bold]{e.id}[/] ({e.kind}): {e.title}")
        return
    words = text or []
    if words in ([], ["-"]) and sys.stdin.isatty():
        err.print("give a code or an error message (or pipe it in): relay365 explain AADSTS50194")
        raise typer.Exit(2)
    pasted = sys.stdin.read() if words in ([], ["-"]) else " ".join(words)
    found = match_entry(pasted)
    if found is None:
        if as_json:
            _print_json({"text": pasted.strip(), "entry": None})
        else:
            out.print("No catalogue entry matches this text. Try the code alone (AADSTS..., the Graph "
                      "error code, the SMTP reply) or `relay365 explain --all`.")
        raise typer.Exit(1)
    if as_json:
        _print_json({**entry_json(found.entry), "matched": found.key})
    else:
        _print_entry(found.entry, found.key)


_MARK = {"pass": "[green]pass[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]fail[/]",
         "skip": "[dim]skip[/]"}


@app.command()
def doctor(
    connection: Annotated[str | None, typer.Argument(help="connection name (default: every one)")] = None,
    send_test: Annotated[str | None, typer.Option(
        "--send-test", metavar="ADDRESS",
        help="send a real test message from each sender to ADDRESS")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the checks as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Check connections end to end; exit 1 when a check fails.

    With --json: one object {"connection", "ok", "checks": [{"name", "status", "entry",
    "title", "detail", "fix"}]} for one connection, a list of them for several.
    """
    import logging

    from ..config import load_settings
    from ..diagnose import DoctorReport, config_failure, run_doctor
    from ..errors import Relay365Error

    # Every finding is in the report: the parts' own warnings would only repeat them on stderr.
    logging.getLogger("relay365").addHandler(logging.NullHandler())
    try:
        current = load_settings(config)
    except Relay365Error as exc:
        reports = [config_failure(exc, connection)]
    else:
        names: list[str | None] = [connection] if connection else [
            c.name for c in current.connections] or [None]

        async def main() -> list[DoctorReport]:
            return [await run_doctor(current, name, send_test=send_test) for name in names]

        reports = run(main())
    if as_json:
        data: object = reports[0].to_json() if len(reports) == 1 else [r.to_json() for r in reports]
        _print_json(data)
    else:
        for report in reports:
            out.print(f"[bold]relay365 doctor: connection {report.connection or '-'}[/]")
            for check in report.checks:
                out.print(f"  {_MARK[check.status]}  [bold]{check.name}[/]  {check.detail}")
                if check.entry is not None and check.status in ("warn", "fail"):
                    out.print(f"        [bold]{check.entry.id}[/]: {check.entry.title}")
                    out.print(f"        [bold]Fix:[/] {check.entry.fix}")
            out.print("[green]No check failed.[/]" if report.ok else "[bold red]Some checks failed.[/]")
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


# ---- alerts -------------------------------------------------------------------------------------
alerts_app = typer.Typer(help="Alert channels: failures, sign-in lost, expiring secrets, backlog.",
                         no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


def configured_alerts(current: Settings) -> AlertSettings:
    """The ``[alerts]`` settings."""
    return current.alerts


@alerts_app.command("test")
def alerts_test(
    url: Annotated[list[str] | None, typer.Option(
        "--url", help="an Apprise URL to try as well as the configured ones (repeat)")] = None,
    config: ConfigOption = None,
) -> None:
    """Send a test alert to every configured channel; exit 1 when one refuses it."""
    from ..alerts import AppriseChannel, build_channels, make_test_alert

    current = settings(config)
    wanted = configured_alerts(current)

    async def main() -> dict[str, bool]:
        from ..auth import SecretBox
        from ..store import Store

        store = await Store.open(current.store_url, SecretBox.from_environment(current.key_file))
        try:
            channels = build_channels(current, wanted, store.enqueue)
            channels += [AppriseChannel(u) for u in url or []]
            if not channels:
                err.print("no alert channel is configured: add urls or email_to to [alerts], or "
                          "give --url")
                raise typer.Exit(1)
            results: dict[str, bool] = {}
            alert = make_test_alert()
            for channel in channels:
                try:
                    results[channel.name] = await channel.deliver(alert)
                except Exception as exc:  # report it as this channel's failure, try the others
                    err.print(f"{channel.name}: {type(exc).__name__}: {exc}")
                    results[channel.name] = False
            return results
        finally:
            await store.close()

    results = run(main())
    for name, ok in results.items():
        out.print(f"{'[green]sent[/]' if ok else '[bold red]failed[/]'}  {name}", highlight=False)
    if not all(results.values()):
        raise typer.Exit(1)
