"""The setup pages over HTTP: create a connection, sign in through m365sim with this page as
the callback, see who signed in; edit it without ever seeing the secret again."""

from __future__ import annotations

import re
import ssl
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from m365sim import Simulator
from relay365.auth import SecretBox
from relay365.demo import DEMO_CLIENT_ID, DEMO_SECRET

from .test_serve import eventually
from .web_helpers import AdminClient, admin_relay, empty_config


def connection_form(sim: Simulator, **changes: str) -> dict[str, str]:
    return {"name": "contoso", "tenant": sim.tenant_id, "client_id": DEMO_CLIENT_ID, "mode": "delegated",
            "client_secret": DEMO_SECRET, "secret_expires": "2028-06-01", "account": "admin@contoso.com",
            "senders": "admin@contoso.com, info@contoso.com", "default_sender": "info@contoso.com",
            "transport": "graph", "authority_host": sim.base_url, "graph_url": sim.graph_url,
            "smtp_host": sim.host, "smtp_port": str(sim.smtp_port), "ca_file": str(sim.ca_file),
            **changes}


def sign_in_through_the_page(admin: AdminClient, sim: Simulator, name: str) -> httpx.Response:
    """Press "Sign in with Microsoft 365" and follow the browser's way back to the result page."""
    start = admin.post(f"/setup/{name}/sign-in", form_page=f"/setup/{name}")
    assert start.status_code == 303
    authorize = start.headers["location"]
    assert authorize.startswith(sim.base_url)
    with httpx.Client(verify=ssl.create_default_context(cafile=str(sim.ca_file)), timeout=30) as browser:
        answer = browser.get(authorize)  # the seed's admin is signed in and has consented: straight back
    assert answer.status_code == 302, answer.text
    callback = answer.headers["location"]
    assert callback.startswith("http://localhost:") and "/auth/callback?" in callback
    back = admin.http.get(callback.replace("http://localhost:", "http://127.0.0.1:", 1))
    assert back.status_code == 303
    result = back.headers["location"]
    assert result.startswith(str(admin.http.base_url).rstrip("/") + f"/setup/{name}/signed-in/")
    return admin.get(result)


@pytest.mark.m365sim("seed")
def test_create_a_connection_sign_in_and_deliver(m365sim: Simulator, tmp_path: Path) -> None:
    config = empty_config(tmp_path)
    with admin_relay(config) as (admin, ready):
        page = admin.get("/setup/new")
        assert page.status_code == 200
        port = ready["http_url"].rsplit(":", 1)[1]
        assert f'value="http://localhost:{port}/auth/callback"' in page.text

        saved = admin.post("/setup/new", connection_form(m365sim), form_page="/setup/new")
        assert (saved.status_code, saved.headers["location"]) == (303, "/setup/contoso")
        written: dict[str, Any] = tomllib.loads(config.read_text())
        assert written["connections"][0]["senders"] == ["admin@contoso.com", "info@contoso.com"]
        sealed = written["connections"][0]["client_secret"]
        assert sealed.startswith("relay365-sealed:") and DEMO_SECRET not in config.read_text()
        assert SecretBox.from_environment(tmp_path / "state" / "secret.key").unseal(sealed) == DEMO_SECRET
        assert oct(config.stat().st_mode & 0o777) == "0o600"

        detail = admin.get("/setup/contoso")
        assert DEMO_SECRET not in detail.text
        assert "A client secret is set in relay365.toml (encrypted), expiring 2028-06-01" in detail.text
        # The setup and status pages count the days alike (as the expiry alerts do).
        days = re.search(r"expiring 2028-06-01 \(in (\d+) days\)", detail.text)
        assert days and f"in {days.group(1)} days" in admin.get("/").text
        assert "Add delegated permission Mail.Send.Shared" in detail.text
        assert f"Redirect URI: http://localhost:{port}/auth/callback" in detail.text

        result = sign_in_through_the_page(admin, m365sim, "contoso")
        assert result.status_code == 200
        assert "Signed in as admin@contoso.com" in result.text
        assert re.search(r"<li><code>Mail.Send.Shared</code></li>", result.text)
        assert "Every permission relay365 needs is granted." in result.text

        # The relay runs on the new connection: mail through SMTP is delivered with this sign-in.
        import smtplib

        with smtplib.SMTP(ready["smtp_host"], ready["smtp_port"], timeout=30) as smtp:
            smtp.sendmail("info@contoso.com", ["web-setup@example.org"],
                          b"From: info@contoso.com\r\nTo: web-setup@example.org\r\nSubject: set up on "
                          b"the page\r\n\r\nhi\r\n")
        eventually(lambda: any(m.subject == "set up on the page"
                               for m in m365sim.mailbox("web-setup@example.org").messages))


@pytest.mark.m365sim("seed")
def test_edit_keeps_the_secret_and_bad_input_changes_nothing(m365sim: Simulator, tmp_path: Path) -> None:
    config = empty_config(tmp_path)
    with admin_relay(config) as (admin, _):
        assert admin.post("/setup/new", connection_form(m365sim), form_page="/setup/new").status_code == 303
        first = tomllib.loads(config.read_text())["connections"][0]
        keep_secret = connection_form(m365sim, client_secret="", sender_name="Contoso")
        edited = admin.post("/setup/contoso", keep_secret, form_page="/setup/contoso")
        assert edited.status_code == 303
        written = tomllib.loads(config.read_text())["connections"][0]
        assert (written["client_secret"], written["sender_name"]) == (first["client_secret"], "Contoso")

        before = config.read_text()
        bad = admin.post("/setup/contoso", connection_form(m365sim, client_secret="",
                                                           default_sender="nobody@contoso.com"),
                         form_page="/setup/contoso")
        assert bad.status_code == 400
        assert "default_sender &#39;nobody@contoso.com&#39; must be one of senders" in bad.text
        assert config.read_text() == before

        twice = admin.post("/setup/new", connection_form(m365sim), form_page="/setup/new")
        assert twice.status_code == 400 and "exists already" in twice.text


@pytest.mark.m365sim("refresh-revoked")
def test_a_failed_sign_in_shows_its_diagnosis(m365sim: Simulator, tmp_path: Path) -> None:
    config = empty_config(tmp_path)
    with admin_relay(config) as (admin, _):
        form = connection_form(m365sim, client_id="99999999-aaaa-4bbb-8ccc-999999999999")
        assert admin.post("/setup/new", form, form_page="/setup/new").status_code == 303
        start = admin.post("/setup/contoso/sign-in", form_page="/setup/contoso")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(m365sim.ca_file)), timeout=30) as b:
            page = b.get(start.headers["location"])
        # An unknown application is Microsoft's own error page, never a redirect back.
        assert page.status_code == 400 and "AADSTS700016" in page.text
        unknown = admin.get("/auth/callback?state=forged&code=x")
        assert unknown.status_code == 400
        assert "not one in progress" in unknown.text


def test_settings_that_do_not_run_leave_the_file_as_it_was(tmp_path: Path) -> None:
    import asyncio

    from relay365.errors import ConfigError
    from relay365.web import AdminSite

    config = empty_config(tmp_path)
    before = config.read_bytes()

    async def apply(settings: object) -> None:
        raise OSError("address already in use")

    site = AdminSite(session_key=b"k" * 32, config_file=config, apply=apply)
    with pytest.raises(ConfigError, match=r"relay365\.toml is unchanged") as raised:
        asyncio.run(site.change_settings(lambda data: {**data, "alerts": {"backlog_threshold": 5}}))
    assert "address already in use" in raised.value.message
    assert config.read_bytes() == before
