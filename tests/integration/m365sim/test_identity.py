"""The identity platform, driven by MSAL and httpx over HTTPS, as applications drive Entra."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import urllib.parse
from dataclasses import replace
from typing import Any

import msal
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from m365sim import App, Certificate, Secret, Simulator

from .conftest import (
    GRAPH,
    MEGAN,
    SEED_APP_ONLY,
    SEED_APP_ONLY_SECRET,
    SEED_DELEGATED_APP,
    SEED_DELEGATED_SECRET,
    auth_code_token,
    confidential,
    form_post_fields,
    https,
    public,
    redirect_params,
)

MAIL_SEND = f"{GRAPH}/Mail.Send"


def claims(token: str) -> dict[str, Any]:
    """Decode a JWT's payload as a diagnostic tool does (no signature check)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def token_error(result: dict[str, Any]) -> tuple[str, int]:
    return result["error"], result["error_codes"][0]


def post_token(sim: Simulator, form: dict[str, str], tenant: str | None = None,
               **kwargs: Any) -> Any:
    with https(sim) as client:
        return client.post(f"{sim.authority(tenant)}/oauth2/v2.0/token", data=form, **kwargs)


# ---- discovery -------------------------------------------------------------------------------
def test_discovery_for_tenant_id_domain_and_common(m365sim: Simulator) -> None:
    with https(m365sim) as client:
        by_id = client.get(f"{m365sim.authority()}/v2.0/.well-known/openid-configuration").json()
        by_domain = client.get(f"{m365sim.base_url}/contoso.com/v2.0/.well-known/openid-configuration")
        common = client.get(f"{m365sim.base_url}/common/v2.0/.well-known/openid-configuration").json()
        bogus = client.get(f"{m365sim.base_url}/fabrikam.com/v2.0/.well-known/openid-configuration")
        keys = client.get(by_id["jwks_uri"]).json()
    assert by_id["issuer"] == f"{m365sim.base_url}/{m365sim.tenant_id}/v2.0"
    assert by_id["token_endpoint"] == f"{m365sim.authority()}/oauth2/v2.0/token"
    assert by_domain.status_code == 200
    assert common["issuer"] == f"{m365sim.base_url}/{{tenantid}}/v2.0"
    assert bogus.status_code == 400
    assert bogus.json()["error_codes"] == [90002]
    assert "Tenant 'fabrikam.com' not found" in bogus.json()["error_description"]
    assert keys["keys"][0]["kty"] == "RSA"


# ---- client credentials ------------------------------------------------------------------------
def test_client_credentials_with_secret_gives_app_roles(m365sim: Simulator) -> None:
    result = confidential(m365sim, SEED_APP_ONLY, SEED_APP_ONLY_SECRET).acquire_token_for_client(
        [f"{GRAPH}/.default"])
    c = claims(result["access_token"])
    assert "refresh_token" not in result
    assert c["aud"] == GRAPH
    assert c["idtyp"] == "app"
    assert "Mail.Send" in c["roles"]
    assert c["tid"] == m365sim.tenant_id
    assert c["appid"] == SEED_APP_ONLY
    assert c["appidacr"] == "1"
    assert 3600 <= c["exp"] - c["iat"] <= 5400


def test_client_secret_by_http_basic(m365sim: Simulator) -> None:
    basic = base64.b64encode(f"{SEED_APP_ONLY}:{urllib.parse.quote_plus(SEED_APP_ONLY_SECRET)}".encode())
    response = post_token(m365sim, {"grant_type": "client_credentials", "scope": f"{GRAPH}/.default"},
                          headers={"Authorization": f"Basic {basic.decode()}"})
    assert response.status_code == 200
    assert claims(response.json()["access_token"])["appid"] == SEED_APP_ONLY


def _certificate() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay365 test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


@pytest.mark.parametrize("thumbprint", ["sha256", "sha1"])
def test_client_credentials_with_certificate(m365sim: Simulator, thumbprint: str) -> None:
    cert_pem, key_pem = _certificate()
    m365sim.edit_scenario(lambda s: s.replace_app(replace(
        s.app(SEED_APP_ONLY), certificates=(Certificate(pem=cert_pem),))))  # type: ignore[arg-type]
    if thumbprint == "sha256":  # MSAL computes x5t#S256 from the certificate (PS256)
        credential = {"private_key": key_pem, "public_certificate": cert_pem}
    else:  # the portal's SHA-1 thumbprint (x5t, RS256)
        sha1 = x509.load_pem_x509_certificate(cert_pem.encode()).fingerprint(hashes.SHA1())
        credential = {"private_key": key_pem, "thumbprint": sha1.hex().upper()}
    result = confidential(m365sim, SEED_APP_ONLY, credential).acquire_token_for_client([f"{GRAPH}/.default"])
    assert claims(result["access_token"])["appidacr"] == "2"

    other_cert, other_key = _certificate()  # signed by a certificate not registered on the app
    refused = confidential(m365sim, SEED_APP_ONLY, {"private_key": other_key,
                                                   "public_certificate": other_cert})
    result = refused.acquire_token_for_client([f"{GRAPH}/.default"])
    assert token_error(result) == ("invalid_client", 700027)


def test_client_credentials_needs_dot_default_and_a_tenant(m365sim: Simulator) -> None:
    form = {"grant_type": "client_credentials", "client_id": SEED_APP_ONLY,
            "client_secret": SEED_APP_ONLY_SECRET, "scope": MAIL_SEND}
    no_default = post_token(m365sim, form)
    assert no_default.status_code == 400
    assert no_default.json()["error"] == "invalid_scope"
    assert no_default.json()["error_codes"] == [1002012]
    on_common = post_token(m365sim, {**form, "scope": f"{GRAPH}/.default"}, tenant="common")
    assert on_common.json()["error_codes"] == [9001023]


def test_unknown_client_and_wrong_secret(m365sim: Simulator) -> None:
    unknown = post_token(m365sim, {"grant_type": "client_credentials", "client_id": "nobody",
                                   "client_secret": "x", "scope": f"{GRAPH}/.default"})
    assert (unknown.status_code, unknown.json()["error"], unknown.json()["error_codes"]) == \
        (400, "unauthorized_client", [700016])
    wrong = confidential(m365sim, SEED_APP_ONLY, "not-the-secret").acquire_token_for_client(
        [f"{GRAPH}/.default"])
    assert token_error(wrong) == ("invalid_client", 7000215)
    assert "client secret value, not the client secret ID" in wrong["error_description"]


@pytest.mark.m365sim("secret-expired")
def test_expired_secret_is_aadsts7000222(m365sim: Simulator) -> None:
    result = confidential(m365sim, SEED_APP_ONLY, SEED_APP_ONLY_SECRET).acquire_token_for_client(
        [f"{GRAPH}/.default"])
    assert token_error(result) == ("invalid_client", 7000222)
    assert f"The provided client secret keys for app '{SEED_APP_ONLY}' are expired" in \
        result["error_description"]
    raw = post_token(m365sim, {"grant_type": "client_credentials", "client_id": SEED_APP_ONLY,
                               "client_secret": SEED_APP_ONLY_SECRET, "scope": f"{GRAPH}/.default"})
    assert raw.status_code == 401


def test_secret_expires_when_the_clock_passes_its_end(m365sim: Simulator) -> None:
    app = confidential(m365sim, SEED_APP_ONLY, SEED_APP_ONLY_SECRET)
    assert "access_token" in app.acquire_token_for_client([f"{GRAPH}/.default"])
    end = next(s.end for s in m365sim.scenario.app(SEED_APP_ONLY).secrets)  # type: ignore[union-attr]
    m365sim.advance(end.timestamp() - dt.datetime.now(dt.UTC).timestamp() + 60)
    fresh = confidential(m365sim, SEED_APP_ONLY, SEED_APP_ONLY_SECRET)
    assert token_error(fresh.acquire_token_for_client([f"{GRAPH}/.default"])) == ("invalid_client", 7000222)


# ---- authorization code + PKCE -------------------------------------------------------------------
def test_auth_code_with_signed_in_browser_user(m365sim: Simulator) -> None:
    result = auth_code_token(m365sim, [MAIL_SEND])
    c = claims(result["access_token"])
    assert c["upn"] == "admin@contoso.com"
    assert {"Mail.Send", "Mail.Send.Shared"} <= set(c["scp"].split())
    assert result["id_token_claims"]["preferred_username"] == "admin@contoso.com"
    assert "refresh_token" in result
    assert "client_info" in result
    assert MAIL_SEND in result["scope"].split()


@pytest.mark.m365sim("needs-admin-approval")
def test_consent_page_need_admin_approval_then_admin_consents_for_org(m365sim: Simulator) -> None:
    app = confidential(m365sim)
    flow = app.initiate_auth_code_flow([MAIL_SEND], redirect_uri="http://localhost:9000",
                                       response_mode="form_post")
    with https(m365sim) as browser:
        picker = browser.get(flow["auth_uri"])
        assert "Pick an account" in picker.text
        signin_action = re.search(r'action="([^"]+/signin)"', picker.text).group(1)  # type: ignore[union-attr]
        need_admin = browser.post(m365sim.base_url + signin_action, data={"user": MEGAN[0]})
        assert "Need admin approval" in need_admin.text
        assert "Have an admin account? Sign in with that account" in need_admin.text
        admin_link = re.search(r'href="([^"]+)" id="admin-account"', need_admin.text).group(1)  # type: ignore[union-attr]
        picker_again = browser.get(m365sim.base_url + admin_link)
        consent = browser.post(m365sim.base_url + signin_action, data={"user": "admin@contoso.com"})
        assert "Pick an account" in picker_again.text
        assert "Consent on behalf of your organization" in consent.text
        consent_action = re.search(r'action="([^"]+/consent)"', consent.text).group(1)  # type: ignore[union-attr]
        back = browser.post(m365sim.base_url + consent_action,
                            data={"user": "admin@contoso.com", "consent_org": "on", "action": "accept"})
    result = app.acquire_token_by_auth_code_flow(flow, form_post_fields(back.text)[1])
    assert "Mail.Send" in claims(result["access_token"])["scp"].split()
    assert m365sim.scenario.app(SEED_DELEGATED_APP).admin_consent  # type: ignore[union-attr]
    # Consent was for the organization: megan now signs in with no page at all.
    assert "access_token" in auth_code_token(m365sim, [MAIL_SEND])


@pytest.mark.m365sim("needs-admin-approval")
def test_return_without_consent_is_access_denied_65004(m365sim: Simulator) -> None:
    flow = confidential(m365sim).initiate_auth_code_flow(
        [MAIL_SEND], redirect_uri="http://localhost:9000", response_mode="form_post")
    with https(m365sim) as browser:
        picker = browser.get(flow["auth_uri"])
        action = re.search(r'action="([^"]+/signin)"', picker.text).group(1)  # type: ignore[union-attr]
        page = browser.post(m365sim.base_url + action, data={"user": MEGAN[0]})
        back = re.search(r'href="([^"]+)" id="return"', page.text).group(1)  # type: ignore[union-attr]
        response = browser.get(m365sim.base_url + back)
    params = redirect_params(response)
    assert params["error"] == "access_denied"
    assert params["error_description"].startswith("AADSTS65004: User declined to consent")
    assert params["state"] == flow["state"]


def _raw_code(sim: Simulator, *, challenge: str | None, method: str | None = None,
              redirect_uri: str = "http://localhost:9000") -> str:
    query = {"client_id": SEED_DELEGATED_APP, "response_type": "code", "redirect_uri": redirect_uri,
             "scope": f"{MAIL_SEND} offline_access openid", "state": "s1"}
    if challenge is not None:
        query["code_challenge"] = challenge
    if method is not None:
        query["code_challenge_method"] = method
    with https(sim) as browser:
        response = browser.get(f"{sim.authority()}/oauth2/v2.0/authorize", params=query)
    assert response.status_code == 302, response.text
    return redirect_params(response)["code"]


def _redeem(sim: Simulator, code: str, verifier: str | None,
            redirect_uri: str = "http://localhost:9000") -> Any:
    form = {"grant_type": "authorization_code", "client_id": SEED_DELEGATED_APP,
            "client_secret": SEED_DELEGATED_SECRET, "code": code, "redirect_uri": redirect_uri}
    if verifier is not None:
        form["code_verifier"] = verifier
    return post_token(sim, form)


def test_codes_are_single_use_and_bound_to_pkce_and_redirect_uri(m365sim: Simulator) -> None:
    verifier = "v" * 50
    s256 = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    code = _raw_code(m365sim, challenge=s256, method="S256")
    assert _redeem(m365sim, code, verifier).status_code == 200
    reused = _redeem(m365sim, code, verifier)
    assert (reused.json()["error"], reused.json()["error_codes"]) == ("invalid_grant", [54005])

    bad_verifier = _redeem(m365sim, _raw_code(m365sim, challenge=s256, method="S256"), "w" * 50)
    assert bad_verifier.json()["error_codes"] == [501481]

    plain = _raw_code(m365sim, challenge=verifier)  # method omitted: plain is assumed
    assert _redeem(m365sim, plain, verifier).status_code == 200

    other_redirect = _raw_code(m365sim, challenge=None)
    assert _redeem(m365sim, other_redirect, None, "http://localhost:9001").json()["error_codes"] == [50011]

    expired = _raw_code(m365sim, challenge=None)
    m365sim.advance(601)
    assert _redeem(m365sim, expired, None).json()["error_codes"] == [70000]


def test_redirect_uri_mismatch_is_an_html_page_not_a_redirect(m365sim: Simulator) -> None:
    with https(m365sim) as browser:
        response = browser.get(f"{m365sim.authority()}/oauth2/v2.0/authorize", params={
            "client_id": SEED_DELEGATED_APP, "response_type": "code",
            "redirect_uri": "https://evil.example/callback", "scope": MAIL_SEND})
        unknown = browser.get(f"{m365sim.authority()}/oauth2/v2.0/authorize", params={
            "client_id": "00000000-0000-0000-0000-000000000000", "response_type": "code",
            "redirect_uri": "http://localhost", "scope": MAIL_SEND})
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "text/html" in response.headers["content-type"]
    assert "AADSTS50011: The redirect URI &#39;https://evil.example/callback&#39; specified in the " \
           "request does not match" in response.text
    assert unknown.status_code == 400 and "AADSTS700016" in unknown.text


@pytest.mark.m365sim("single-tenant")
def test_single_tenant_app_on_common_is_redirected_with_50194(m365sim: Simulator) -> None:
    common = confidential(m365sim, tenant="common")
    flow = common.initiate_auth_code_flow([MAIL_SEND], redirect_uri="http://localhost:9000",
                                          response_mode="form_post")
    with https(m365sim) as browser:
        params = redirect_params(browser.get(flow["auth_uri"]))
    assert params["error"] == "invalid_request"
    assert params["error_description"].startswith(
        f"AADSTS50194: Application '{SEED_DELEGATED_APP}'(Contoso Mail Relay) is not configured as a "
        "multi-tenant application. Usage of the /common endpoint is not supported")
    # The tenant-specific authority works for the same registration.
    assert "access_token" in auth_code_token(m365sim, [MAIL_SEND])


# ---- refresh ------------------------------------------------------------------------------------
def test_refresh_rotates_and_old_refresh_token_stays_valid(m365sim: Simulator) -> None:
    cache = msal.SerializableTokenCache()
    app = msal.ConfidentialClientApplication(
        SEED_DELEGATED_APP, client_credential=SEED_DELEGATED_SECRET, authority=m365sim.authority(),
        instance_discovery=False, verify=str(m365sim.ca_file), token_cache=cache)
    first = auth_code_token(m365sim, [MAIL_SEND], app=app)
    account = app.get_accounts()[0]
    # MSAL judges expiry by its own clock, so the refresh is forced, as a client does
    # after a 401 from Graph.
    refreshed = app.acquire_token_silent([MAIL_SEND], account=account, force_refresh=True)
    assert refreshed is not None and refreshed["token_source"] == "identity_provider"
    rts = [rt["secret"] for rt in json.loads(cache.serialize())["RefreshToken"].values()]
    assert rts and first["refresh_token"] not in rts  # the cache holds the rotated token
    old = post_token(m365sim, {"grant_type": "refresh_token", "client_id": SEED_DELEGATED_APP,
                               "client_secret": SEED_DELEGATED_SECRET,
                               "refresh_token": first["refresh_token"], "scope": MAIL_SEND})
    assert old.status_code == 200


def test_revoked_sessions_and_inactive_refresh_tokens(m365sim: Simulator) -> None:
    first = auth_code_token(m365sim, [MAIL_SEND])
    form = {"grant_type": "refresh_token", "client_id": SEED_DELEGATED_APP,
            "client_secret": SEED_DELEGATED_SECRET, "refresh_token": first["refresh_token"]}
    m365sim.advance(91 * 86400)
    inactive = post_token(m365sim, form).json()
    assert (inactive["error"], inactive["error_codes"]) == ("invalid_grant", [70008])
    second = auth_code_token(m365sim, [MAIL_SEND])
    m365sim.revoke("admin@contoso.com")
    revoked = post_token(m365sim, {**form, "refresh_token": second["refresh_token"]}).json()
    assert (revoked["error"], revoked["error_codes"]) == ("invalid_grant", [50173])
    assert "it being revoked" in revoked["error_description"]


@pytest.mark.m365sim("refresh-revoked")
def test_refresh_revoked_scenario_fails_the_first_refresh(m365sim: Simulator) -> None:
    app = confidential(m365sim)
    result = auth_code_token(m365sim, [MAIL_SEND], app=app)
    assert "access_token" in result
    silent = app.acquire_token_silent_with_error([MAIL_SEND], account=app.get_accounts()[0],
                                                 force_refresh=True)
    assert silent is not None
    assert token_error(silent) == ("invalid_grant", 50173)


# ---- device code ---------------------------------------------------------------------------------
def test_device_code_through_the_verification_page(m365sim: Simulator) -> None:
    app = public(m365sim)
    flow = app.initiate_device_flow([MAIL_SEND])
    assert flow["verification_uri"] == f"{m365sim.base_url}/devicelogin"
    pending = post_token(m365sim, {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                   "client_id": SEED_DELEGATED_APP, "device_code": flow["device_code"]})
    assert (pending.json()["error"], pending.json()["error_codes"]) == ("authorization_pending", [70016])
    with https(m365sim) as browser:
        confirm = browser.post(f"{m365sim.base_url}/devicelogin", data={"code": flow["user_code"]})
        assert "Are you trying to sign in to Contoso Mail Relay?" in confirm.text
        done = browser.post(f"{m365sim.base_url}/devicelogin",
                            data={"code": flow["user_code"], "user": MEGAN[0], "action": "accept"})
    assert "You have signed in" in done.text
    result = app.acquire_token_by_device_flow(flow)
    assert claims(result["access_token"])["upn"] == MEGAN[0]
    assert "refresh_token" in result


def test_device_code_declined_and_expired(m365sim: Simulator) -> None:
    app = public(m365sim)
    declined = app.initiate_device_flow([MAIL_SEND])
    m365sim.approve_device_code(declined["user_code"], MEGAN[0], decline=True)
    assert app.acquire_token_by_device_flow(declined)["error"] == "authorization_declined"
    expired = app.initiate_device_flow([MAIL_SEND])
    m365sim.advance(901)
    response = post_token(m365sim, {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                    "client_id": SEED_DELEGATED_APP, "code": expired["device_code"]})
    assert response.json()["error"] == "expired_token"


# ---- password (ROPC) -----------------------------------------------------------------------------
def test_password_grant_for_a_user_without_mfa(m365sim: Simulator) -> None:
    result = confidential(m365sim).acquire_token_by_username_password(*MEGAN, scopes=[MAIL_SEND])
    assert claims(result["access_token"])["upn"] == MEGAN[0]
    wrong = confidential(m365sim).acquire_token_by_username_password(MEGAN[0], "nope", scopes=[MAIL_SEND])
    assert token_error(wrong) == ("invalid_grant", 50126)


@pytest.mark.m365sim("security-defaults")
def test_password_grant_for_an_admin_under_security_defaults_needs_mfa(m365sim: Simulator) -> None:
    m365sim.edit_scenario(lambda s: replace(s, apps=password_test_app()))
    result = confidential(m365sim).acquire_token_by_username_password(
        "admin@contoso.com", "Adele-Pa55word", scopes=[MAIL_SEND])
    assert token_error(result) == ("invalid_grant", 50076)
    assert result["suberror"] == "basic_action"


def password_test_app() -> tuple[App, ...]:
    """security-defaults has no app yet: register one to try the password grant."""
    secret = Secret(value=SEED_DELEGATED_SECRET, key_id="k", display_name="test",
                    start=dt.datetime(2025, 1, 1, tzinfo=dt.UTC), end=dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
    return (App(client_id=SEED_DELEGATED_APP, name="Password test", secrets=(secret,),
                delegated_permissions=("Mail.Send",), admin_consent=True),)


# ---- admin consent endpoint ------------------------------------------------------------------------
@pytest.mark.m365sim("needs-admin-approval")
def test_adminconsent_endpoint_grants_for_the_organization(m365sim: Simulator) -> None:
    with https(m365sim) as browser:
        page = browser.get(f"{m365sim.authority()}/adminconsent", params={
            "client_id": SEED_DELEGATED_APP, "redirect_uri": "http://localhost", "state": "z"})
        assert "Accept for your organization" in page.text
        response = browser.post(f"{m365sim.authority()}/adminconsent", data={
            "client_id": SEED_DELEGATED_APP, "redirect_uri": "http://localhost", "state": "z",
            "user": "admin@contoso.com", "action": "accept"})
    params = redirect_params(response)
    assert params == {"tenant": m365sim.tenant_id, "admin_consent": "True", "state": "z"}
    assert m365sim.scenario.app(SEED_DELEGATED_APP).admin_consent  # type: ignore[union-attr]


def test_a_loopback_redirect_uri_matches_whatever_its_port() -> None:
    from m365sim._signin import redirect_uri_matches

    registered = ("http://localhost", "http://localhost:8025/auth/callback", "https://127.0.0.1/callback")
    assert redirect_uri_matches(registered, "http://localhost:41234/auth/callback")
    assert redirect_uri_matches(registered, "http://localhost:5000")
    assert not redirect_uri_matches(registered, "http://localhost:41234/other")
    assert not redirect_uri_matches(registered, "http://127.0.0.1:41234/auth/callback")
    assert not redirect_uri_matches(registered, "https://127.0.0.1:8443/callback")  # https: exact only
