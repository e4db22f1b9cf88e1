"""The HTTPS application: identity platform, Graph, upload sessions and /_sim control.

One ASGI middleware sits in front of every route: it records each request in the
request log and plays injected faults (status, hang, reset, latency) before the
request reaches Microsoft's emulated logic.  Control routes (/_sim) are never faulted
and answer only loopback clients.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._control import control_routes
from ._graph import graph_routes
from ._identity import identity_routes
from ._responses import graph_error_response, identity_error_response, json_response
from ._scenario import Fault
from ._state import RequestRecord, SimState
from ._upload import upload_routes

# Long enough for any client timeout; cancelled when the emulator stops.
_HANG_SECONDS = 600.0
_FAULT_KEYS = {503: "service_unavailable", 504: "gateway_timeout", 429: "too_many_requests",
               500: "internal_error"}


def is_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


class SimMiddleware:
    """Request log and fault injection for every emulated Microsoft endpoint."""

    def __init__(self, app: ASGIApp, state: SimState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/_sim"):
            if not is_loopback(scope):
                await json_response({"error": "the control API answers loopback clients only"},
                                    403)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        status: list[int] = [0]

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        fault = self.state.take_fault(scope["method"], path)
        try:
            if fault is not None and await self._play(fault, scope, receive, send_and_note):
                return
            await self.app(scope, receive, send_and_note)
        finally:
            st: dict[str, Any] = scope.get("state", {})
            self.state.log(RequestRecord(
                time=self.state.clock.now(), protocol="https", method=scope["method"], path=path,
                status=status[0] or "no response", client_id=st.get("client_id"),
                identity=st.get("identity"),
                detail=f"fault:{fault.kind}" if fault else st.get("detail"),
            ))

    async def _play(self, fault: Fault, scope: Scope, receive: Receive, send: Send) -> bool:
        """Play ``fault``; True when the request is answered (or dropped) by it."""
        if fault.kind == "latency":
            await asyncio.sleep(fault.latency)
            return False
        if fault.kind == "hang":
            await asyncio.sleep(_HANG_SECONDS)
            return True
        if fault.kind == "reset":
            _abort_connection(send)
            return True
        path: str = scope["path"]
        if path.startswith("/v1.0") or path.startswith("/api/"):
            response = graph_error_response(
                _FAULT_KEYS.get(fault.status, "service_unavailable"), None,
                retry_after=fault.retry_after,
                fractional_retry_after=self.state.scenario.limits.fractional_retry_after,
            )
            response.status_code = fault.status
        else:
            response = identity_error_response(9002313, None, self.state.clock.now_datetime())
            response.status_code = fault.status
            if fault.retry_after is not None:
                response.headers["Retry-After"] = str(int(fault.retry_after))
        await response(scope, receive, send)
        return True


def _abort_connection(send: Send) -> None:
    """Drop the TCP connection with no response, as a network reset does.

    ASGI has no "reset" message; uvicorn's ``send`` is a method of its per-request
    cycle object, which holds the transport.  Reaching it is the one way to emulate
    a reset over a real socket.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        # Wrapped send: find uvicorn's cycle through the closure of our wrapper.
        for cell in getattr(send, "__closure__", None) or ():
            inner = cell.cell_contents
            transport = getattr(getattr(inner, "__self__", None), "transport", None)
            if transport is not None:
                break
    if transport is None:
        raise ConnectionResetError("m365sim: injected reset")
    transport.abort()


def create_app(state: SimState) -> Starlette:
    # Graph first: sendMail is the hot path, matched before the other routes.
    routes: list[BaseRoute] = [
        *graph_routes(state),
        *upload_routes(state),
        *control_routes(state),
        *identity_routes(state),
    ]
    app = Starlette(routes=routes)
    app.state.sim = state
    return app


def asgi_app(state: SimState) -> ASGIApp:
    return SimMiddleware(create_app(state), state)
