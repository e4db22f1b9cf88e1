"""``relay365 demo``: the whole system against m365sim, with no Microsoft 365 tenant.

It starts m365sim on a scenario (``seed`` by default), writes a throwaway config for it,
signs the scenario's admin in through the real authorization-code flow (the scenario's
``browser_user`` is the already signed-in browser, so consent is automatic), sends the
test email from the shared mailbox through Graph, and shows the message as the
recipient's mailbox holds it.  It then runs the relay with its admin page, behind a
one-time password.  ``READY {json}`` tells scripts where everything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
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
from .ingress import hash_password

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

    async with Client(config) as client:
        conn = await client.connection("demo")
        result = await sign_in_with_browser(conn, on_url=signed_in_browser(ca_file), open_browser=False,
                                            timeout=60)
        console.print(f"[green]Signed in[/] as [bold]{result.account}[/] (authorization code + PKCE); "
                      f"granted {', '.join(result.scopes)}")
        for warning in result.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        sent = await client.send_test_email(connection="demo", to=DEMO_RECIPIENT, sender=DEMO_SHARED)
        console.print(f"[green]Sent[/] test email {sent.id} from {sent.sender} via Graph "
                      f"(request id {sent.request_id})")
        return sent


class RelayThread:
    """``relay365 serve`` on a thread of its own, for the demo."""

    def __init__(self, config: Path) -> None:
        self._config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready: dict[str, Any] = {}
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="relay365-serve", daemon=True)

    def start(self) -> dict[str, Any]:
        self._thread.start()
        self._started.wait(60)
        if self._error is not None:
            raise self._error
        return self._ready

    def _run(self) -> None:
        from .config import load_settings
        from .serve import serve

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(info: dict[str, Any]) -> None:
                self._ready = info
                self._started.set()

            await serve(load_settings(self._config), stop=self._stop, grace=5, on_ready=ready,
                        config_file=self._config)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the thread that waits in start()
            self._error = exc
            self._started.set()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def submit_three_ways(ready: dict[str, Any], config: Path) -> list[str]:
    """One message through each way in: SMTP, `relay365 sendmail`, the HTTP API."""
    import os
    import smtplib
    import subprocess
    import sys

    subjects = ["relay365 demo via SMTP", "relay365 demo via sendmail", "relay365 demo via the HTTP API"]
    with smtplib.SMTP(ready["smtp_host"], ready["smtp_port"], timeout=30) as smtp:
        smtp.sendmail(DEMO_SHARED, [DEMO_RECIPIENT],
                      f"From: {DEMO_SHARED}\r\nTo: {DEMO_RECIPIENT}\r\nSubject: {subjects[0]}\r\n\r\n"
                      "Sent to the local SMTP relay.\r\n".encode())
    message = (f"From: {DEMO_SHARED}\nTo: {DEMO_RECIPIENT}\nSubject: {subjects[1]}\n\n"
               "Piped to sendmail -t -i.\n")
    result = subprocess.run([sys.executable, "-m", "relay365", "sendmail", "-t", "-i"],
                            input=message.encode(), env={**os.environ, "RELAY365_CONFIG": str(config)},
                            capture_output=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"relay365 sendmail failed: {result.stderr.decode(errors='replace')}")
    response = httpx.post(f"{ready['http_url']}/api/v1/messages", timeout=30, json={
        "from": DEMO_SHARED, "to": [DEMO_RECIPIENT], "subject": subjects[2], "text": "Posted as JSON."})
    if response.status_code != 202:
        raise RuntimeError(f"the HTTP API answered {response.status_code}: {response.text}")
    return subjects


def wait_for_subjects(sim: Any, subjects: list[str], timeout: float = 60) -> bool:
    """True once the demo recipient's m365sim mailbox holds every subject."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = {m.subject for m in sim.mailbox(DEMO_RECIPIENT).messages}
        if all(s in got for s in subjects):
            return True
        time.sleep(0.1)
    return False


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
            data = demo_settings(sim, workdir)
            # OS-chosen ports: the READY line says where they are.
            data["relay"] = {"smtp": [{"host": "127.0.0.1", "port": 0}], "http_port": 0}
            # A password for this demo's admin page only: it dies with the demo.
            admin_password = secrets.token_urlsafe(12)
            data["admin"] = {"password_hash": hash_password(admin_password)}
            write_settings(settings_from_dict(data, env={}), config)
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
            relay = RelayThread(config)
            served = relay.start()
            try:
                console.print(f"The relay is running: SMTP {served['smtp_host']}:{served['smtp_port']}, "
                              f"HTTP {served['http_url']}")
                # Through every way in, so the admin page's log has the demo's mail flowing.
                subjects = submit_three_ways(served, config)
                if not wait_for_subjects(sim, subjects):
                    console.print("[bold red]The demo failed:[/] the relay did not deliver the SMTP, "
                                  "sendmail and HTTP messages; see `relay365 queue list --config "
                                  f"{config}`")
                    return 1
                console.print("[green]Delivered[/] one message each through SMTP, sendmail and "
                              "the HTTP API")
                ready = {"config": str(config), "sim_control": sim.control_url,
                         "senders": [DEMO_ACCOUNT, DEMO_SHARED], "recipient": DEMO_RECIPIENT,
                         "smtp_host": served["smtp_host"], "smtp_port": served["smtp_port"],
                         "http_url": served["http_url"], "admin_password": admin_password}
                console.print("READY " + json.dumps(ready), markup=False, highlight=False, soft_wrap=True)
                if check:
                    return 0
                console.print(f"\nAdmin page: {served['http_url']} (password: {admin_password})",
                              markup=False, highlight=False)
                console.print(f"Try: swaks --server {served['smtp_host']}:{served['smtp_port']} "
                              f"--from {DEMO_SHARED} --to {DEMO_RECIPIENT}\n"
                              f"     relay365 queue list --config {config}\n"
                              f"Mailboxes: {sim.control_url}/mailboxes/{DEMO_RECIPIENT}/messages\n"
                              "Ctrl-C stops the demo.")
                stop = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                with contextlib.suppress(KeyboardInterrupt):
                    stop.wait()
                return 0
            finally:
                relay.stop()
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
