"""Identity platform: discovery, JWKS, the token endpoint and the device-code endpoint.

The token endpoint checks in Entra's order: tenant, grant type, client, client
credential, then the grant itself.  Every refusal is an AADSTS entry from
``data/identity_errors.toml`` rendered by ``_responses``.  The interactive pages
(authorize, consent, device login) are in ``_signin``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from . import _signin
from ._consent import Requested, ScopeError, app_roles, parse_scopes, token_permissions
from ._grants import (
    CLIENT_CERTIFICATE,
    CLIENT_SECRET,
    PUBLIC_CLIENT,
    client_info,
    issue_access_token,
    issue_id_token,
)
from ._knowledge import Resource, resources_by_name
from ._responses import IDENTITY_HEADERS, identity_error_response, json_response
from ._scenario import App, User
from ._state import DeviceGrant, RefreshGrant, SimState
from ._tokens import b64url, verify_client_assertion

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
GRANTS = ("authorization_code", "refresh_token", "client_credentials", DEVICE_CODE_GRANT, "password")
# Grants a public client (no secret) may use once "Allow public client flows" is on.
PUBLIC_GRANTS = ("authorization_code", "refresh_token", DEVICE_CODE_GRANT, "password")
GENERIC_TENANTS = ("common", "organizations", "consumers")


class Refused(Exception):
    """The token endpoint refuses with AADSTS ``key``; ``fmt`` fills its message."""

    def __init__(self, key: int | str, **fmt: Any) -> None:
        super().__init__(str(key))
        self.key = key
        self.fmt = fmt


def effective_mfa(state: SimState, user: User) -> bool:
    """Security defaults require MFA of every administrator."""
    return user.mfa or (state.scenario.tenant.security_defaults and user.admin)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


# ---- discovery ---------------------------------------------------------------------------
async def openid_configuration(request: Request) -> Response:
    state: SimState = request.app.state.sim
    segment = request.path_params["tenant"]
    base = base_url(request)
    if segment.lower() in GENERIC_TENANTS:
        issuer = f"{base}/{{tenantid}}/v2.0"
    elif state.scenario.is_tenant(segment):
        issuer = f"{base}/{state.scenario.tenant.id}/v2.0"
    else:
        return identity_error_response(90002, request, state.clock.now_datetime(), tenant=segment)
    # The endpoints keep the segment the client used; MSAL takes the token endpoint's
    # first path segment as the cache realm.
    root = f"{base}/{segment}"
    body = {
        "token_endpoint": f"{root}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                  "client_secret_basic"],
        "jwks_uri": f"{root}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": issuer,
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": f"{base}/oidc/userinfo",
        "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce",
                             "preferred_username", "name", "tid", "ver", "email"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }
    return json_response(body, 200, {"Cache-Control": "max-age=86400, private",
                                     "Access-Control-Allow-Origin": "*"})


async def jwks(request: Request) -> Response:
    state: SimState = request.app.state.sim
    return json_response(state.tokens.jwks(), 200, {"Cache-Control": "max-age=86400, private"})


# ---- token endpoint ------------------------------------------------------------------------
@dataclass
class TokenRequest:
    request: Request
    form: dict[str, str]
    tenant: str
    app: App
    appidacr: int

    def param(self, name: str) -> str:
        value = self.form.get(name)
        if not value:
            raise Refused(900144, name=name)
        return value


async def token(request: Request) -> Response:
    state: SimState = request.app.state.sim
    try:
        body = await _token(request, state)
    except Refused as r:
        return identity_error_response(r.key, request, state.clock.now_datetime(), **r.fmt)
    except ScopeError as e:
        return identity_error_response(e.code, request, state.clock.now_datetime(), scope=e.scope)
    headers = dict(IDENTITY_HEADERS)
    return json_response(body, 200, headers)


async def _token(request: Request, state: SimState) -> dict[str, Any]:
    segment = request.path_params["tenant"]
    if segment.lower() not in GENERIC_TENANTS and not state.scenario.is_tenant(segment):
        raise Refused(90002, tenant=segment)
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise Refused(900144, name="grant_type")
    form = {k: str(v) for k, v in (await request.form()).items()}
    grant_type = form.get("grant_type")
    if not grant_type:
        raise Refused(900144, name="grant_type")
    if grant_type not in GRANTS:
        raise Refused(70003, grant_type=grant_type)
    client_id, basic_secret = _basic_credentials(request)
    client_id = form.get("client_id") or client_id
    if not client_id:
        raise Refused(900144, name="client_id")
    app = state.app(client_id)
    if app is None:
        raise Refused(700016, app_id=client_id, tenant=segment)
    request.state.client_id = app.client_id
    if segment.lower() in GENERIC_TENANTS:
        if grant_type == "client_credentials":
            raise Refused(9001023 if segment.lower() != "organizations" else 50059)
        if not app.multi_tenant:
            raise Refused(50194, app_id=app.client_id, app_name=app.name)
    secret = form.get("client_secret") or basic_secret
    appidacr = _authenticate_client(state, request, app, grant_type, secret, form, segment)
    tr = TokenRequest(request, form, segment, app, appidacr)
    handler = {
        "authorization_code": _grant_authorization_code,
        "refresh_token": _grant_refresh_token,
        "client_credentials": _grant_client_credentials,
        DEVICE_CODE_GRANT: _grant_device_code,
        "password": _grant_password,
    }[grant_type]
    return handler(state, tr)


def _basic_credentials(request: Request) -> tuple[str | None, str | None]:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip()).decode()
    except ValueError:
        return None, None
    user, _, password = decoded.partition(":")
    return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)


def _authenticate_client(state: SimState, request: Request, app: App, grant_type: str,
                         secret: str | None, form: dict[str, str], segment: str) -> int:
    """Check the client's credential; return its ``appidacr`` or refuse."""
    assertion = form.get("client_assertion")
    if secret is None and assertion is None:
        if app.public_client and grant_type in PUBLIC_GRANTS:
            return PUBLIC_CLIENT
        raise Refused(7000218)
    if app.public_client and not app.secrets and not app.certificates:
        raise Refused(700025)
    now = state.clock.now()
    if assertion is not None:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise Refused(700021, value=form.get("client_assertion_type", ""))
        endpoint = f"{base_url(request)}/{segment}/oauth2/v2.0/token"
        endpoints = (endpoint, f"{base_url(request)}/{state.scenario.tenant.id}/oauth2/v2.0/token")
        problem = verify_client_assertion(assertion, state.app_certificates(app), app.client_id,
                                          endpoints, now)
        if problem == "time":
            raise Refused(700024)
        if problem == "cert_expired":
            raise Refused(7000274)
        if problem is not None:
            raise Refused(700027)
        return CLIENT_CERTIFICATE
    assert secret is not None
    for s in app.secrets:
        if hmac.compare_digest(s.value.encode(), secret.encode()):
            if s.end.timestamp() <= now:
                raise Refused(7000222, app_id=app.client_id)
            if s.start.timestamp() > now:
                raise Refused(7000215, app_id=app.client_id)
            return CLIENT_SECRET
    raise Refused(7000215, app_id=app.client_id)


def _token_body(state: SimState, tr: TokenRequest, *, user: User, requested: Requested,
                resource: Resource, permissions: list[str], nonce: str | None,
                family: str | None) -> dict[str, Any]:
    """The success body of a delegated grant (reference §2.3)."""
    access, expires_in = issue_access_token(state, app=tr.app, user=user, permissions=permissions,
                                            resource=resource, appidacr=tr.appidacr)
    scopes = [f"{resource.audience}/{p}" for p in permissions]
    scopes += sorted(requested.oidc)
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "scope": " ".join(scopes),
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": access,
    }
    if "offline_access" in requested.oidc:
        now = state.clock.now()
        rt = state.new_opaque("1.AXEA")
        state.refresh_tokens[rt] = RefreshGrant(
            client_id=tr.app.client_id, user_id=user.id, scopes=tuple(requested.all_scopes()),
            issued=now, last_used=now, family=family or rt,
        )
        body["refresh_token"] = rt
    if "openid" in requested.oidc:
        body["id_token"] = issue_id_token(state, app=tr.app, user=user, nonce=nonce,
                                          issuer_base=base_url(tr.request))
    if tr.form.get("client_info") == "1":
        body["client_info"] = client_info(state, user)
    tr.request.state.identity = user.upn
    return body


def _delegated(state: SimState, tr: TokenRequest, user: User, requested: Requested,
               nonce: str | None = None, family: str | None = None) -> dict[str, Any]:
    resource = requested.single_resource() or resources_by_name()["graph"]
    permissions = token_permissions(state, tr.app, user, resource, requested)
    if permissions is None:
        raise Refused(65001, app_id=tr.app.client_id, app_name=tr.app.name)
    return _token_body(state, tr, user=user, requested=requested, resource=resource,
                       permissions=permissions, nonce=nonce, family=family)


def _grant_authorization_code(state: SimState, tr: TokenRequest) -> dict[str, Any]:
    code = state.codes.get(tr.param("code"))
    if code is None or code.client_id.lower() != tr.app.client_id.lower():
        raise Refused(70000)
    if code.redeemed:
        raise Refused(54005)
    code.redeemed = True  # one attempt per code, successful or not
    if code.expires <= state.clock.now():
        raise Refused(70000)
    if tr.form.get("redirect_uri") != code.redirect_uri:
        raise Refused(50011, redirect_uri=tr.form.get("redirect_uri", ""), app_id=tr.app.client_id)
    if code.code_challenge is not None:
        verifier = tr.param("code_verifier")
        if not pkce_matches(verifier, code.code_challenge, code.code_challenge_method):
            raise Refused(501481)
    user = state.user(code.user_id)
    if user is None:
        raise Refused(70000)
    scope = tr.form.get("scope")
    requested = parse_scopes(scope) if scope else parse_scopes(" ".join(code.scopes))
    # The id_token and refresh token follow what the user consented to at authorize.
    requested = Requested(requested.permissions, requested.oidc | parse_scopes(" ".join(code.scopes)).oidc)
    return _delegated(state, tr, user, requested, nonce=code.nonce)


def pkce_matches(verifier: str, challenge: str, method: str) -> bool:
    if method.upper() == "S256":
        computed = b64url(hashlib.sha256(verifier.encode("ascii")).digest())
        return hmac.compare_digest(computed, challenge)
    return hmac.compare_digest(verifier, challenge)


def _grant_refresh_token(state: SimState, tr: TokenRequest) -> dict[str, Any]:
    rt = tr.param("refresh_token")
    grant = state.refresh_tokens.get(rt)
    if grant is None or grant.client_id.lower() != tr.app.client_id.lower():
        raise Refused(9002313)
    now = state.clock.now()
    inactivity = state.scenario.limits.refresh_token_inactivity
    if grant.last_used + inactivity <= now:
        raise Refused(70008, issued=_stamp(grant.issued), inactive=_span(now - grant.last_used))
    valid_from = state.tokens_valid_from.get(grant.user_id)
    revoked_user = state.user(grant.user_id)
    if revoked_user is not None and revoked_user.sessions_revoked:
        valid_from = max(valid_from or 0.0, grant.issued + 1)
    if valid_from is not None and grant.issued < valid_from:
        raise Refused(50173, issued=_stamp(grant.issued), valid_from=_stamp(valid_from))
    user = state.user(grant.user_id)
    if user is None:
        raise Refused(9002313)
    grant.last_used = now
    scope = tr.form.get("scope")
    original = parse_scopes(" ".join(grant.scopes))
    requested = parse_scopes(scope) if scope else original
    requested = Requested(requested.permissions, requested.oidc | {"offline_access"})
    return _delegated(state, tr, user, requested, family=grant.family)


def _grant_client_credentials(state: SimState, tr: TokenRequest) -> dict[str, Any]:
    scope = tr.param("scope")
    items = scope.split()
    if len(items) != 1 or not items[0].lower().endswith("/.default"):
        raise ScopeError(1002012, scope)
    requested = parse_scopes(scope)
    resource = requested.single_resource()
    if resource is None:
        raise ScopeError(70011, scope)
    roles = app_roles(tr.app, resource)
    access, expires_in = issue_access_token(state, app=tr.app, user=None, permissions=roles,
                                            resource=resource, appidacr=tr.appidacr)
    tr.request.state.identity = f"app:{tr.app.client_id}"
    return {"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in,
            "access_token": access}


def _grant_device_code(state: SimState, tr: TokenRequest) -> dict[str, Any]:
    # MSAL sends the code twice, as device_code and code; older Entra wanted `code`.
    code = tr.form.get("device_code") or tr.form.get("code")
    if not code:
        raise Refused(900144, name="device_code")
    grant = state.device_codes.get(code)
    if grant is None or grant.client_id.lower() != tr.app.client_id.lower():
        raise Refused(70018)
    if grant.status == "redeemed":
        raise Refused(70018)
    if grant.expires <= state.clock.now():
        raise Refused(70020)
    if grant.status == "declined":
        raise Refused(70017)
    if grant.status == "pending" or grant.user_id is None:
        raise Refused(70016)
    user = state.user(grant.user_id)
    if user is None:
        raise Refused(70018)
    grant.status = "redeemed"
    return _delegated(state, tr, user, parse_scopes(" ".join(grant.scopes)))


def _grant_password(state: SimState, tr: TokenRequest) -> dict[str, Any]:
    username, password = tr.param("username"), tr.param("password")
    user = state.user(username)
    if user is None or user.password is None or not hmac.compare_digest(
            user.password.encode(), password.encode()):
        raise Refused(50126)
    requested = parse_scopes(tr.form.get("scope", "openid profile offline_access"))
    resource = requested.single_resource() or resources_by_name()["graph"]
    if effective_mfa(state, user):
        raise Refused(50076, resource=resource.app_id)
    return _delegated(state, tr, user, requested)


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _span(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}.{hours:02d}:{minutes:02d}:{secs:02d}"


# ---- device code ------------------------------------------------------------------------------
async def devicecode(request: Request) -> Response:
    state: SimState = request.app.state.sim
    now_dt = state.clock.now_datetime()
    segment = request.path_params["tenant"]
    if segment.lower() not in GENERIC_TENANTS and not state.scenario.is_tenant(segment):
        return identity_error_response(90002, request, now_dt, tenant=segment)
    form = {k: str(v) for k, v in (await request.form()).items()}
    client_id = form.get("client_id")
    if not client_id:
        return identity_error_response(900144, request, now_dt, name="client_id")
    app = state.app(client_id)
    if app is None:
        return identity_error_response(700016, request, now_dt, app_id=client_id, tenant=segment)
    scope = form.get("scope", "")
    try:
        requested = parse_scopes(scope)
    except ScopeError as e:
        return identity_error_response(e.code, request, now_dt, scope=e.scope)
    lifetime = state.scenario.limits.device_code_lifetime
    device_code = state.new_opaque("DAQABAAEAAAD", 64)
    user_code = _user_code(state)
    state.device_codes[device_code] = DeviceGrant(
        client_id=app.client_id, user_code=user_code,
        scopes=tuple(requested.all_scopes()), expires=state.clock.now() + lifetime,
    )
    request.state.client_id = app.client_id
    uri = f"{base_url(request)}/devicelogin"
    return json_response({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": uri,
        "expires_in": lifetime,
        "interval": state.scenario.limits.device_code_interval,
        "message": f"To sign in, use a web browser to open the page {uri} and enter the code "
                   f"{user_code} to authenticate.",
    }, 200, dict(IDENTITY_HEADERS))


def _user_code(state: SimState) -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    taken = {g.user_code for g in state.device_codes.values()}
    while True:
        raw = state.new_opaque("", 16)
        code = "".join(alphabet[ord(c) % len(alphabet)] for c in raw[:9])
        if code not in taken:
            return code


def complete_device_code(state: SimState, user_code: str, user: str, *, approve: bool) -> None:
    """What the person does on the device login page: approve or decline a code."""
    for grant in state.device_codes.values():
        if grant.user_code.upper() == user_code.strip().upper() and grant.status == "pending":
            person = state.user(user)
            if person is None:
                raise KeyError(f"no user {user!r} in scenario {state.scenario.name!r}")
            grant.status = "approved" if approve else "declined"
            grant.user_id = person.id
            return
    raise KeyError(f"no pending device code {user_code!r}")


async def userrealm(request: Request) -> Response:
    """Home realm discovery, which MSAL's username/password flow asks first."""
    state: SimState = request.app.state.sim
    username = request.path_params["username"]
    domain = username.rpartition("@")[2]
    known = state.scenario.is_local_address(username)
    return json_response({
        "ver": "1.0",
        "account_type": "Managed" if known else "Unknown",
        "domain_name": domain,
        "cloud_instance_name": "microsoftonline.com",
        "cloud_audience_urn": "urn:federation:MicrosoftOnline",
    })


def identity_routes(state: SimState) -> list[BaseRoute]:
    return [
        Route("/common/userrealm/{username}", userrealm),
        Route("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration),
        Route("/{tenant}/discovery/v2.0/keys", jwks),
        Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
        Route("/{tenant}/oauth2/v2.0/devicecode", devicecode, methods=["POST"]),
        *_signin.signin_routes(state),
    ]
