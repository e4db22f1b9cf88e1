"""``Connection``: one app registration's tokens, over MSAL, with its token cache in the store.

One MSAL application per connection: confidential when the connection has a client secret
or a certificate, public otherwise (device code sign-in, "Allow public client flows").
MSAL is synchronous, so each call runs in a worker thread; everything it raises or
answers is translated into ``AuthError``s at that edge (``_errors``).

The token cache is MSAL's ``SerializableTokenCache``, read from the store on first use
and written back, encrypted by the store, whenever a call changed it: a rotated refresh
token is never lost.  Token requests are single-flight per resource: callers that saw
the same token refused (``stale``) share one refresh.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msal

from .. import metrics
from ..config import ConnectionSettings
from ..errors import AuthError, AuthUnavailable, ConfigError, NeedsSignIn, StoreError
from ..store import Store
from ._credentials import credential_kind, read_credential
from ._errors import error_from_result, first_line, translate_exceptions
from ._http import identity_session
from ._redact import install as _redact_msal_logs
from ._scopes import (
    SignInResult,
    granted,
    request_scopes,
    sign_in_result,
    token_account,
    token_claims,
    transport_resource,
)
from ._types import AccessToken, Resource

logger = logging.getLogger("relay365.auth")
_redact_msal_logs()

# MSAL treats an access token with less than five minutes left as expired; so do we.
_EXPIRY_MARGIN = dt.timedelta(minutes=5)
_ACCOUNT = msal.TokenCache.CredentialType.ACCOUNT
_ACCESS_TOKEN = msal.TokenCache.CredentialType.ACCESS_TOKEN


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class SignInFlow:
    """A browser sign-in in progress: the address to open, and what checks its answer.

    The PKCE verifier and nonce live in the MSAL flow, which never appears in ``repr``.
    """

    auth_uri: str
    redirect_uri: str
    state: str
    msal_flow: dict[str, Any] = field(repr=False)


class Connection:
    """Tokens for one configured connection (an app registration and its account).

    Implements ``TokenSource``.  Use one ``Connection`` per connection and event loop.
    """

    def __init__(self, settings: ConnectionSettings, store: Store) -> None:
        self.settings = settings
        self._store = store
        self._host = urllib.parse.urlsplit(settings.authority_host).netloc
        self._hostname = urllib.parse.urlsplit(settings.authority_host).hostname or ""
        self._cache = msal.SerializableTokenCache()
        self._cache_loaded = False
        self._cache_text: str | None = None  # what the store holds, as far as we know
        self._app: Any = None
        self._session: Any = None
        self._app_lock = asyncio.Lock()
        self._cache_lock = asyncio.Lock()
        self._locks: dict[Resource, asyncio.Lock] = {"graph": asyncio.Lock(), "smtp": asyncio.Lock()}
        self._current: dict[Resource, AccessToken] = {}

    def __repr__(self) -> str:
        return f"Connection({self.name!r}, {self.settings.mode})"

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def account(self) -> str | None:
        """The UPN of the account in the token cache (known once the cache is loaded), or None."""
        record = self._cached_account_record()
        return str(record["username"]).lower() if record and record.get("username") else None

    async def load(self) -> None:
        """Read the token cache from the store (every other call does it when needed)."""
        async with self._cache_lock:
            if not self._cache_loaded:
                self._cache_text = await self._store.load_token_cache(self.name)
                if self._cache_text:
                    self._cache.deserialize(self._cache_text)
                self._cache_loaded = True

    def close(self) -> None:
        """Close the HTTP session MSAL uses."""
        if self._session is not None:
            self._session.close()
            self._session = None
        self._app = None

    # ---- tokens ----------------------------------------------------------------------------

    async def acquire_token(self, resource: Resource = "graph", *, force_refresh: bool = False,
                            stale: str | None = None) -> AccessToken:
        """A valid token for ``resource`` (see ``TokenSource.acquire_token``).

        NeedsSignIn when only a sign-in can help (recorded in the connection's state),
        AuthUnavailable when the identity platform cannot be reached, AuthError otherwise.
        """
        async with self._locks[resource]:
            current = self._current.get(resource)
            if current is not None and current.expires_at - _EXPIRY_MARGIN > _now():
                if stale is not None and current.value != stale:
                    return current  # another caller already replaced the refused token
                if stale is None and not force_refresh:
                    return current
            return await self._acquire(resource, force=force_refresh or stale is not None)

    async def _acquire(self, resource: Resource, *, force: bool, retried: bool = False) -> AccessToken:
        app = await self._msal_app()
        scopes = request_scopes(self.settings, resource)
        detail: str | None = None  # Microsoft's words, for the connection's state
        try:
            if self.settings.mode == "app-only":
                if force:  # MSAL has no force_refresh for client credentials
                    self._forget_access_tokens(scopes)
                result = await self._call(app.acquire_token_for_client, scopes)
            else:
                record = self._msal_account(app)
                result = None
                if record is not None:
                    result = await self._call(app.acquire_token_silent_with_error, scopes, record,
                                              force_refresh=force)
                if result is None:
                    detail = "no sign-in is stored for this connection"
                    raise NeedsSignIn(f"connection {self.name!r} has no sign-in: nobody has signed in "
                                      "yet, or the sign-in was removed")
            if "error" in result:
                detail = first_line(str(result.get("error_description") or "")) or str(result["error"])
                raise self._error(result, "the token request")
        except NeedsSignIn as exc:
            # Someone may have signed in from another process (`relay365 login` beside a
            # running relay): its new cache is in the store.  Take it and try once more.
            if not retried and await self._reload_cache():
                return await self._acquire(resource, force=force, retried=True)
            await self._record_failure(exc, detail, needs_sign_in=True)
            metrics.token_refreshed(self.name, ok=False)
            raise
        except AuthUnavailable:
            raise
        except AuthError as exc:
            await self._record_failure(exc, detail, needs_sign_in=False)
            metrics.token_refreshed(self.name, ok=False)
            raise
        finally:
            await self._save_cache()
        token = self._access_token(result)
        self._current[resource] = token
        if result.get("token_source") == "identity_provider":
            metrics.token_refreshed(self.name, ok=True)
            logger.info("connection %s: new %s token from the identity platform", self.name, resource)
            await self._update_state(last_refresh_at=_now(), needs_sign_in=False, entry_id=None,
                                     detail=None)
        return token

    def _access_token(self, result: dict[str, Any]) -> AccessToken:
        value = str(result["access_token"])
        claims = token_claims(value)
        scopes = granted(claims)
        if not scopes and isinstance(result.get("scope"), str):  # an opaque token
            scopes = tuple(s.rsplit("/", 1)[-1] for s in str(result["scope"]).split())
        account = None if self.settings.mode == "app-only" else (token_account(claims) or self.account)
        return AccessToken(value=value,
                           expires_at=_now() + dt.timedelta(seconds=int(result.get("expires_in", 0))),
                           account=account, scopes=scopes)

    def _forget_access_tokens(self, scopes: list[str]) -> None:
        target = set(scopes)
        for item in list(self._cache.search(_ACCESS_TOKEN, query={"client_id": self.settings.client_id})):
            if set(str(item.get("target", "")).split()) == target:
                self._cache.remove_at(item)

    # ---- browser sign-in (authorization code with PKCE) ---------------------------------------

    async def start_sign_in(self, redirect_uri: str, *, response_mode: str = "form_post") -> SignInFlow:
        """Begin a browser sign-in that comes back to ``redirect_uri``.

        ``form_post`` (the default) makes the browser POST the answer to the redirect URI.
        ``query`` puts it in the address the browser lands on, for an administrator who
        copies that address from a browser on another machine (``finish_sign_in_from_url``);
        PKCE keeps the code useless to anyone who sees it.
        """
        self._require_delegated("a browser sign-in")
        app = await self._msal_app()
        scopes = request_scopes(self.settings, transport_resource(self.settings))
        kwargs: dict[str, Any] = {"redirect_uri": redirect_uri, "response_mode": response_mode}
        if self.settings.account:
            kwargs["login_hint"] = self.settings.account
        if response_mode == "form_post":
            flow = app.initiate_auth_code_flow(scopes, **kwargs)  # no HTTP: builds the address
        else:
            with warnings.catch_warnings():  # MSAL recommends form_post; see the docstring
                warnings.simplefilter("ignore", UserWarning)
                flow = app.initiate_auth_code_flow(scopes, **kwargs)
        return SignInFlow(auth_uri=str(flow["auth_uri"]), redirect_uri=redirect_uri,
                          state=str(flow["state"]), msal_flow=flow)

    async def finish_sign_in(self, flow: SignInFlow, params: dict[str, str]) -> SignInResult:
        """Complete a browser sign-in with what came back to the redirect URI.

        The answer must carry this sign-in's ``state``; MSAL checks the PKCE verifier and
        the nonce.  An error sent back by Microsoft becomes an ``AuthError`` with its
        diagnosis (``NeedsSignIn`` when signing in again is the fix).
        """
        if params.get("state") != flow.state:
            raise AuthError(f"the sign-in answer does not belong to this sign-in of connection "
                            f"{self.name!r} (its state differs): start the sign-in again",
                            code="state_mismatch")
        if params.get("error"):
            raise self._error(params, "the sign-in")
        if not params.get("code"):
            raise AuthError(f"the sign-in answer for connection {self.name!r} holds no code",
                            code="no_code")
        app = await self._msal_app()
        try:
            result = await self._call(app.acquire_token_by_auth_code_flow, dict(flow.msal_flow), dict(params))
        except RuntimeError as exc:  # MSAL: the id token's nonce is not this flow's
            raise AuthError(f"the sign-in answer for connection {self.name!r} failed MSAL's checks "
                            "(its nonce differs): start the sign-in again", code="nonce") from exc
        return await self._complete_sign_in(result, during="the sign-in")

    async def finish_sign_in_from_url(self, flow: SignInFlow, pasted_url: str) -> SignInResult:
        """Complete a browser sign-in from the address the browser landed on (pasted by a person)."""
        parts = urllib.parse.urlsplit(pasted_url.strip())
        params = dict(urllib.parse.parse_qsl(parts.query))
        params.update(urllib.parse.parse_qsl(parts.fragment))
        if not (params.get("code") or params.get("error")):
            raise AuthError(f"the pasted address holds no sign-in answer for connection {self.name!r} "
                            "(no code and no error): paste the whole address the browser shows "
                            "after the sign-in", code="no_code")
        return await self.finish_sign_in(flow, params)

    # ---- device code and app-only ------------------------------------------------------------

    async def sign_in_with_device_code(self, on_code: Callable[[str], None]) -> SignInResult:
        """Sign in on another device: ``on_code`` gets Microsoft's message (address and code).

        Needs a connection without a client secret or certificate whose app allows public
        client flows.  Returns when the person has signed in (or the code expired).
        """
        self._require_delegated("a device code sign-in")
        app = await self._msal_app()
        if not isinstance(app, msal.PublicClientApplication):
            raise ConfigError(
                f"connection {self.name!r} has a client secret or certificate, so it signs in with "
                "the browser; a device code sign-in needs a connection without one, on an app with "
                "Authentication → Allow public client flows")
        scopes = request_scopes(self.settings, transport_resource(self.settings))
        flow = await self._call(app.initiate_device_flow, scopes)
        if "user_code" not in flow:
            await self._save_cache()
            raise self._error(flow, "starting the device code sign-in")
        on_code(str(flow["message"]))
        try:
            result = await self._call(app.acquire_token_by_device_flow, flow)
        finally:
            flow["expires_at"] = 0  # stops MSAL's polling thread if we were cancelled
        return await self._complete_sign_in(result, during="the device code sign-in")

    async def verify_app_only(self) -> SignInResult:
        """Get an app-only token and report its tenant and application permissions (roles)."""
        if self.settings.mode != "app-only":
            raise ConfigError(f"connection {self.name!r} is delegated: it signs in with "
                              "`relay365 login`, not with client credentials")
        resource = transport_resource(self.settings)
        token = await self.acquire_token(resource, force_refresh=True)
        result = sign_in_result(self.settings, token_claims(token.value), resource, None)
        await self._update_state(account=None, scopes=result.scopes, signed_in_at=_now(),
                                 needs_sign_in=False, entry_id=None, detail=None)
        return result

    async def _complete_sign_in(self, result: dict[str, Any], *, during: str) -> SignInResult:
        if "error" in result:
            await self._save_cache()
            raise self._error(result, during)
        resource = transport_resource(self.settings)
        claims = token_claims(str(result["access_token"]))
        id_claims = result.get("id_token_claims") or {}
        account = token_account(claims) or token_account(id_claims)
        # MSAL names the cached account after the id token's preferred_username (or upn).
        self._keep_only_account(str(id_claims.get("preferred_username") or id_claims.get("upn") or ""))
        await self._save_cache()
        # Tokens held from a previous sign-in belong to it: start from this one's.
        self._current = {resource: self._access_token(result)}
        outcome = sign_in_result(self.settings, claims, resource, account)
        await self._update_state(account=account, scopes=outcome.scopes, signed_in_at=_now(),
                                 last_refresh_at=_now(), needs_sign_in=False, entry_id=None,
                                 detail=None)
        logger.info("connection %s: signed in as %s", self.name, account)
        for warning in outcome.warnings:
            logger.warning("connection %s: %s", self.name, warning)
        return outcome

    def _keep_only_account(self, username: str) -> None:
        """Forget every other account: the connection sends as the one that signed in last."""
        if self._app is None or not username:
            return
        for record in self._app.get_accounts():
            if str(record.get("username", "")).lower() != username.lower():
                self._app.remove_account(record)

    # ---- MSAL application, cache and state ---------------------------------------------------

    async def _msal_app(self) -> Any:
        await self.load()
        if self._app is None:
            async with self._app_lock:
                if self._app is None:
                    with translate_exceptions(self.name, self._host):
                        self._app = await asyncio.to_thread(self._build_app)
        return self._app

    def _build_app(self) -> Any:
        credential = read_credential(self.settings)
        if credential is None and self.settings.mode == "app-only":
            raise ConfigError(f"connection {self.name!r} is app-only and needs a client secret or "
                              "a certificate (client_secret, client_secret_env, client_secret_file, "
                              "or certificate_file + private_key_file)")
        session = identity_session(self.settings.ca_file)
        # instance_discovery=False: the authority is configured explicitly and each
        # connection has its own cache, so MSAL's instance discovery (a call to the
        # hard-coded login.microsoftonline.com, whatever the cloud) would only add a
        # request that fails on hosts Microsoft does not know (m365sim) or on networks
        # that only allow the tenant's own endpoints.
        common: dict[str, Any] = {"authority": self.settings.authority(), "token_cache": self._cache,
                                  "http_client": session, "instance_discovery": False}
        try:
            if credential is None:
                app = msal.PublicClientApplication(self.settings.client_id, **common)
            else:
                app = msal.ConfidentialClientApplication(self.settings.client_id,
                                                         client_credential=credential, **common)
        except BaseException:
            session.close()
            raise
        self._session = session
        return app

    def _error(self, answer: Mapping[str, Any], during: str) -> AuthError:
        """The error for an MSAL (or redirected) error answer."""
        return error_from_result(answer, connection=self.name, credential=credential_kind(self.settings),
                                 secret_expires=self.settings.secret_expires, during=during)

    def _require_delegated(self, what: str) -> None:
        if self.settings.mode != "delegated":
            raise ConfigError(f"connection {self.name!r} is app-only: it needs no sign-in, so "
                              f"{what} does not apply; check it with verify_app_only")

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one MSAL call in a worker thread, translating what it raises."""
        with translate_exceptions(self.name, self._host):
            return await asyncio.to_thread(fn, *args, **kwargs)

    def _cached_account_record(self) -> dict[str, Any] | None:
        return self._pick(list(self._cache.search(_ACCOUNT, query={"environment": self._hostname})))

    def _msal_account(self, app: Any) -> dict[str, Any] | None:
        return self._pick(list(app.get_accounts()))

    def _pick(self, records: list[dict[str, Any]]) -> dict[str, Any] | None:
        if not records:
            return None
        wanted = self.settings.account
        for record in records:
            if wanted and str(record.get("username", "")).lower() == wanted:
                return record
        return records[0]

    async def _reload_cache(self) -> bool:
        """Take the store's cache when it differs from ours; True when it did."""
        try:
            text = await self._store.load_token_cache(self.name)
        except StoreError as exc:
            logger.warning("connection %s: cannot re-read the token cache: %s", self.name, exc)
            return False
        if not text or text == self._cache_text:
            return False
        async with self._cache_lock:
            self._cache.deserialize(text)
            self._cache_text = text
        self._current.clear()
        return True

    async def _save_cache(self) -> None:
        async with self._cache_lock:
            if not self._cache.has_state_changed:
                return
            # Reset first: a change made by another thread while we write marks it again.
            self._cache.has_state_changed = False
            text = self._cache.serialize()
            try:
                await self._store.save_token_cache(self.name, text)
            except StoreError as exc:
                # The previous refresh token stays valid after a rotation, so sending goes
                # on; the save is tried again after the next change.
                self._cache.has_state_changed = True
                logger.warning("connection %s: the token cache was not saved: %s", self.name, exc)
                return
            self._cache_text = text

    async def _record_failure(self, error: AuthError, detail: str | None, *, needs_sign_in: bool) -> None:
        changes: dict[str, Any] = {"entry_id": error.entry.id, "detail": detail or error.message}
        if needs_sign_in:
            changes["needs_sign_in"] = True
        logger.warning("connection %s: %s", self.name, error)
        await self._update_state(**changes)

    async def _update_state(self, **changes: Any) -> None:
        try:
            await self._store.update_connection_state(self.name, **changes)
        except StoreError as exc:
            logger.warning("connection %s: the sign-in state was not recorded: %s", self.name, exc)
