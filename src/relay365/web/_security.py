"""Who may use the admin page: the password, the session, CSRF tokens and the login limit.

The session is Starlette's signed cookie (HttpOnly, SameSite=Lax); it holds only whether
the admin signed in, when, and the CSRF token: never a secret.  Every POST carries the
session's CSRF token in a form field; ``action`` refuses one without it before the handler
runs.  A password change bumps the session epoch, which signs every older session out.
"""

from __future__ import annotations

import hmac
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

if TYPE_CHECKING:
    from ._site import Admin

CSRF_FIELD = "csrf"
_hasher = PasswordHasher()

Page = Callable[["Admin", Request], Awaitable[Response]]
Action = Callable[["Admin", Request, FormData], Awaitable[Response]]


def password_matches(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use."""
    token = request.session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session[CSRF_FIELD] = token
    return token


def csrf_valid(request: Request, form: FormData) -> bool:
    expected = request.session.get(CSRF_FIELD)
    given = form.get(CSRF_FIELD)
    return isinstance(expected, str) and isinstance(given, str) and hmac.compare_digest(expected, given)


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
