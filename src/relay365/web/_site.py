"""The admin site: what outlives a configuration reload, and the routes over one configuration."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._limits import FailedLogins
from ..config import Settings, update_config_file
from ..errors import ConfigError
from ._security import CSRF_FIELD, csrf_token, signed_in

if TYPE_CHECKING:
    from ..alerts import AlertService
    from ..delivery import DeliveryEngine
    from ..store import NewMessage, Store
    from ._signin import SignIns

SESSION_COOKIE = "relay365_admin"
# Only our own scripts, styles and images; never framed; no referrer leaves the page.
_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                 b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class AdminSite:
    """What the admin page keeps across reloads: templates, the session key, the login
    limit and sign-ins in progress.  ``apply`` is how a page changes the configuration."""

    def __init__(self, *, session_key: bytes, config_file: Path | None,
                 apply: Callable[[Settings], Awaitable[None]] | None = None) -> None:
        from ._signin import SignIns

        self.session_key = session_key
        self.config_file = config_file
        self.apply = apply
        self.session_epoch = secrets.token_hex(8)  # a restart signs everyone out
        self.limiter = FailedLogins()
        self.sign_ins: SignIns = SignIns()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("relay365.web", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["when"] = _when

    @property
    def editable(self) -> bool:
        return self.config_file is not None and self.apply is not None

    async def change_settings(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Settings:
        """Change relay365.toml and run on the result; ConfigError when it does not validate."""
        if self.config_file is None or self.apply is None:
            raise ConfigError("relay365 was started without a configuration file, so the page "
                              "cannot change settings: start it with `relay365 serve --config FILE`")
        before = self.config_file.read_bytes() if self.config_file.exists() else None
        settings = update_config_file(self.config_file, change)
        try:
            await self.apply(settings)
        except Exception as exc:  # valid, yet it would not run (a port taken, say): undo
            if before is not None:
                self.config_file.write_bytes(before)
            raise ConfigError(f"relay365 could not run on these settings ({type(exc).__name__}: {exc}); "
                              "relay365.toml is unchanged and the previous settings still run") from exc
        return settings


@dataclass(frozen=True)
class Admin:
    """The admin page over one running configuration."""

    site: AdminSite
    settings: Settings
    store: Store
    enqueue: Callable[[NewMessage], Awaitable[str]]
    engine: DeliveryEngine | None = None
    alerts: AlertService | None = None

    @property
    def session_epoch(self) -> str:
        """What a session must carry to be valid: it changes when relay365 restarts or the
        admin password changes, and so signs every older session out."""
        password = self.settings.admin.password_hash or ""
        return hashlib.sha256(f"{self.site.session_epoch}:{password}".encode()).hexdigest()[:16]

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        flashes = request.session.pop("flash", []) if signed_in(self, request) else []
        html = self.site.templates.get_template(template).render(
            request=request, csrf=csrf_token(request), csrf_field=CSRF_FIELD, settings=self.settings,
            signed_in=signed_in(self, request), flashes=flashes, path=request.url.path,
            editable=self.site.editable, **context)
        return HTMLResponse(html, status_code=status_code)

    @staticmethod
    def flash(request: Request, text: str, kind: str = "ok") -> None:
        request.session.setdefault("flash", []).append({"text": text, "kind": kind})


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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
    from . import _alerts_page, _log, _pages, _setup, _signin, _status, _tools

    table: list[tuple[str, Callable[[Admin, Request], Awaitable[Response]], list[str]]] = [
        *_pages.ROUTES, *_status.ROUTES, *_setup.ROUTES, *_signin.ROUTES, *_log.ROUTES,
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
