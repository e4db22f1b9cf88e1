"""`relay365 doctor` as a user runs it, on each m365sim scenario that reproduces a seed pitfall.

Each test builds the connection a user of that tenant would have, signs in when the
tenant lets them, then runs `relay365 doctor --json` as a subprocess and asserts the
check that fails and its exact catalogue id.  The seed's tenant, set up right, passes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from m365sim import Simulator
from relay365.config import settings_from_dict, write_settings
from relay365.demo import demo_settings

from .test_serve import sign_in

APP_ONLY = {"client_id": "22222222-aaaa-4bbb-8ccc-222222222222", "mode": "app-only",
            "client_secret": "seed~AppOnly.Secret-abcdefghij0123456789", "account": None}


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RELAY365_")}, "COLUMNS": "250"}


def write_config(sim: Simulator, tmp_path: Path, **connection: Any) -> Path:
    data = demo_settings(sim, tmp_path)
    data["connections"][0].update(connection)
    data["connections"][0] = {k: v for k, v in data["connections"][0].items() if v is not None}
    config = tmp_path / "relay365.toml"
    write_settings(settings_from_dict(data, env={}), config)
    return config


def doctor(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "relay365", "doctor", "--json", "--config", str(config),
                             *args], capture_output=True, text=True, timeout=120, env=env())
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def statuses(report: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {c["name"]: (c["status"], c["entry"]) for c in report["checks"]}


def failing(report: dict[str, Any]) -> dict[str, str | None]:
    return {c["name"]: c["entry"] for c in report["checks"] if c["status"] == "fail"}


def test_the_seed_tenant_set_up_right_passes(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path)
    sign_in(m365sim, config)
    code, report = doctor(config)
    assert code == 0, report
    assert report["connection"] == "demo" and report["ok"] is True
    checks = statuses(report)
    assert failing(report) == {}
    for name in ("config", "clock", "tls-authority", "tls-graph", "sign-in", "credential", "token",
                 "token-tenant", "permissions", "account", "mailbox", "sender:admin@contoso.com",
                 "sender:info@contoso.com", "secret-expiry", "refresh-token"):
        assert checks[name] == ("pass", None), (name, report)
    for check in report["checks"]:
        assert set(check) == {"name", "status", "entry", "title", "detail", "fix"}


def test_send_test_sends_a_real_message_from_each_sender(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path)
    sign_in(m365sim, config)
    code, report = doctor(config, "--send-test", "postmaster@example.org")
    assert code == 0, report
    delivered = m365sim.mailbox("postmaster@example.org").messages
    assert sorted(m.parsed()["From"] for m in delivered) == ["admin@contoso.com", "info@contoso.com"]


@pytest.mark.m365sim("security-defaults")
def test_security_defaults_tenant_has_no_app_registration(m365sim: Simulator, tmp_path: Path) -> None:
    # The seed's first attempt: nothing is registered in Entra yet.  Basic SMTP AUTH, the
    # pitfall itself, is never used by relay365; what stops it here is the missing app.
    config = write_config(m365sim, tmp_path)
    code, report = doctor(config)
    assert code == 1
    fails = failing(report)
    assert fails["sign-in"] == "AAD-UNKNOWN-APP"
    assert fails["credential"] == "AAD-UNKNOWN-APP"
    assert fails["token"] == "R365-NEEDS-SIGN-IN"


@pytest.mark.m365sim("single-tenant")
def test_single_tenant_app_on_common(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, tenant="common")
    code, report = doctor(config)
    assert code == 1
    assert statuses(report)["config"] == ("warn", "AAD-SINGLE-TENANT-COMMON")
    assert failing(report)["sign-in"] == "AAD-SINGLE-TENANT-COMMON"
    # the same connection with its tenant passes the sign-in check
    fixed = write_config(m365sim, tmp_path, tenant=m365sim.tenant_id)
    _, again = doctor(fixed)
    assert statuses(again)["sign-in"] == ("pass", None)


@pytest.mark.m365sim("needs-admin-approval")
def test_needs_admin_approval_is_missing_consent(m365sim: Simulator, tmp_path: Path) -> None:
    # A non-admin's browser gets "Need admin approval"; the doctor, before anyone signs in,
    # learns from the authorize endpoint that nobody consented (AADSTS65001).
    config = write_config(m365sim, tmp_path)
    code, report = doctor(config)
    assert code == 1
    fails = failing(report)
    assert fails["sign-in"] == "AAD-CONSENT-MISSING"
    assert fails["token"] == "R365-NEEDS-SIGN-IN"


@pytest.mark.m365sim("no-mailbox")
def test_no_mailbox(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path)
    sign_in(m365sim, config)
    code, report = doctor(config)
    assert code == 1
    fails = failing(report)
    assert fails["mailbox"] == "M365-NO-MAILBOX"
    assert statuses(report)["token"] == ("pass", None)


@pytest.mark.m365sim("no-mail-send-permission")
def test_no_mail_send_permission(m365sim: Simulator, tmp_path: Path) -> None:
    # The app-only registration holds Application.Read.All but not Mail.Send: tokens come,
    # sending is Forbidden (the seed's "Forbidden on test email").
    config = write_config(m365sim, tmp_path, **APP_ONLY)
    code, report = doctor(config)
    assert code == 1
    fails = failing(report)
    assert fails["permissions"] == "M365-NO-MAIL-SEND"
    assert fails["sender:info@contoso.com"] == "M365-NO-MAIL-SEND"
    assert statuses(report)["token"] == ("pass", None)


@pytest.mark.m365sim("no-mail-send-permission")
def test_delegated_app_without_mail_send_lacks_consent(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path)
    code, report = doctor(config)
    assert code == 1
    assert failing(report)["sign-in"] == "AAD-CONSENT-MISSING"


@pytest.mark.m365sim("no-send-as")
def test_no_send_as_with_send_test(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path)
    sign_in(m365sim, config)
    code, report = doctor(config, "--send-test", "postmaster@example.org")
    assert code == 1
    assert failing(report) == {"sender:info@contoso.com": "M365-SEND-AS-DENIED"}
    assert statuses(report)["sender:admin@contoso.com"] == ("pass", None)
    assert [m.parsed()["From"] for m in m365sim.mailbox("postmaster@example.org").messages] == [
        "admin@contoso.com"]


@pytest.mark.m365sim("secret-expired")
def test_secret_expired(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path)
    code, report = doctor(config)
    assert code == 1
    fails = failing(report)
    assert fails["credential"] == "AAD-SECRET-EXPIRED"
    assert fails["secret-expiry"] == "AAD-SECRET-EXPIRED"


@pytest.mark.m365sim("refresh-revoked")
def test_refresh_revoked(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path)
    sign_in(m365sim, config)
    m365sim.advance(2 * 3600)  # past the access token: the next token needs the refresh token
    code, report = doctor(config)
    assert code == 1
    fails = failing(report)
    assert fails["token"] == "AAD-REFRESH-REVOKED"
    assert fails["refresh-token"] == "AAD-REFRESH-REVOKED"
    assert statuses(report)["mailbox"] == ("skip", None)


def test_the_wrong_account_signed_in(m365sim: Simulator, tmp_path: Path) -> None:
    # The seed's other browser profile: the browser is signed in as the admin, the
    # connection expects Megan.  Sending as Megan's senders would be Forbidden.
    config = write_config(m365sim, tmp_path, account="megan@contoso.com")
    sign_in(m365sim, config)
    code, report = doctor(config)
    assert code == 1
    assert failing(report)["account"] == "R365-WRONG-ACCOUNT"
    shown = next(c for c in report["checks"] if c["name"] == "account")
    assert "admin@contoso.com" in shown["detail"] and "private window" in shown["fix"]


def test_a_configuration_that_does_not_load(tmp_path: Path) -> None:
    config = tmp_path / "relay365.toml"
    config.write_text('[[connections]]\nname = "x"\n', encoding="utf-8")
    code, report = doctor(config)
    assert code == 1
    assert report["checks"][0]["name"] == "config" and report["checks"][0]["entry"] == "R365-CONFIG"


def test_clock_skew_and_untrusted_tls_are_read_from_the_endpoint() -> None:
    import httpx

    from relay365.diagnose._probes import reach

    late = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)).strftime("%a, %d %b %Y %H:%M:%S GMT")

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "untrusted.example":
            raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
        return httpx.Response(200, headers={"Date": late})

    async def main() -> tuple[Any, Any]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            return await reach(http, "https://login.example/x"), await reach(http, "https://untrusted.example/")

    skewed, untrusted = asyncio.run(main())
    assert skewed.reached and 595 < skewed.skew < 605
    assert not untrusted.reached and untrusted.entry.id == "R365-TLS-UNTRUSTED"


@pytest.mark.parametrize(("answer", "ok", "entry"), [
    ({"status_code": 302, "headers": {"location": "http://localhost/?error=login_required&error_description="
                                                  "AADSTS50058%3a+no+user"}}, True, None),
    ({"status_code": 302, "headers": {"location": "http://localhost/?error=consent_required&error_description="
                                                  "AADSTS65001%3a+x"}}, False, "AAD-CONSENT-MISSING"),
    ({"status_code": 200, "text": "<p>AADSTS50011: The redirect URI 'x' specified in the request does not "
                                  "match</p>"}, False, "AAD-REDIRECT-MISMATCH"),
    ({"status_code": 200, "text": "<form>Pick an account</form>"}, True, None),
])
def test_the_authorize_probe_reads_microsofts_verdict(answer: dict[str, Any], ok: bool,
                                                      entry: str | None) -> None:
    import httpx

    from relay365.config import ConnectionSettings
    from relay365.diagnose._probes import authorize_probe

    conn = ConnectionSettings(name="c", tenant="contoso.onmicrosoft.com", client_id="id",
                              senders=["info@contoso.com"])

    async def main() -> Any:
        transport = httpx.MockTransport(lambda request: httpx.Response(**answer))
        async with httpx.AsyncClient(transport=transport) as http:
            return await authorize_probe(http, conn, ["https://graph.microsoft.com/Mail.Send"])

    verdict = asyncio.run(main())
    assert verdict.ok is ok
    assert (verdict.entry.id if verdict.entry else None) == entry
