"""``Simulator``: m365sim running in-process, on a loop in a thread of its own.

The HTTPS listener (uvicorn) and the SMTP submission listener (aiosmtpd) share one
asyncio loop and one ``SimState``.  Sockets are bound before the loop starts, so the
ports (chosen by the OS unless given) are known as soon as ``start()`` returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import uvicorn

from ._app import asgi_app
from ._clock import Clock
from ._mailstore import DeliveredMessage
from ._pki import Pki, ensure_pki, load_signing_key
from ._scenario import Fault, Scenario, load_scenario
from ._smtp import SmtpSubmission
from ._state import RequestRecord, SimState
from ._tokens import TokenAuthority

T = TypeVar("T")
log = logging.getLogger("m365sim")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Mailbox:
    """What m365sim delivered to one address (a live view: read ``messages`` again)."""

    def __init__(self, sim: Simulator, address: str) -> None:
        self._sim = sim
        self.address = address

    @property
    def messages(self) -> list[DeliveredMessage]:
        return self._sim._call(lambda s: s.mail.messages(self.address))

    def clear(self) -> None:
        self._sim._call(lambda s: s.mail.clear(self.address))

    def __len__(self) -> int:
        return len(self.messages)


class Simulator:
    """Run m365sim: ``with Simulator("seed") as sim: ...``."""

    def __init__(
        self,
        scenario: Scenario | str | Path = "seed",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        smtp_port: int = 0,
        state_dir: str | Path | None = None,
    ) -> None:
        self._initial = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.host = host
        self._want_port, self._want_smtp_port = port, smtp_port
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="m365sim-")
            state_dir = self._tmp.name
        self.state_dir = Path(state_dir)
        self.pki: Pki = ensure_pki(self.state_dir)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._state: SimState | None = None
        self._stopping: asyncio.Event | None = None
        self.port = 0
        self.smtp_port = 0

    # ---- lifecycle ----------------------------------------------------------------
    def start(self) -> Simulator:
        if self._thread is not None:
            raise RuntimeError("this Simulator is already running")
        http_sock = _bind(self.host, self._want_port)
        smtp_sock = _bind(self.host, self._want_smtp_port)
        self.port = http_sock.getsockname()[1]
        self.smtp_port = smtp_sock.getsockname()[1]
        clock = Clock()
        self._state = SimState(self._initial, TokenAuthority(load_signing_key(self.pki), clock), clock)
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(http_sock, smtp_sock, started), name="m365sim", daemon=True
        )
        self._thread.start()
        started.result(timeout=30)
        return self

    def _run(self, http_sock: socket.socket, smtp_sock: socket.socket,
             started: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(http_sock, smtp_sock, started))
        except BaseException as exc:  # a start-up failure must reach start()'s caller
            if not started.done():
                started.set_exception(exc)
            else:
                log.exception("m365sim stopped with an error")
        finally:
            loop.close()

    async def _serve(self, http_sock: socket.socket, smtp_sock: socket.socket,
                     started: concurrent.futures.Future[None]) -> None:
        assert self._state is not None
        self._stopping = asyncio.Event()
        config = uvicorn.Config(
            asgi_app(self._state),
            ssl_certfile=str(self.pki.server_cert),
            ssl_keyfile=str(self.pki.server_key),
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_keep_alive=60,
            timeout_graceful_shutdown=2,
            lifespan="off",
        )
        server = uvicorn.Server(config)
        smtp = SmtpSubmission(self._state, self.pki.server_ssl_context())
        await smtp.start(smtp_sock)
        http_task = asyncio.create_task(server.serve(sockets=[http_sock]))
        while not server.started:
            if http_task.done():
                http_task.result()
                raise RuntimeError("m365sim's HTTPS listener did not start")
            await asyncio.sleep(0.01)
        started.set_result(None)
        await self._stopping.wait()
        # Stop now, like a killed server: idle keep-alive TLS connections would
        # otherwise hold a graceful shutdown for the TLS close timeout.
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        server.should_exit = server.force_exit = True
        await smtp.stop()
        await http_task
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def stop(self) -> None:
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=30)
        self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _call(self, fn: Callable[[SimState], T]) -> T:
        """Run ``fn(state)`` on the emulator's loop (where the state lives)."""
        if self._loop is None or self._state is None or self._thread is None:
            raise RuntimeError("the Simulator is not running; use start() or a with block")
        state = self._state

        async def run() -> T:
            return fn(state)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    # ---- where it listens ---------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def tenant_id(self) -> str:
        return self.scenario.tenant.id

    def authority(self, tenant: str | None = None) -> str:
        """MSAL authority URL; pass it with ``instance_discovery=False``."""
        return f"{self.base_url}/{tenant or self.tenant_id}"

    @property
    def graph_url(self) -> str:
        return f"{self.base_url}/v1.0"

    @property
    def control_url(self) -> str:
        return f"{self.base_url}/_sim"

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_cert

    def ready_info(self) -> dict[str, Any]:
        """The endpoints, as ``m365sim serve`` prints them when ready."""
        return {
            "authority_host": self.base_url,
            "tenant": self.tenant_id,
            "graph": self.graph_url,
            "smtp_host": self.host,
            "smtp_port": self.smtp_port,
            "ca": str(self.ca_file),
            "control": self.control_url,
        }

    # ---- control ----------------------------------------------------------------------------
    @property
    def scenario(self) -> Scenario:
        return self._call(lambda s: s.scenario)

    def set_scenario(self, scenario: Scenario | str | Path) -> None:
        """Change the tenant while running (tokens and delivered mail are kept)."""
        new = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self._call(lambda s: s.set_scenario(new))

    def edit_scenario(self, change: Callable[[Scenario], Scenario]) -> Scenario:
        """Apply ``change`` to the running scenario (for example with ``dataclasses.replace``)."""
        def apply(s: SimState) -> Scenario:
            s.set_scenario(change(s.scenario))
            return s.scenario

        return self._call(apply)

    def mailbox(self, address: str) -> Mailbox:
        return Mailbox(self, address)

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward: tokens, codes and secrets expire."""
        self._call(lambda s: s.clock.advance(seconds))

    def revoke(self, user: str) -> None:
        """Revoke the user's sign-in sessions: their refresh tokens stop working."""
        self._call(lambda s: s.revoke(user))

    def fault(self, path: str, kind: str = "status", *, status: int = 503, count: int = 1,
              retry_after: float | None = None, latency: float = 0.0,
              method: str | None = None) -> None:
        """Make the next ``count`` requests to ``path`` (a prefix) fail or stall."""
        f = Fault(path=path, kind=kind, status=status, count=count, retry_after=retry_after,
                  latency=latency, method=method)
        self._call(lambda s: s.add_fault(f))

    def clear_faults(self) -> None:
        self._call(lambda s: s.clear_faults())

    def requests(self) -> list[RequestRecord]:
        return self._call(lambda s: list(s.request_log))

    def approve_device_code(self, user_code: str, user: str, *, decline: bool = False) -> None:
        """Do what a person does on the device login page."""
        from ._identity import complete_device_code

        self._call(lambda s: complete_device_code(s, user_code, user, approve=not decline))

    def grant_send_as(self, mailbox: str, user: str) -> None:
        """Add-RecipientPermission: let ``user`` send as the shared ``mailbox``."""

        def change(s: Scenario) -> Scenario:
            shared = tuple(
                replace(m, send_as=(*m.send_as, user)) if m.address.lower() == mailbox.lower() else m
                for m in s.shared_mailboxes
            )
            return replace(s, shared_mailboxes=shared)

        self.edit_scenario(change)
