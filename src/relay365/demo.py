"""``relay365 demo``: the whole system against m365sim, with no Microsoft 365 tenant.

It starts m365sim on a scenario (``seed`` by default), writes a throwaway config for it,
signs the scenario's admin in through the real authorization-code flow (the scenario's
``browser_user`` is the already signed-in browser, so consent is automatic), sends the
test email from the shared mailbox through Graph, and shows the message as the
recipient's mailbox holds it.  ``READY {json}`` tells scripts where everything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import ssl
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.panel import Panel

from ._client import Client
from .config import settings_from_dict, write_settings
from .errors import Relay365Error

# The seed scenario's registrations (m365sim/scenarios/seed.toml).
DEMO_CLIENT_ID = "11111111-aaaa-4bbb-8ccc-111111111111"
DEMO_SECRET = "seed~Delegated.Secret-0123456789abcdefghij"  # noqa: S105 (the emulator's, public)
DEMO_ACCOUNT = "admin@contoso.com"
DEMO_SHARED = "info@contoso.com"
DEMO_RECIPIENT = "newcomer@example.net"


class _FormPost(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.action = a.get("action") or ""
        elif tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.fields[str(a["name"])] = a.get("value") or ""


def signed_in_browser(ca_file: Path) -> Any:
    """A stand-in for the admin's browser, already signed in to m365sim: it follows the
    sign-in URL and delivers the answer to relay365's callback as a browser would."""

    def visit(url: str) -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        with httpx.Client(verify=ctx, timeout=30) as browser:
            page = browser.get(url)
            if page.status_code in (301, 302, 303):
                httpx.get(page.headers["location"], timeout=30)
                return
            form = _FormPost()
            form.feed(page.text)
            if not form.action:
                raise RuntimeError("m365sim asked for an interactive sign-in: the scenario has no "
                                   "browser_user who has consented")
            httpx.post(form.action, data=form.fields, timeout=30)

    def on_url(url: str) -> None:
        threading.Thread(target=visit, args=(url,), daemon=True).start()

    return on_url


def demo_settings(sim: Any, workdir: Path) -> dict[str, Any]:
    return {
        "state_dir": str(workdir / "state"),
        "connections": [{
            "name": "demo",
            "tenant": sim.tenant_id,
            "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_SECRET,
            "account": DEMO_ACCOUNT,
            "senders": [DEMO_ACCOUNT, DEMO_SHARED],
            "default_sender": DEMO_SHARED,
            "sender_name": "Contoso (relay365 demo)",
            "authority_host": sim.base_url,
            "graph_url": sim.graph_url,
            "smtp_host": sim.host,
            "smtp_port": sim.smtp_port,
            "ca_file": str(sim.ca_file),
            "secret_expires": "2028-06-01",
        }],
    }


async def _sign_in_and_send(config: Path, ca_file: Path, console: Console) -> Any:
    from .auth import sign_in_with_browser
    from .cli import send_test_email

    async with Client(config) as client:
        conn = await client.connection("demo")
        result = await sign_in_with_browser(conn, on_url=signed_in_browser(ca_file), open_browser=False,
                                            timeout=60)
        console.print(f"[green]Signed in[/] as [bold]{result.account}[/] (authorization code + PKCE); "
                      f"granted {', '.join(result.scopes)}")
        for warning in result.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        sent = await send_test_email(client, connection="demo", to=DEMO_RECIPIENT, sender=DEMO_SHARED)
        console.print(f"[green]Sent[/] test email {sent.id} from {sent.sender} via Graph "
                      f"(request id {sent.request_id})")
        return sent


def run_demo(*, scenario: str, check: bool, workdir: Path | None, console: Console) -> int:
    import m365sim

    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="relay365-demo-")
        workdir = Path(tmp)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "relay365.toml"
    try:
        with m365sim.Simulator(scenario, state_dir=workdir / "m365sim") as sim:
            console.print(f"m365sim ({scenario}) is Microsoft 365 for this demo: {sim.base_url}")
            write_settings(settings_from_dict(demo_settings(sim, workdir), env={}), config)
            try:
                asyncio.run(_sign_in_and_send(config, sim.ca_file, console))
            except Relay365Error as exc:
                code = f" [{exc.code}]" if exc.code else ""
                console.print(f"[bold red]The demo failed:[/] {exc.message}{code}")
                console.print(f"[bold]{exc.entry.id}[/]: {exc.entry.title}\n"
                              f"[bold]Cause:[/] {exc.entry.cause}\n[bold]Fix:[/] {exc.entry.fix}")
                return 1
            delivered = sim.mailbox(DEMO_RECIPIENT).messages
            if not delivered:
                console.print("[bold red]The demo failed:[/] m365sim accepted the message but "
                              f"{DEMO_RECIPIENT}'s mailbox is empty")
                return 1
            show_delivered(console, delivered[-1])
            ready = {"config": str(config), "sim_control": sim.control_url,
                     "senders": [DEMO_ACCOUNT, DEMO_SHARED], "recipient": DEMO_RECIPIENT}
            console.print("READY " + json.dumps(ready), markup=False, highlight=False, soft_wrap=True)
            if check:
                return 0
            console.print(f"\nTry: relay365 --help; relay365 send --config {config} --to {DEMO_RECIPIENT} "
                          "--subject hi --text hello\nMailboxes: " + sim.control_url
                          + f"/mailboxes/{DEMO_RECIPIENT}/messages\nCtrl-C stops the demo.")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
            return 0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def show_delivered(console: Console, message: Any) -> None:
    parsed = message.parsed()
    body = parsed.get_body(preferencelist=("plain", "html"))
    text = body.get_content() if body is not None else ""
    header = "\n".join(f"{h}: {parsed[h]}" for h in ("From", "To", "Subject", "Date") if parsed[h])
    console.print(Panel(f"{header}\n\n{text}", title=f"Delivered to {', '.join(message.recipients)} "
                        f"via {message.path} (as {message.identity})", expand=False))
