"""Login and logout."""

from __future__ import annotations

import asyncio
import urllib.parse

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ._security import csrf_valid, password_matches
from ._site import Admin, action, signed_in, start_session


def _safe_next(target: str | None) -> str:
    """Only a path on this site: a login link must not send the admin elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urllib.parse.urlsplit(target)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def login_page(admin: Admin, request: Request) -> Response:
    if signed_in(admin, request):
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    return admin.render(request, "login.html", next=_safe_next(request.query_params.get("next")),
                        error=None, has_password=bool(admin.settings.admin.password_hash))


async def login(admin: Admin, request: Request) -> Response:
    form = await request.form()
    target = _safe_next(str(form.get("next") or "/"))
    has_password = bool(admin.settings.admin.password_hash)
    if not csrf_valid(request, form):
        return admin.render(request, "login.html", 403, next=target, has_password=has_password,
                            error="This login form is out of date: enter the password again.")
    client = request.client.host if request.client else "?"
    limit = admin.settings.admin
    wait = admin.site.limiter.retry_after(client, limit.login_attempts, limit.login_window)
    if wait is not None:
        response = admin.render(request, "login.html", 429, next=target, has_password=has_password,
                                error=f"Too many wrong passwords from {client}: try again in "
                                      f"{int(wait) + 1} seconds.")
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    password = str(form.get("password") or "")
    # argon2 takes tens of milliseconds of CPU: off the event loop.
    if await asyncio.to_thread(password_matches, limit.password_hash, password):
        admin.site.limiter.succeeded(client)
        start_session(admin, request)
        return RedirectResponse(target, status_code=303)
    admin.site.limiter.failed(client)
    return admin.render(request, "login.html", 401, next=target, has_password=has_password,
                        error="Wrong password." if has_password else
                        "No admin password is set: run `relay365 admin set-password` first.")


async def _logout(admin: Admin, request: Request, form: FormData) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


logout = action(_logout)

ROUTES = [
    ("/login", login_page, ["GET"]),
    ("/login", login, ["POST"]),
    ("/logout", logout, ["POST"]),
]
