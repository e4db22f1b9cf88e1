"""The pages a person sees: sign-in, consent, "Need admin approval", device login.

``/authorize`` validates the request the way Entra does: problems with the client or
its redirect URI are shown on Microsoft's own error page (never redirected, since the
redirect URI is not trusted), everything else goes back to the redirect URI as
``error``/``error_description``.  A valid request either returns a code at once (the
scenario's ``browser_user`` is signed in and has consented) or waits for the person at
the account picker, identified by an unguessable flow id.
"""

from __future__ import annotations

import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ._consent import (
    ScopeError,
    missing_consent,
    needs_admin,
    parse_scopes,
    record_consent,
)
from ._knowledge import delegated_permission, identity_error
from ._responses import aadsts_description
from ._scenario import App, User
from ._state import AuthCode, AuthorizeRequest, SimState

_templates = Environment(
    loader=PackageLoader("m365sim", "templates"),
    autoescape=select_autoescape(["html"]),
)
GENERIC_TENANTS = ("common", "organizations", "consumers")
_FLOW_LIFETIME = 3600.0


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(name).render(**context), status_code=status)


def error_page(state: SimState, key: int | str, **fmt: Any) -> HTMLResponse:
    """Microsoft's "Sorry, but we're having trouble signing you in." page."""
    e = identity_error(key)
    now = state.clock.now_datetime()
    return render("error.html", 400, code=e.code, message=e.message.format(**fmt),
                  request_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()),
                  timestamp=now.strftime("%Y-%m-%dT%H:%M:%S.000Z"))


def redirect_uri_matches(registered: tuple[str, ...], uri: str) -> bool:
    """Exact match, except that a loopback URI's port is ignored, on either side (RFC 8252
    §7.3; Entra treats http://localhost:5000/cb and http://localhost:8025/cb as one)."""
    if uri in registered:
        return True
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "http" or parsed.hostname not in ("localhost", "127.0.0.1"):
        return False
    for r in registered:
        p = urllib.parse.urlsplit(r)
        if p.scheme == "http" and p.hostname == parsed.hostname \
                and p.path.rstrip("/") == parsed.path.rstrip("/"):
            return True
    return False


def redirect_with(state: SimState, req: AuthorizeRequest, params: dict[str, str]) -> Response:
    if req.state is not None:
        params = {**params, "state": req.state}
    if req.response_mode == "form_post":
        return render("form_post.html", action=req.redirect_uri, fields=params)
    sep = "#" if req.response_mode == "fragment" else ("&" if "?" in req.redirect_uri else "?")
    return RedirectResponse(req.redirect_uri + sep + urllib.parse.urlencode(params), status_code=302)


def redirect_error(state: SimState, req: AuthorizeRequest, error: str, key: int | str,
                   **fmt: Any) -> Response:
    e = identity_error(key)
    description = aadsts_description(e.code, e.message.format(**fmt), str(uuid.uuid4()),
                                     str(uuid.uuid4()), state.clock.now_datetime())
    return redirect_with(state, req, {
        "error": error,
        "error_description": description,
        "error_uri": f"https://login.microsoftonline.com/error?code={e.code}",
    })


def issue_code(state: SimState, req: AuthorizeRequest, user: User) -> Response:
    code = state.new_opaque("1.AXEA-code.", 64)
    state.codes[code] = AuthCode(
        client_id=req.client_id, redirect_uri=req.redirect_uri, user_id=user.id,
        scopes=req.scopes, nonce=req.nonce, code_challenge=req.code_challenge,
        code_challenge_method=req.code_challenge_method,
        expires=state.clock.now() + state.scenario.limits.auth_code_lifetime,
    )
    params = {"code": code, "session_state": str(uuid.uuid4())}
    if req.client_info:
        from ._grants import client_info

        params["client_info"] = client_info(state, user)
    return redirect_with(state, req, params)


# ---- /authorize -------------------------------------------------------------------------------
async def authorize(request: Request) -> Response:
    state: SimState = request.app.state.sim
    params = dict(request.query_params)
    if request.method == "POST":
        params.update({k: str(v) for k, v in (await request.form()).items()})
    segment = request.path_params["tenant"]
    if segment.lower() not in GENERIC_TENANTS and not state.scenario.is_tenant(segment):
        return error_page(state, 90002, tenant=segment)
    client_id = params.get("client_id", "")
    if not client_id:
        return error_page(state, 900144, name="client_id")
    app = state.app(client_id)
    if app is None:
        return error_page(state, 700016, app_id=client_id, tenant=segment)
    request.state.client_id = app.client_id
    redirect_uri = params.get("redirect_uri") or (app.redirect_uris[0] if app.redirect_uris else "")
    if not redirect_uri_matches(app.redirect_uris, redirect_uri):
        return error_page(state, 50011, redirect_uri=redirect_uri, app_id=app.client_id)
    method = params.get("code_challenge_method") or "plain"
    req = AuthorizeRequest(
        tenant=segment, client_id=app.client_id, redirect_uri=redirect_uri,
        scopes=tuple(params.get("scope", "").split()), state=params.get("state"),
        nonce=params.get("nonce"), code_challenge=params.get("code_challenge"),
        code_challenge_method=method, response_mode=params.get("response_mode", "query"),
        client_info=params.get("client_info") == "1", login_hint=params.get("login_hint"),
        prompt=params.get("prompt"), created=state.clock.now(),
    )
    # From here on the redirect URI is trusted: errors go back to the application.
    if segment.lower() in GENERIC_TENANTS and not app.multi_tenant:
        return redirect_error(state, req, "invalid_request", 50194, app_id=app.client_id,
                              app_name=app.name)
    if params.get("response_type") != "code":
        return redirect_error(state, req, "unsupported_response_type", 900144,
                              name="response_type")
    if not req.scopes:
        return redirect_error(state, req, "invalid_request", 900144, name="scope")
    if method not in ("S256", "plain"):
        return redirect_error(state, req, "invalid_request", 900144,
                              name="code_challenge_method")
    try:
        parse_scopes(" ".join(req.scopes))
    except ScopeError as e:
        return redirect_error(state, req, "invalid_scope", e.code, scope=e.scope)
    browser = state.user(state.scenario.browser_user) if state.scenario.browser_user else None
    already_signed_in = browser is not None and req.prompt not in ("login", "select_account", "consent")
    if already_signed_in and browser is not None \
            and not missing_consent(state, app, browser, parse_scopes(" ".join(req.scopes))):
        return issue_code(state, req, browser)
    if req.prompt == "none":
        return redirect_error(state, req, "login_required" if browser is None else "consent_required",
                              65001, app_id=app.client_id, app_name=app.name)
    flow = state.new_opaque("", 24)
    state.authorize_requests[flow] = req
    return account_picker(state, flow, req, app)


def account_picker(state: SimState, flow: str, req: AuthorizeRequest, app: App) -> Response:
    return render("signin.html", flow=flow, tenant=req.tenant, app=app,
                  users=state.scenario.users, login_hint=req.login_hint or "",
                  tenant_name=state.scenario.tenant.name)


def _flow(state: SimState, request: Request) -> tuple[str, AuthorizeRequest, App] | Response:
    flow = request.path_params["flow"]
    req = state.authorize_requests.get(flow)
    if req is None or req.created + _FLOW_LIFETIME <= state.clock.now():
        return error_page(state, 9002313)
    app = state.app(req.client_id)
    if app is None:
        return error_page(state, 700016, app_id=req.client_id, tenant=req.tenant)
    return flow, req, app


async def picker(request: Request) -> Response:
    """The account picker again ("Have an admin account? Sign in with that account")."""
    state: SimState = request.app.state.sim
    found = _flow(state, request)
    if isinstance(found, Response):
        return found
    flow, req, app = found
    return account_picker(state, flow, req, app)


def _permission_rows(names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for n in names:
        meta = delegated_permission(n) or {}
        rows.append({"name": n, "description": meta.get("description", n),
                     "admin": meta.get("admin", False)})
    return rows


@dataclass
class _Posted:
    """A form posted on the sign-in pages: the pending request and the chosen account."""

    state: SimState
    flow: str
    req: AuthorizeRequest
    app: App
    user: User
    form: FormData


async def _posted(request: Request) -> _Posted | Response:
    """The pending request and chosen account, or the page to show instead."""
    state: SimState = request.app.state.sim
    found = _flow(state, request)
    if isinstance(found, Response):
        return found
    flow, req, app = found
    form = await request.form()
    user = state.user(str(form.get("user", "")))
    if user is None:
        return account_picker(state, flow, req, app)
    return _Posted(state, flow, req, app, user, form)


async def signin(request: Request) -> Response:
    """The person picked an account: consent, admin approval, or straight back."""
    posted = await _posted(request)
    if isinstance(posted, Response):
        return posted
    state, flow, req, app, user = posted.state, posted.flow, posted.req, posted.app, posted.user
    requested = parse_scopes(" ".join(req.scopes))
    missing = missing_consent(state, app, user, requested)
    if not missing and req.prompt != "consent":
        state.authorize_requests.pop(flow, None)
        return issue_code(state, req, user)
    if needs_admin(state, user, missing):
        page = identity_error(90094).page or ""
        return render("need_admin.html", flow=flow, tenant=req.tenant, app=app, user=user,
                      message=page.format(app_name=app.name),
                      permissions=_permission_rows(missing))
    return render("consent.html", flow=flow, tenant=req.tenant, app=app, user=user,
                  permissions=_permission_rows(missing or list(app.delegated_permissions)),
                  can_consent_for_org=user.admin)


async def consent(request: Request) -> Response:
    """Accept or Cancel on the consent page."""
    posted = await _posted(request)
    if isinstance(posted, Response):
        return posted
    state, req, app, user, form = posted.state, posted.req, posted.app, posted.user, posted.form
    state.authorize_requests.pop(posted.flow, None)
    if form.get("action") != "accept":
        return redirect_error(state, req, "access_denied", 65004)
    requested = parse_scopes(" ".join(req.scopes))
    missing = missing_consent(state, app, user, requested)
    if needs_admin(state, user, missing):  # a forged Accept from a non-admin
        return redirect_error(state, req, "access_denied", 90094)
    record_consent(state, app, user, missing, for_organization=user.admin and
                   form.get("consent_org") == "on")
    return issue_code(state, req, user)


async def decline(request: Request) -> Response:
    """ "Return to the application without granting consent". """
    state: SimState = request.app.state.sim
    found = _flow(state, request)
    if isinstance(found, Response):
        return found
    flow, req, _ = found
    state.authorize_requests.pop(flow, None)
    return redirect_error(state, req, "access_denied", 65004)


# ---- admin consent --------------------------------------------------------------------------
async def adminconsent(request: Request) -> Response:
    """/{tenant}/adminconsent: an admin grants the app's permissions for everyone."""
    state: SimState = request.app.state.sim
    segment = request.path_params["tenant"]
    params = dict(request.query_params)
    if request.method == "POST":
        params.update({k: str(v) for k, v in (await request.form()).items()})
    if segment.lower() not in GENERIC_TENANTS and not state.scenario.is_tenant(segment):
        return error_page(state, 90002, tenant=segment)
    app = state.app(params.get("client_id", ""))
    if app is None:
        return error_page(state, 700016, app_id=params.get("client_id", ""), tenant=segment)
    redirect_uri = params.get("redirect_uri") or (app.redirect_uris[0] if app.redirect_uris else "")
    if not redirect_uri_matches(app.redirect_uris, redirect_uri):
        return error_page(state, 50011, redirect_uri=redirect_uri, app_id=app.client_id)
    sep = "&" if "?" in redirect_uri else "?"
    extra = {"state": params["state"]} if "state" in params else {}
    if request.method == "GET":
        admins = [u for u in state.scenario.users if u.admin]
        return render("adminconsent.html", app=app, admins=admins, fields=params,
                      permissions=_permission_rows(list(app.delegated_permissions)),
                      application_permissions=list(app.application_permissions))
    user = state.user(params.get("user", ""))
    if params.get("action") != "accept" or user is None or not user.admin:
        query = {"error": "permission_denied", "error_description": "The admin canceled the request",
                 **extra}
        return RedirectResponse(redirect_uri + sep + urllib.parse.urlencode(query), 302)
    record_consent(state, app, user, [], for_organization=True)
    query = {"tenant": state.scenario.tenant.id, "admin_consent": "True", **extra}
    return RedirectResponse(redirect_uri + sep + urllib.parse.urlencode(query), 302)


# ---- device login -----------------------------------------------------------------------------
async def devicelogin(request: Request) -> Response:
    state: SimState = request.app.state.sim
    if request.method == "GET":
        return render("device.html", step="code", error=None)
    form = await request.form()
    user_code = str(form.get("code", "")).strip().upper()
    grant = next((g for g in state.device_codes.values()
                  if g.user_code == user_code and g.status == "pending"), None)
    if grant is None or grant.expires <= state.clock.now():
        return render("device.html", step="code", error=identity_error(70018).message, status=400)
    app = state.app(grant.client_id)
    if app is None:
        return render("device.html", step="code", error="The application is gone.", status=400)
    action = form.get("action")
    user = state.user(str(form.get("user", "")))
    if action is None or user is None:
        return render("device.html", step="confirm", app=app, code=user_code,
                      users=state.scenario.users, error=None)
    if action != "accept":
        grant.status, grant.user_id = "declined", user.id
        return render("device.html", step="done", app=app, declined=True)
    requested = parse_scopes(" ".join(grant.scopes))
    missing = missing_consent(state, app, user, requested)
    if needs_admin(state, user, missing):
        page = identity_error(90094).page or ""
        return render("device.html", step="confirm", app=app, code=user_code,
                      users=state.scenario.users, error=page.format(app_name=app.name),
                      status=403)
    if missing:
        record_consent(state, app, user, missing, for_organization=False)
    grant.status, grant.user_id = "approved", user.id
    return render("device.html", step="done", app=app, declined=False)


def signin_routes(state: SimState) -> list[BaseRoute]:
    base = "/{tenant}/oauth2/v2.0/authorize"
    return [
        Route(base, authorize, methods=["GET", "POST"]),
        Route(base + "/{flow}", picker, methods=["GET"]),
        Route(base + "/{flow}/signin", signin, methods=["POST"]),
        Route(base + "/{flow}/consent", consent, methods=["POST"]),
        Route(base + "/{flow}/decline", decline, methods=["GET"]),
        Route("/{tenant}/adminconsent", adminconsent, methods=["GET", "POST"]),
        Route("/{tenant}/v2.0/adminconsent", adminconsent, methods=["GET", "POST"]),
        Route("/devicelogin", devicelogin, methods=["GET", "POST"]),
    ]
