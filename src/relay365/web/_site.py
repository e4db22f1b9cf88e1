"""The admin site: what outlives a configuration reload (``AdminSite``), the page over one
running configuration (``Admin``), and who may see it.

The session is Starlette's signed cookie (HttpOnly, SameSite=Lax); it holds only whether
the admin signed in, when, and the CSRF token: never a secret.  ``page`` guards a GET with
the login, ``action`` a POST with the login and the CSRF token.  A password change bumps the
session epoch, which signs every older session out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from .._failed_logins import FailedLogins
from ..config import Settings, update_config_file
from ..errors import ConfigError
from ._security import CSRF_FIELD, csrf_token, csrf_valid
from ._signin_state import SignIns

if TYPE_CHECKING:
    from ..alerts import AlertService
    from ..delivery import DeliveryEngine
    from ..store import NewMessage, Store


class AdminSite:
    """What the admin page keeps across reloads: templates, the session key, the login
    limit and sign-ins in progress.  ``apply`` is how a page changes the configuration."""

    def __init__(self, *, session_key: bytes, config_file: Path | None,
                 apply: Callable[[Settings], Awaitable[None]] | None = None) -> None:
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


Page = Callable[["Admin", Request], Awaitable[Response]]
Action = Callable[["Admin", Request, FormData], Awaitable[Response]]


def signed_in(admin: Admin, request: Request) -> bool:
    session = request.session
    started = session.get("signed_in_at")
    if not isinstance(started, (int, float)) or session.get("epoch") != admin.session_epoch:
        return False
    return time.time() - started < admin.settings.admin.session_hours * 3600


def start_session(admin: Admin, request: Request) -> None:
    request.session.clear()  # a new token after login: one seen before it is worth nothing
    request.session.update({"signed_in_at": time.time(), "epoch": admin.session_epoch,
                            CSRF_FIELD: secrets.token_urlsafe(32)})


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urllib.parse.urlencode({"next": target}), status_code=303)


def page(handler: Page) -> Callable[[Admin, Request], Awaitable[Response]]:
    """A GET page for a signed-in admin; others go to the login page."""

    async def guarded(admin: Admin, request: Request) -> Response:
        if not signed_in(admin, request):
            return _to_login(request)
        return await handler(admin, request)

    return guarded


def action(handler: Action) -> Callable[[Admin, Request], Awaitable[Response]]:
    """A state-changing POST: a signed-in admin and this session's CSRF token, or 403."""

    async def guarded(admin: Admin, request: Request) -> Response:
        form = await request.form()
        if not csrf_valid(request, form):
            return PlainTextResponse("403: this form is out of date or did not come from this page "
                                     "(missing or wrong CSRF token). Reload the page and try again.",
                                     status_code=403)
        if not signed_in(admin, request):
            return _to_login(request)
        return await handler(admin, request, form)

    return guarded
