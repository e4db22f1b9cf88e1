"""relay365.auth against m365sim over HTTPS: sign-in flows, the token cache, refresh, failures."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cryptography.fernet import Fernet

from m365sim import Certificate, Simulator
from relay365.auth import Connection, SecretBox, SignInFlow, SignInResult, sign_in_with_browser
from relay365.auth._scopes import needed_scopes, request_scopes, sign_in_result, token_claims
from relay365.config import ConnectionSettings
from relay365.errors import AuthError, AuthUnavailable, ConfigError, NeedsSignIn
from relay365.store import Store

from ..m365sim.conftest import (
    SEED_APP_ONLY,
    SEED_APP_ONLY_SECRET,
    SEED_DELEGATED_APP,
    SEED_DELEGATED_SECRET,
    form_post_fields,
    https,
)
from ..m365sim.test_identity import _certificate

T = TypeVar("T")
ADMIN = "admin@contoso.com"
MEGAN = "megan@contoso.com"
INFO = "info@contoso.com"
TOKEN_PATH = "/oauth2/v2.0/token"


# ---- helpers ----------------------------------------------------------------------------------
def delegated(sim: Simulator, **changes: Any) -> ConnectionSettings:
    values: dict[str, Any] = {
        "name": "contoso", "tenant": sim.tenant_id, "client_id": SEED_DELEGATED_APP,
        "client_secret": SEED_DELEGATED_SECRET, "account": ADMIN, "senders": [ADMIN, INFO],
        "authority_host": sim.base_url, "graph_url": sim.graph_url, "ca_file": sim.ca_file,
    }
    values.update(changes)
    return ConnectionSettings(**{k: v for k, v in values.items() if v is not None})


def app_only(sim: Simulator, **changes: Any) -> ConnectionSettings:
    values: dict[str, Any] = {"name": "contoso-app", "mode": "app-only", "client_id": SEED_APP_ONLY,
                              "client_secret": SEED_APP_ONLY_SECRET, "account": None,
                              "senders": [INFO]}
    values.update(changes)
    return delegated(sim, **values)


def with_store(tmp_path: Path, body: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``body`` with a real SQLite store (tokens encrypted with a fresh key)."""
    async def main() -> T:
        store = await Store.open(f"sqlite:///{tmp_path / 'relay365.db'}", SecretBox(Fernet.generate_key()))
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def token_requests(sim: Simulator) -> int:
    return sum(1 for r in sim.requests() if r.path.endswith(TOKEN_PATH))


def browser_get(sim: Simulator, url: str) -> httpx.Response:
    """The seed's browser: its browser_user is signed in, so /authorize answers at once."""
    with https(sim) as browser:
        return browser.get(url)


async def browser_sign_in(sim: Simulator, conn: Connection,
                          redirect_uri: str = "http://localhost:8765") -> SignInResult:
    """Sign in with start/finish_sign_in, the browser played by httpx (form_post)."""
    flow = await conn.start_sign_in(redirect_uri)
    page = await asyncio.to_thread(browser_get, sim, flow.auth_uri)
    action, fields = form_post_fields(page.text)
    assert action == redirect_uri
    return await conn.finish_sign_in(flow, fields)


def stored_cache(text: str | None) -> dict[str, Any]:
    assert text is not None
    return dict(json.loads(text))


def refresh_tokens(text: str | None) -> set[str]:
    return {str(rt["secret"]) for rt in stored_cache(text).get("RefreshToken", {}).values()}


def play_browser(sim: Simulator, method: str, pages: list[str]) -> Callable[[str], None]:
    """An on_url that plays the browser in a thread: GET the sign-in page, send its answer back."""
    def on_url(auth_uri: str) -> None:
        def browse() -> None:
            page = browser_get(sim, auth_uri)
            action, fields = form_post_fields(page.text)
            with httpx.Client(timeout=30) as loopback:
                if method == "POST":
                    answer = loopback.post(action, data=fields)
                else:  # a response_mode=query browser
                    answer = loopback.get(action, params=fields)
            pages.append(answer.text)

        threading.Thread(target=browse, daemon=True).start()

    return on_url


# ---- browser sign-in --------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_browser_sign_in_through_the_loopback_port(m365sim: Simulator, tmp_path: Path, method: str) -> None:
    pages: list[str] = []
    urls: list[str] = []

    async def body(store: Store) -> None:
        conn = Connection(delegated(m365sim), store)
        browser = play_browser(m365sim, method, pages)

        def on_url(url: str) -> None:
            urls.append(url)
            browser(url)

        result = await sign_in_with_browser(conn, on_url=on_url, open_browser=False, timeout=60)
        assert result.account == ADMIN
        assert {"Mail.Send", "Mail.Send.Shared", "Mail.ReadWrite"} <= set(result.scopes)
        assert result.tenant_id == m365sim.tenant_id
        assert result.warnings == ()
        assert conn.account == ADMIN
        state = await store.connection_state("contoso")
        assert (state.account, state.needs_sign_in) == (ADMIN, False)
        assert "Mail.Send.Shared" in state.scopes
        assert state.signed_in_at is not None
        token = await conn.acquire_token()
        assert token.account == ADMIN and "Mail.Send" in token.scopes

    with_store(tmp_path, body)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(urls[0]).query))
    assert query["response_mode"] == "form_post"
    assert query["code_challenge_method"] == "S256"
    assert query["login_hint"] == ADMIN
    assert re.match(r"http://localhost:\d+$", query["redirect_uri"])
    assert "prompt" not in query
    assert set(query["scope"].split()) >= {"https://graph.microsoft.com/Mail.Send",
                                           "https://graph.microsoft.com/Mail.Send.Shared",
                                           "https://graph.microsoft.com/Mail.ReadWrite", "offline_access"}
    assert "Signed in" in pages[0] and ADMIN in pages[0]


@pytest.mark.m365sim("single-tenant")
def test_single_tenant_app_signs_in_through_the_tenant_authority(m365sim: Simulator, tmp_path: Path) -> None:
    async def body(store: Store) -> SignInResult:
        return await browser_sign_in(m365sim, Connection(delegated(m365sim), store))

    assert with_store(tmp_path, body).account == ADMIN


@pytest.mark.m365sim("single-tenant")
def test_sign_in_error_reaches_the_browser_and_the_caller_with_its_diagnosis(
        m365sim: Simulator, tmp_path: Path) -> None:
    pages: list[str] = []

    async def body(store: Store) -> None:
        conn = Connection(delegated(m365sim, tenant="common"), store)  # the seed plugin's mistake
        with pytest.raises(AuthError) as caught:
            await sign_in_with_browser(conn, on_url=play_browser(m365sim, "POST", pages),
                                       open_browser=False, timeout=60)
        assert caught.value.entry.id == "AAD-SINGLE-TENANT-COMMON"
        assert caught.value.code == "AADSTS50194"
        assert not isinstance(caught.value, NeedsSignIn)

    with_store(tmp_path, body)
    assert "Sign-in failed" in pages[0]
    assert "AAD-SINGLE-TENANT-COMMON" in pages[0]
    assert "Fix:" in pages[0] and "Supported account types" in pages[0]


def test_wrong_account_in_the_browser_is_warned_about_and_replaced(m365sim: Simulator,
                                                                   tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        conn = Connection(delegated(m365sim, account=MEGAN, senders=[MEGAN]), store)
        wrong = await browser_sign_in(m365sim, conn)  # the browser is signed in as the admin
        assert wrong.account == ADMIN
        assert any(f"signed in as {ADMIN}" in w and f"expects {MEGAN}" in w for w in wrong.warnings)
        assert (await store.connection_state("contoso")).account == ADMIN

        m365sim.edit_scenario(lambda s: dataclasses.replace(s, browser_user=MEGAN))  # another profile
        right = await browser_sign_in(m365sim, conn)
        assert (right.account, right.warnings) == (MEGAN, ())
        assert conn.account == MEGAN
        accounts = stored_cache(await store.load_token_cache("contoso"))["Account"].values()
        assert [a["username"] for a in accounts] == [MEGAN]  # the admin's sign-in is forgotten
        assert (await conn.acquire_token(force_refresh=True)).account == MEGAN

    with_store(tmp_path, body)


def test_missing_permissions_and_another_tenant_are_warned_about() -> None:
    base: dict[str, Any] = {"name": "c", "tenant": "6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b",
                            "client_id": SEED_DELEGATED_APP}
    shared = ConnectionSettings(**base, account=ADMIN, senders=[ADMIN, INFO])
    claims = {"scp": "Mail.Send User.Read", "tid": "00000000-0000-0000-0000-000000000001"}
    warnings = sign_in_result(shared, claims, "graph", ADMIN).warnings
    assert any("Mail.Send.Shared" in w and INFO in w for w in warnings)
    assert any("Mail.ReadWrite" in w and "large_messages" in w for w in warnings)
    assert any("tenant 00000000-0000-0000-0000-000000000001" in w for w in warnings)
    own = ConnectionSettings(**base, senders=[ADMIN], large_messages=False)
    assert sign_in_result(own, {"scp": "Mail.Send", "tid": base["tenant"]}, "graph", ADMIN).warnings == ()
    smtp = ConnectionSettings(**base, account=ADMIN, senders=[ADMIN], transport="smtp-xoauth2")
    assert any("SMTP.Send" in w for w in sign_in_result(smtp, {"scp": "Mail.Send"}, "smtp", ADMIN).warnings)
    app = ConnectionSettings(**base, mode="app-only", senders=[INFO], large_messages=False)
    assert any("application permission Mail.Send" in w
               for w in sign_in_result(app, {"roles": ["User.Read.All"]}, "graph", None).warnings)


def test_sign_in_from_a_pasted_address_and_a_tampered_state(m365sim: Simulator, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        conn = Connection(delegated(m365sim), store)
        flow = await conn.start_sign_in("http://localhost:8765", response_mode="query")
        landed = await asyncio.to_thread(browser_get, m365sim, flow.auth_uri)
        assert landed.status_code == 302
        address = landed.headers["location"]
        result = await conn.finish_sign_in_from_url(flow, f"  {address}\n")
        assert result.account == ADMIN

        other: SignInFlow = await conn.start_sign_in("http://localhost:8765", response_mode="query")
        address = (await asyncio.to_thread(browser_get, m365sim, other.auth_uri)).headers["location"]
        tampered = re.sub(r"state=[^&]+", "state=forged", address)
        with pytest.raises(AuthError) as caught:
            await conn.finish_sign_in_from_url(other, tampered)
        assert caught.value.code == "state_mismatch"
        with pytest.raises(AuthError, match="holds no sign-in answer"):
            await conn.finish_sign_in_from_url(other, "http://localhost:8765/")
        declined = {"error": "access_denied", "state": other.state,
                    "error_description": "AADSTS65004: User declined to consent to access the app."}
        with pytest.raises(AuthError) as refused:
            await conn.finish_sign_in(other, declined)
        assert (refused.value.entry.id, refused.value.code) == ("AAD-CONSENT-DECLINED", "AADSTS65004")

    with_store(tmp_path, body)


def test_browser_sign_in_times_out_and_needs_a_loopback_redirect_uri(m365sim: Simulator,
                                                                      tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        conn = Connection(delegated(m365sim), store)
        with pytest.raises(AuthError) as caught:
            await sign_in_with_browser(conn, on_url=lambda url: None, open_browser=False, timeout=0.5)
        assert caught.value.code == "timeout"
        web = Connection(delegated(m365sim, redirect_uri="https://relay.example/callback"), store)
        with pytest.raises(ConfigError, match="not a loopback address"):
            await sign_in_with_browser(web, on_url=lambda url: None, open_browser=False)

    with_store(tmp_path, body)


# ---- token cache -------------------------------------------------------------------------------
def test_token_cache_is_stored_encrypted_and_reloaded_without_a_new_sign_in(
        m365sim: Simulator, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        first = Connection(delegated(m365sim), store)
        await browser_sign_in(m365sim, first)
        token = await first.acquire_token()
        first.close()
        text = await store.load_token_cache("contoso")
        rts = refresh_tokens(text)
        assert rts
        raw = (tmp_path / "relay365.db").read_bytes()
        for secret in (*rts, token.value, ADMIN):
            assert secret.encode() not in raw  # encrypted at rest

        before = token_requests(m365sim)
        again = Connection(delegated(m365sim), store)  # a restart: no new sign-in
        await again.load()
        assert again.account == ADMIN
        reloaded = await again.acquire_token()
        assert reloaded.value == token.value  # from the stored cache, without a request
        assert token_requests(m365sim) == before
        smtp = await again.acquire_token("smtp")  # the same sign-in, another resource
        assert token_claims(smtp.value)["aud"].startswith("https://outlook.office")
        assert "SMTP.Send" in smtp.scopes

    with_store(tmp_path, body)


def test_a_sign_in_made_elsewhere_is_picked_up_from_the_store(m365sim: Simulator, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        relay = Connection(delegated(m365sim), store)
        with pytest.raises(NeedsSignIn) as caught:
            await relay.acquire_token()
        assert caught.value.entry.id == "R365-NEEDS-SIGN-IN"
        assert (await store.connection_state("contoso")).needs_sign_in
        await browser_sign_in(m365sim, Connection(delegated(m365sim), store))  # `relay365 login`
        assert (await relay.acquire_token()).account == ADMIN
        assert not (await store.connection_state("contoso")).needs_sign_in

    with_store(tmp_path, body)


# ---- refresh ------------------------------------------------------------------------------------
def test_concurrent_401s_cause_one_refresh_and_the_rotated_token_is_stored(
        m365sim: Simulator, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        conn = Connection(delegated(m365sim), store)
        await browser_sign_in(m365sim, conn)
        old = await conn.acquire_token()
        rts_before = refresh_tokens(await store.load_token_cache("contoso"))
        m365sim.advance(6000)  # Graph now answers 401 to the old token; MSAL's clock did not move
        with https(m365sim) as graph:
            assert graph.get(f"{m365sim.graph_url}/me", headers={
                "Authorization": f"Bearer {old.value}"}).status_code == 401
        before = token_requests(m365sim)
        tokens = await asyncio.gather(*(conn.acquire_token(force_refresh=True, stale=old.value)
                                        for _ in range(20)))
        assert token_requests(m365sim) - before == 1
        assert len({t.value for t in tokens}) == 1 and tokens[0].value != old.value
        rts_after = refresh_tokens(await store.load_token_cache("contoso"))
        assert rts_after and rts_after.isdisjoint(rts_before)  # the rotated refresh token is kept
        state = await store.connection_state("contoso")
        assert state.last_refresh_at is not None
        with https(m365sim) as graph:
            assert graph.get(f"{m365sim.graph_url}/me", headers={
                "Authorization": f"Bearer {tokens[0].value}"}).status_code == 200
        # One stale token later still costs nothing: its replacement is returned.
        assert (await conn.acquire_token(stale=old.value)).value == tokens[0].value
        assert token_requests(m365sim) - before == 1

    with_store(tmp_path, body)


@pytest.mark.m365sim("refresh-revoked")
def test_revoked_refresh_token_needs_sign_in(m365sim: Simulator, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        conn = Connection(delegated(m365sim), store)
        await browser_sign_in(m365sim, conn)
        m365sim.advance(6000)
        with pytest.raises(NeedsSignIn) as caught:
            await conn.acquire_token(force_refresh=True)
        assert (caught.value.entry.id, caught.value.code) == ("AAD-REFRESH-REVOKED", "AADSTS50173")
        assert "needs to sign in again" in caught.value.message
        state = await store.connection_state("contoso")
        assert state.needs_sign_in
        assert state.entry_id == "AAD-REFRESH-REVOKED"
        assert state.detail is not None and state.detail.startswith("AADSTS50173: The provided grant")

    with_store(tmp_path, body)


# ---- device code --------------------------------------------------------------------------------
def test_device_code_sign_in(m365sim: Simulator, tmp_path: Path) -> None:
    m365sim.edit_scenario(lambda s: dataclasses.replace(
        s, limits=dataclasses.replace(s.limits, device_code_interval=1)))
    messages: list[str] = []

    def on_code(message: str) -> None:
        messages.append(message)
        code = re.search(r"enter the code (\S+)", message)
        assert code is not None, message
        m365sim.approve_device_code(code.group(1), MEGAN)  # what the person does on the page

    async def body(store: Store) -> None:
        # No secret: a public client ("Allow public client flows").
        settings = delegated(m365sim, client_secret=None, account=MEGAN, senders=[MEGAN])
        conn = Connection(settings, store)
        result = await asyncio.wait_for(conn.sign_in_with_device_code(on_code), 60)
        assert result.account == MEGAN
        assert result.warnings == ()
        assert "Mail.Send" in result.scopes
        assert (await store.connection_state("contoso")).account == MEGAN
        m365sim.advance(6000)
        refreshed = await conn.acquire_token(force_refresh=True)  # public client: no secret
        assert refreshed.account == MEGAN

        confidential = Connection(delegated(m365sim, name="other"), store)
        with pytest.raises(ConfigError, match="Allow public client flows"):
            await confidential.sign_in_with_device_code(on_code)

    with_store(tmp_path, body)
    assert f"{m365sim.base_url}/devicelogin" in messages[0]


# ---- app-only -----------------------------------------------------------------------------------
def test_app_only_with_a_secret(m365sim: Simulator, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        conn = Connection(app_only(m365sim), store)
        result = await conn.verify_app_only()
        assert result.account is None
        assert {"Mail.Send", "Mail.ReadWrite"} <= set(result.scopes)
        assert result.tenant_id == m365sim.tenant_id
        assert result.warnings == ()
        token = await conn.acquire_token()
        assert token.account is None and "Mail.Send" in token.scopes
        before = token_requests(m365sim)
        assert (await conn.acquire_token()).value == token.value
        forced = await conn.acquire_token(stale=token.value)  # MSAL has no force_refresh here
        assert forced.value != token.value
        assert token_requests(m365sim) - before == 1
        smtp = await conn.acquire_token("smtp")
        assert "SMTP.SendAsApp" in smtp.scopes
        state = await store.connection_state("contoso-app")
        assert "Mail.Send" in state.scopes and not state.needs_sign_in

    with_store(tmp_path, body)


def test_app_only_secret_from_a_file_or_a_variable(m365sim: Simulator, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "app.secret").write_text(SEED_APP_ONLY_SECRET + "\n")
    monkeypatch.setenv("CONTOSO_SECRET", SEED_APP_ONLY_SECRET)

    async def body(store: Store) -> None:
        from_file = app_only(m365sim, client_secret=None, client_secret_file=tmp_path / "app.secret")
        assert "Mail.Send" in (await Connection(from_file, store).verify_app_only()).scopes
        from_env = app_only(m365sim, name="env", client_secret=None, client_secret_env="CONTOSO_SECRET")
        assert "Mail.Send" in (await Connection(from_env, store).verify_app_only()).scopes
        unset = app_only(m365sim, name="unset", client_secret=None, client_secret_env="NOT_SET_HERE")
        with pytest.raises(ConfigError, match="NOT_SET_HERE"):
            await Connection(unset, store).acquire_token()

    with_store(tmp_path, body)


def test_app_only_with_a_certificate(m365sim: Simulator, tmp_path: Path) -> None:
    cert_pem, key_pem = _certificate()
    m365sim.edit_scenario(lambda s: s.replace_app(dataclasses.replace(  # type: ignore[arg-type,type-var]
        s.app(SEED_APP_ONLY), certificates=(Certificate(pem=cert_pem),))))
    (tmp_path / "app.crt").write_text(cert_pem)
    (tmp_path / "app.key").write_text(key_pem)

    async def body(store: Store) -> None:
        settings = app_only(m365sim, client_secret=None, certificate_file=tmp_path / "app.crt",
                            private_key_file=tmp_path / "app.key")
        conn = Connection(settings, store)
        assert "Mail.Send" in (await conn.verify_app_only()).scopes
        token = await conn.acquire_token()
        assert token_claims(token.value)["appidacr"] == "2"  # a certificate, not a secret

        (tmp_path / "bad.key").write_text("not a key")
        broken = Connection(settings.model_copy(update={"private_key_file": tmp_path / "bad.key"}), store)
        with pytest.raises(ConfigError, match="private_key_file"):
            await broken.acquire_token()

    with_store(tmp_path, body)


def test_requests_ca_bundle_in_the_environment_does_not_override_ca_file(
        m365sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")

    async def body(store: Store) -> None:
        assert "Mail.Send" in (await Connection(app_only(m365sim), store).verify_app_only()).scopes
        untrusted = Connection(app_only(m365sim, name="untrusted", ca_file=None), store)
        with pytest.raises(AuthError) as caught:
            await untrusted.acquire_token()
        assert caught.value.code == "TLS" and "ca_file" in caught.value.message

    with_store(tmp_path, body)


# ---- failures -----------------------------------------------------------------------------------
@pytest.mark.m365sim("secret-expired")
def test_expired_secret_names_the_secret(m365sim: Simulator, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        settings = app_only(m365sim, secret_expires=dt.date(2026, 6, 1))
        with pytest.raises(AuthError) as caught:
            await Connection(settings, store).acquire_token()
        error = caught.value
        assert not isinstance(error, NeedsSignIn | AuthUnavailable)
        assert (error.entry.id, error.code) == ("AAD-SECRET-EXPIRED", "AADSTS7000222")
        assert "the client secret of connection 'contoso-app' expired on 2026-06-01" in error.message
        assert "New client secret" in error.fix
        state = await store.connection_state("contoso-app")
        assert state.entry_id == "AAD-SECRET-EXPIRED" and not state.needs_sign_in

    with_store(tmp_path, body)


def test_identity_platform_down_is_auth_unavailable(m365sim: Simulator, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        conn = Connection(app_only(m365sim), store)
        m365sim.fault(f"/{m365sim.tenant_id}{TOKEN_PATH}", status=503, count=1)
        with pytest.raises(AuthUnavailable) as caught:
            await conn.acquire_token()
        assert caught.value.code == "HTTP 503"
        assert not (await store.connection_state("contoso-app")).needs_sign_in

        nowhere = Connection(app_only(m365sim, name="nowhere", authority_host="https://127.0.0.1:9"), store)
        with pytest.raises(AuthUnavailable, match="could not be reached"):
            await nowhere.acquire_token()

    with_store(tmp_path, body)


def test_secrets_and_tokens_never_reach_logs_or_errors(m365sim: Simulator, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = [SEED_DELEGATED_SECRET, SEED_APP_ONLY_SECRET, "wrong~Secret-value-0123456789"]
    errors: list[AuthError] = []

    async def body(store: Store) -> None:
        conn = Connection(delegated(m365sim), store)
        flow = await conn.start_sign_in("http://localhost:8765")
        fields = form_post_fields((await asyncio.to_thread(browser_get, m365sim, flow.auth_uri)).text)[1]
        seen.append(fields["code"])
        await conn.finish_sign_in(flow, fields)
        seen.append((await conn.acquire_token()).value)
        m365sim.advance(6000)
        seen.append((await conn.acquire_token(force_refresh=True)).value)
        seen.extend(refresh_tokens(await store.load_token_cache("contoso")))
        seen.append((await Connection(app_only(m365sim), store).acquire_token()).value)
        wrong = Connection(app_only(m365sim, name="wrong", client_secret=seen[2]), store)
        with pytest.raises(AuthError) as caught:
            await wrong.acquire_token()
        assert caught.value.entry.id == "AAD-SECRET-INVALID"
        errors.append(caught.value)
        m365sim.revoke(ADMIN)
        m365sim.advance(6000)
        with pytest.raises(NeedsSignIn) as revoked:
            await conn.acquire_token(force_refresh=True)
        errors.append(revoked.value)

    with_store(tmp_path, body)
    texts = [caplog.text, *(str(e) for e in errors), *(e.explain() for e in errors),
             *(repr(e) for e in errors)]
    assert any("AADSTS7000215" in t for t in texts)
    for secret in seen:
        for text in texts:
            assert secret not in text


# ---- scopes (no emulator) -------------------------------------------------------------------------
def test_scopes_follow_senders_large_messages_and_transport() -> None:
    base: dict[str, Any] = {"name": "c", "tenant": "contoso.com", "client_id": SEED_DELEGATED_APP}
    own = ConnectionSettings(**base, account=ADMIN, senders=[ADMIN], large_messages=False)
    assert needed_scopes(own, "graph") == ("Mail.Send",)
    shared = ConnectionSettings(**base, account=ADMIN, senders=[ADMIN, INFO])
    assert needed_scopes(shared, "graph") == ("Mail.Send", "Mail.Send.Shared", "Mail.ReadWrite")
    unknown_account = ConnectionSettings(**base, senders=[INFO], large_messages=False)
    assert needed_scopes(unknown_account, "graph") == ("Mail.Send", "Mail.Send.Shared")
    assert request_scopes(own, "smtp") == ["https://outlook.office.com/SMTP.Send"]
    app = ConnectionSettings(**base, mode="app-only", senders=[INFO])
    assert request_scopes(app, "graph") == ["https://graph.microsoft.com/.default"]
    assert request_scopes(app, "smtp") == ["https://outlook.office365.com/.default"]
