"""The outbox from the command line: ``queue`` (list, show, retry, delete, purge) and ``log``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ._common import ConfigOption, app, err, out, run, settings

queue_app = typer.Typer(help="Look at and act on the outbox.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")


async def _with_store(config: Path | None, action: Any) -> Any:
    from ..auth import SecretBox
    from ..store import Store

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
    from ..store import MessageState

    states = {MessageState(s) for s in state} if state else {
        MessageState.QUEUED, MessageState.SENDING, MessageState.DEFERRED, MessageState.FAILED}
    messages = run(_with_store(config, lambda st: st.list_messages(states=states, limit=limit)))
    out.print(_messages_table(messages))


@queue_app.command("show")
def queue_show(message_id: str, config: ConfigOption = None) -> None:
    """One message: its state, every attempt with Microsoft's code, and the diagnosis."""
    from ..catalogue import lookup_entry

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
    """Every message, relayed or sent directly, with the diagnosis of failures."""
    from ..store import MessageState

    since_dt = dt.datetime.fromisoformat(since).replace(tzinfo=dt.UTC) if since else None
    states = {MessageState(status)} if status else None

    async def action(store: Any) -> Any:
        return await store.list_messages(states=states, limit=limit, recipient=to, since=since_dt)

    out.print(_messages_table(run(_with_store(config, action))))

