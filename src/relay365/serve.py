"""``relay365 serve``: the SMTP listener(s), the HTTP listener and the delivery workers in
one process, sharing one store.

Accept, queue and deliver stay separate parts that share only the store (as in Postfix):
the ways in commit a message and kick the delivery engine; the engine claims what is
due.  SIGTERM and SIGINT stop accepting, let deliveries in flight finish (bounded by
``grace``) and leave the rest queued; SIGHUP re-reads the configuration.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import metrics
from .auth import SecretBox
from .config import Settings, load_settings
from .delivery import DeliveryEngine
from .errors import NeedsSignIn, StoreError
from .ingress import api_routes, start_smtp_listeners
from .outbound import Outbound
from .policy import Policy
from .store import Attempt, NewMessage, QueuedMessage, Store
from .web import Admin, AdminSite, admin_routes

log = logging.getLogger("relay365.serve")


class KickingOutbox:
    """The store as the ways in see it: every commit wakes the delivery engine."""

    def __init__(self, store: Store, engine: DeliveryEngine) -> None:
        self._store = store
        self._engine = engine

    async def enqueue(self, message: NewMessage) -> str:
        queue_id = await self._store.enqueue(message)
        metrics.message_accepted(message.source)
        self._engine.kick()
        return queue_id

    async def get_message(self, message_id: str) -> QueuedMessage | None:
        return await self._store.get_message(message_id)

    async def attempts(self, message_id: str) -> list[Attempt]:
        return await self._store.attempts(message_id)


def web_app(settings: Settings, outbox: KickingOutbox, store: Store, policy: Policy,
            admin: Admin | None = None) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        counts = await store.queue_counts()
        return JSONResponse({"status": "ready", "queue": {str(k): v for k, v in counts.items()}})

    routes = [Route("/healthz", healthz), Route("/readyz", readyz),
              metrics.metrics_route(store.queue_counts), *api_routes(settings, outbox, policy)]
    if admin is not None:
        routes.extend(admin_routes(admin))
    return Starlette(routes=routes)


class WebFront:
    """The HTTP listener's application: the current configuration's, swapped on reload, so
    the listener (and the admin page that asked for the reload) stays up meanwhile."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            await PlainTextResponse("relay365 is starting", status_code=503)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Reloads:
    """Requests to run on another configuration: SIGHUP (re-read the file) or the admin page
    (settings it has just written, waiting until they run)."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self._settings: Settings | None = None
        self._waiting: list[asyncio.Future[None]] = []

    def from_file(self) -> None:
        self.requested.set()

    async def apply(self, settings: Settings) -> None:
        self._settings = settings
        done = asyncio.get_running_loop().create_future()
        self._waiting.append(done)
        self.requested.set()
        await done

    def take(self, load: Callable[[], Settings] | None, current: Settings) -> Settings:
        self.requested.clear()
        given, self._settings = self._settings, None
        if given is not None:
            log.warning("configuration changed from the admin page")
            return given
        return _reloaded(load, current) if load is not None else current

    def done(self) -> None:
        waiting, self._waiting = self._waiting, []
        for future in waiting:
            if not future.done():
                future.set_result(None)

    def failed(self, error: Exception) -> None:
        """The requested configuration did not start: whoever waits for it hears why."""
        waiting, self._waiting = self._waiting, []
        for future in waiting:
            if not future.done():
                future.set_exception(error)


class _Running:
    """The parts one configuration runs: SMTP listeners, the HTTP listener, the delivery engine."""

    def __init__(self, settings: Settings, store: Store, site: AdminSite) -> None:
        from .alerts import AlertService  # Apprise loads with it: only a running relay needs it

        self.settings = settings
        # One delivery agent: the engine sends through it, the expiry watch and the keep-alive
        # use its credentials and Graph clients (one token cache per connection).
        self.outbound = Outbound(settings, store)
        self.engine = DeliveryEngine(settings, store, outbound=self.outbound,
                                     sign_in_hold=settings.delivery.sign_in_hold,
                                     on_needs_sign_in=self._needs_sign_in)
        self.policy = Policy(settings)
        self.outbox = KickingOutbox(store, self.engine)
        self.store = store
        # Alerts, the expiry watch and the daily keep-alive refresh run beside delivery.
        self.alerts = AlertService(settings, settings.alerts, store, enqueue=self.outbox.enqueue,
                                   outbound=self.outbound)
        self.alerts_task: asyncio.Task[None] | None = None
        self.admin = Admin(site=site, settings=settings, store=store, enqueue=self.outbox.enqueue,
                           engine=self.engine, alerts=self.alerts)
        self.smtp: list[asyncio.Server] = []

    async def _needs_sign_in(self, connection: str, error: NeedsSignIn) -> None:
        await self.alerts.alerter.needs_sign_in(connection, error)

    async def start(self, front: WebFront) -> None:
        await self.engine.start()
        self.alerts_task = asyncio.create_task(self.alerts.run())
        self.smtp = await start_smtp_listeners(self.settings, self.outbox, self.policy)
        front.app = web_app(self.settings, self.outbox, self.store, self.policy, self.admin)

    async def stop(self, grace: float) -> None:
        for server in self.smtp:
            server.close()
        await self.engine.stop(grace)
        if self.alerts_task is not None:
            self.alerts_task.cancel()
            await asyncio.gather(self.alerts_task, return_exceptions=True)
        await self.alerts.close()
        await self.outbound.aclose()


async def serve(settings: Settings, *, stop: asyncio.Event | None = None, grace: float = 30.0,
                on_ready: Callable[[dict[str, Any]], None] | None = None,
                reload: Callable[[], Settings] | None = None, config_file: Path | None = None) -> None:
    """Run the relay until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None).

    SIGHUP (when ``reload`` is given) re-reads the configuration and restarts the SMTP
    listeners and the engine on it, keeping the store and the HTTP listener: sessions
    already open finish on the old rules.  A configuration that does not validate keeps
    the running one.  With ``config_file`` the admin page may change the configuration
    (it writes the file, then the relay runs on it the same way).
    """
    stop = stop or _stop_on_signals()
    reloads = Reloads()
    if reload is None and config_file is not None:
        def reload() -> Settings:
            return load_settings(config_file)
    if reload is not None and threading.current_thread() is threading.main_thread():
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloads.from_file)
    box = SecretBox.from_environment(settings.key_file)
    store = await Store.open(settings.store_url, box)
    site = AdminSite(session_key=box.derive_key("admin session"), config_file=config_file,
                     apply=reloads.apply if config_file is not None else None)
    front = WebFront()
    http, http_task = await _start_http(settings, front)
    retention = asyncio.create_task(_prune_periodically(store, settings))
    try:
        fallback: Settings | None = None  # the configuration that ran last, if a new one fails
        while True:
            running: _Running | None = None
            try:
                running = _Running(settings, store, site)
                await running.start(front)
            except Exception as exc:  # e.g. a port taken or an alert URL Apprise refuses
                if running is not None:
                    await running.stop(grace)
                if fallback is None:
                    raise
                log.error("the new configuration did not start (%s: %s); running the previous one",
                          type(exc).__name__, exc)
                reloads.failed(exc)
                settings, fallback = fallback, None
                continue
            fallback = settings
            try:
                reloads.done()
                ready = _ready_info(settings, running.smtp, http)
                log.info("relay365 ready: %s", ready)
                if on_ready is not None:
                    on_ready(ready)
                    on_ready = None  # once: a reload is not a second start
                await _first_of(stop, reloads.requested)
            finally:
                log.info("stopping: no new mail accepted; deliveries in flight get %.0f s", grace)
                await running.stop(grace)
            if stop.is_set():
                break
            settings = reloads.take(reload, settings)
    finally:
        reloads.done()
        http.should_exit = True
        await http_task
        retention.cancel()
        await asyncio.gather(retention, return_exceptions=True)
        await store.close()


async def _start_http(settings: Settings, front: WebFront) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    relay = settings.relay
    config = uvicorn.Config(front, host=relay.http_host, port=relay.http_port, log_level="warning",
                            access_log=False, lifespan="off", server_header=False)
    http = uvicorn.Server(config)
    task = asyncio.create_task(http.serve())
    while not http.started:
        if task.done():
            task.result()
            raise RuntimeError("the HTTP listener did not start")
        await asyncio.sleep(0.01)
    return http, task


async def _first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _reloaded(load: Callable[[], Settings], current: Settings) -> Settings:
    try:
        new = load()
    except Exception as exc:  # a bad file must not take the relay down
        log.error("configuration not reloaded, keeping the running one: %s", exc)
        return current
    log.warning("configuration reloaded")
    return new


async def _prune_periodically(store: Store, settings: Settings, every: float = 3600.0) -> None:
    """Retention: drop sent messages' bodies, then old log rows, once an hour."""
    while True:
        now = dt.datetime.now(dt.UTC)
        delivery = settings.delivery
        try:
            bodies, rows = await store.prune(
                sent_bodies_before=now - dt.timedelta(days=delivery.keep_sent_bodies_days),
                log_before=now - dt.timedelta(days=delivery.keep_log_days))
            if bodies or rows:
                log.info("retention: %d sent bodies and %d old rows pruned", bodies, rows)
        except StoreError as exc:
            log.warning("retention skipped: %s", exc)
        await asyncio.sleep(every)


def _ready_info(settings: Settings, smtp_servers: list[asyncio.Server],
                http: uvicorn.Server) -> dict[str, Any]:
    smtp = [s.sockets[0].getsockname()[:2] for s in smtp_servers if s.sockets]
    http_sock = http.servers[0].sockets[0].getsockname()[:2] if http.servers else None
    host = f"[{http_sock[0]}]" if http_sock and ":" in http_sock[0] else (http_sock[0] if http_sock else "")
    return {
        "smtp_host": smtp[0][0] if smtp else None,
        "smtp_port": smtp[0][1] if smtp else None,
        "smtp": [{"host": h, "port": p} for h, p in smtp],
        "http_url": f"http://{host}:{http_sock[1]}" if http_sock else None,
        "store": settings.store_url.split("@")[-1],
    }


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
