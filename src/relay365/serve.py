"""``relay365 serve``: the SMTP listener(s), the HTTP listener and the delivery workers in
one process, sharing one store.

Accept, queue and deliver stay separate parts that share only the store (as in Postfix):
the ways in commit a message and kick the delivery engine; the engine claims what is
due.  SIGTERM and SIGINT stop accepting, let deliveries in flight finish (bounded by
``grace``) and leave the rest queued; SIGHUP re-reads the configuration.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .auth import SecretBox
from .config import Settings
from .delivery import DeliveryEngine
from .ingress import Policy, api_routes, start_smtp_listeners
from .store import Attempt, NewMessage, QueuedMessage, Store

log = logging.getLogger("relay365.serve")


class KickingOutbox:
    """The store as the ways in see it: every commit wakes the delivery engine."""

    def __init__(self, store: Store, engine: DeliveryEngine) -> None:
        self._store = store
        self._engine = engine

    async def enqueue(self, message: NewMessage) -> str:
        queue_id = await self._store.enqueue(message)
        self._engine.kick()
        return queue_id

    async def get_message(self, message_id: str) -> QueuedMessage | None:
        return await self._store.get_message(message_id)

    async def attempts(self, message_id: str) -> list[Attempt]:
        return await self._store.attempts(message_id)


def web_app(settings: Settings, outbox: KickingOutbox, store: Store, policy: Policy) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        counts = await store.queue_counts()
        return JSONResponse({"status": "ready", "queue": {str(k): v for k, v in counts.items()}})

    routes = [Route("/healthz", healthz), Route("/readyz", readyz),
              *api_routes(settings, outbox, policy)]
    return Starlette(routes=routes)


async def serve(settings: Settings, *, stop: asyncio.Event | None = None, grace: float = 30.0,
                on_ready: Callable[[dict[str, Any]], None] | None = None,
                reload: Callable[[], Settings] | None = None) -> None:
    """Run the relay until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None)."""
    stop = stop or _stop_on_signals(reload_hook=None)
    box = SecretBox.from_environment(settings.key_file)
    store = await Store.open(settings.store_url, box)
    engine = DeliveryEngine(settings, store, sign_in_hold=settings.delivery.sign_in_hold)
    policy = Policy(settings)
    outbox = KickingOutbox(store, engine)
    smtp_servers: list[asyncio.Server] = []
    http: uvicorn.Server | None = None
    http_task: asyncio.Task[None] | None = None
    try:
        await engine.start()
        smtp_servers = await start_smtp_listeners(settings, outbox, policy)
        config = uvicorn.Config(web_app(settings, outbox, store, policy), host=settings.relay.http_host,
                                port=settings.relay.http_port, log_level="warning", access_log=False,
                                lifespan="off", server_header=False)
        http = uvicorn.Server(config)
        http_task = asyncio.create_task(http.serve())
        while not http.started:
            if http_task.done():
                http_task.result()
                raise RuntimeError("the HTTP listener did not start")
            await asyncio.sleep(0.01)
        ready = _ready_info(settings, smtp_servers, http)
        log.info("relay365 ready: %s", ready)
        if on_ready is not None:
            on_ready(ready)
        if reload is not None:
            _on_sighup(lambda: _reload(reload, policy))
        await stop.wait()
        log.info("stopping: no new mail accepted; deliveries in flight get %.0f s", grace)
    finally:
        for server in smtp_servers:
            server.close()
        if http is not None:
            http.should_exit = True
        if http_task is not None:
            await http_task
        await engine.stop(grace)
        await store.close()


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


def _stop_on_signals(reload_hook: Callable[[], None] | None) -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _on_sighup(hook: Callable[[], None]) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hook)


def _reload(load: Callable[[], Settings], policy: Policy) -> None:
    """SIGHUP: re-read the configuration; a bad file keeps the running one."""
    try:
        load()
    except Exception as exc:  # the relay keeps running on its current configuration
        log.error("configuration not reloaded: %s", exc)
        return
    log.warning("configuration re-read; listeners and connections change at the next restart")
