"""The admin page's routes: every page module's ``ROUTES`` bound to one ``Admin``, behind
the session middleware and the security headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import _alerts_page, _log_page, _pages, _setup, _signin, _status, _tools
from ._site import Admin

SESSION_COOKIE = "relay365_admin"
# Only our own scripts, styles and images; never framed; no referrer leaves the page.
_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                 b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Adds the security headers to every admin response (the API keeps its own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _bind(admin: Admin, handler: Callable[[Admin, Request], Awaitable[Response]]) \
        -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handler(admin, request)

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint


def admin_routes(admin: Admin) -> list[BaseRoute]:
    """Every admin page, mounted at the root of the web listener (the API has /api/v1)."""
    table: list[tuple[str, Callable[[Admin, Request], Awaitable[Response]], list[str]]] = [
        *_pages.ROUTES, *_status.ROUTES, *_setup.ROUTES, *_signin.ROUTES, *_log_page.ROUTES,
        *_tools.ROUTES, *_alerts_page.ROUTES,
    ]
    routes: list[BaseRoute] = [Route(path, _bind(admin, handler), methods=methods)
                               for path, handler, methods in table]
    static = StaticFiles(packages=[("relay365.web", "static")])
    session = Middleware(SessionMiddleware, secret_key=admin.site.session_key.hex(),
                         session_cookie=SESSION_COOKIE, same_site="lax",
                         max_age=int(admin.settings.admin.session_hours * 3600), https_only=False)
    app = Starlette(routes=[*routes, Mount("/static", static, name="static")], middleware=[session])
    return [Mount("/", app=SecurityHeaders(app))]
