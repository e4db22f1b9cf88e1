"""Sign in with Microsoft 365 from the page: the authorization-code flow (PKCE) with this
page's ``/auth/callback`` as the redirect URI, then a result page that always says what
happened: who signed in and with which permissions, or the diagnosis of what came back.

The callback needs no admin session: the browser may come back on another host name
(``localhost`` rather than ``127.0.0.1``), where the session cookie is not sent.  What
authorises it is the ``state`` of a sign-in an admin started here, unguessable and used
once; PKCE makes a stolen code useless.  The result is then shown on the host the admin
started from, behind the login.
"""

from __future__ import annotations

import urllib.parse

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..auth import Connection, SignInResult
from ..errors import Relay365Error
from ..setup import needed_permissions
from ._signin_state import Pending, SignInOutcome
from ._site import Admin, action, page

CALLBACK_PATH = "/auth/callback"


def callback_url(request: Request) -> str:
    """The App Callback URL for the host the admin uses: ``localhost`` for a loopback
    address (Entra accepts http only for localhost, on any port), the host itself otherwise."""
    base = request.base_url
    host = base.hostname or "localhost"
    if host in ("127.0.0.1", "::1", "localhost"):
        port = f":{base.port}" if base.port else ""
        return f"http://localhost{port}{CALLBACK_PATH}"
    return str(base).rstrip("/") + CALLBACK_PATH


def _origin(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _missing(admin: Admin, name: str, result: SignInResult) -> tuple[str, ...]:
    conn = admin.settings.connection(name)
    delegated, application = needed_permissions(conn)
    wanted = application if conn.mode == "app-only" else delegated
    have = {s.lower() for s in result.scopes}
    # offline_access is a request, not a permission the access token lists.
    return tuple(p for p in wanted if p.lower() not in have and p != "offline_access")


async def _signed_in(admin: Admin, name: str) -> None:
    """The connection has a token again: mail held for its sign-in goes now, not at the hold's end."""
    if admin.engine is None:
        return
    admin.engine.signed_in(name)
    await admin.store.release_connection(name)
    admin.engine.kick()


async def _start(admin: Admin, request: Request, form: FormData) -> Response:
    name = request.path_params["name"]
    try:
        conn_settings = admin.settings.connection(name)
    except Relay365Error as exc:
        return admin.render(request, "error.html", 404, title="No such connection", message=exc.message)
    connection = Connection(conn_settings, admin.store)
    if conn_settings.mode == "app-only":  # no browser: check that a token can be had
        try:
            result = await connection.verify_app_only()
            outcome = SignInOutcome(name, result, _missing(admin, name, result))
            await _signed_in(admin, name)
        except Relay365Error as exc:
            outcome = SignInOutcome(name, error=exc)
        finally:
            connection.close()
        return RedirectResponse(f"/setup/{name}/signed-in/{admin.site.sign_ins.record(outcome)}",
                                status_code=303)
    try:
        flow = await connection.start_sign_in(callback_url(request), response_mode="query")
    except Relay365Error as exc:
        connection.close()
        outcome = SignInOutcome(name, error=exc)
        return RedirectResponse(f"/setup/{name}/signed-in/{admin.site.sign_ins.record(outcome)}",
                                status_code=303)
    admin.site.sign_ins.started(Pending(connection, flow, _origin(request)))
    return RedirectResponse(flow.auth_uri, status_code=303)


async def callback(admin: Admin, request: Request) -> Response:
    params = dict(request.query_params)
    pending = admin.site.sign_ins.came_back(params.get("state", ""))
    if pending is None:
        return admin.render(
            request, "error.html", 400, title="This sign-in is not one in progress",
            message="The answer from Microsoft does not belong to a sign-in started on this page: it "
                    "took longer than 15 minutes, it was already used, or relay365 restarted "
                    "meanwhile. Start the sign-in again from Setup.")
    name = pending.connection.name
    try:
        result = await pending.connection.finish_sign_in(pending.flow, params)
        outcome = SignInOutcome(name, result, _missing(admin, name, result))
        await _signed_in(admin, name)
    except Relay365Error as exc:
        outcome = SignInOutcome(name, error=exc)
    finally:
        pending.connection.close()
    result_id = admin.site.sign_ins.record(outcome)
    return RedirectResponse(f"{pending.origin}/setup/{urllib.parse.quote(name)}/signed-in/{result_id}",
                            status_code=303)


async def result_page(admin: Admin, request: Request) -> Response:
    outcome = admin.site.sign_ins.result(request.path_params["result"])
    if outcome is None or outcome.connection != request.path_params["name"]:
        return admin.render(request, "error.html", 404, title="No such sign-in result",
                            message="Results are kept for the latest sign-ins only, until relay365 "
                                    "restarts. Sign in again from Setup.")
    return admin.render(request, "signed_in.html", 200 if outcome.error is None else 400, outcome=outcome)


ROUTES = [
    ("/setup/{name}/sign-in", action(_start), ["POST"]),
    (CALLBACK_PATH, callback, ["GET"]),
    ("/setup/{name}/signed-in/{result}", page(result_page), ["GET"]),
]
