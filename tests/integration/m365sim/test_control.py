"""The /_sim control API, the serve command, scenarios and fault injection."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import types
from pathlib import Path

import httpx
import pytest

import m365sim
from m365sim import Simulator, load_scenario

from .conftest import GRAPH, SEED_APP_ONLY, SEED_APP_ONLY_SECRET, confidential, https

SHIPPED = ["needs-admin-approval", "no-mail-send-permission", "no-mailbox", "no-send-as",
           "refresh-revoked", "secret-expired", "security-defaults", "seed", "single-tenant",
           "throttled"]


def test_public_surface_is_what_all_says() -> None:
    public = {n for n, v in vars(m365sim).items()
              if n.isidentifier() and not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert sorted(m365sim.__all__) == sorted(public)


def test_every_shipped_scenario_loads_and_says_what_it_reproduces() -> None:
    assert m365sim.shipped_scenarios() == SHIPPED
    for name in SHIPPED:
        scenario = load_scenario(name)
        assert scenario.description, name
        text = (Path(m365sim.__file__).parent / "scenarios" / f"{name}.toml").read_text()
        assert text.startswith(f"# {name}:"), f"{name}.toml must open with a comment on what it reproduces"


def test_scenario_errors_name_the_key_and_an_example(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[tenant]\ndomains = ["contoso.com"]\n[[apps]]\nclient_id = "x"\n'
                   'sign_in_audience = "Everyone"\n')
    with pytest.raises(m365sim.ScenarioError, match=r"apps\[0\]\.sign_in_audience: unknown value "
                       r"'Everyone' \(for example: AzureADMyOrg"):
        load_scenario(bad)
    with pytest.raises(m365sim.ScenarioError, match="no shipped scenario named 'nope'"):
        load_scenario("nope")
    grant = tmp_path / "grant.toml"
    grant.write_text('[tenant]\ndomains = ["contoso.com"]\n[[shared_mailboxes]]\n'
                     'address = "info@contoso.com"\nsend_as = ["ghost@contoso.com"]\n')
    with pytest.raises(m365sim.ScenarioError, match=r"'ghost@contoso\.com' is not a user"):
        load_scenario(grant)


def test_a_custom_scenario_extends_a_shipped_one(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('extends = "seed"\n[[users]]\nupn = "admin@contoso.com"\nmfa = true\n'
                    '[limits]\nmessages_per_minute = 5\n')
    scenario = load_scenario(path)
    admin = scenario.user("admin@contoso.com")
    assert admin is not None and admin.mfa and admin.admin  # merged, not replaced
    assert scenario.limits.messages_per_minute == 5
    assert scenario.shared_mailbox("info@contoso.com") is not None


def test_control_api_clock_revoke_scenario_and_faults(m365sim: Simulator) -> None:
    control = m365sim.control_url
    with https(m365sim) as client:
        before = client.get(f"{control}/clock").json()["offset"]
        assert client.post(f"{control}/clock", json={"seconds": 3600}).json()["offset"] == before + 3600
        assert client.post(f"{control}/clock", json={"seconds": -1}).status_code == 400
        assert client.post(f"{control}/users/admin@contoso.com/revoke").status_code == 204
        assert client.post(f"{control}/users/ghost@contoso.com/revoke").status_code == 404
        assert client.post(f"{control}/scenario/load", json={"scenario": "no-send-as"}).json() == \
            {"scenario": "no-send-as"}
        assert m365sim.scenario.shared_mailbox("info@contoso.com").send_as == ()  # type: ignore[union-attr]
        toml = 'extends = "seed"\nname = "edited"\n[limits]\nmessages_per_minute = 7\n'
        put = client.put(f"{control}/scenario", content=toml, headers={"content-type": "application/toml"})
        assert put.json() == {"scenario": "edited"}
        assert client.get(f"{control}/scenario").json()["limits"]["messages_per_minute"] == 7
        bad = client.put(f"{control}/scenario", json={"tenant": {}})
        assert bad.status_code == 400 and "tenant.domains" in bad.json()["error"]
        added = client.post(f"{control}/faults", json={"path": "/v1.0/me", "status": 503, "count": 2,
                                                       "retry_after": 3})
        assert added.json()["faults"][0]["remaining"] == 2
        first = client.get(f"{m365sim.graph_url}/me")
        second = client.get(f"{m365sim.graph_url}/me")
        third = client.get(f"{m365sim.graph_url}/me")
        log = client.get(f"{control}/requests").json()["requests"]
    assert (first.status_code, first.headers["retry-after"]) == (503, "3")
    assert first.json()["error"]["code"] == "ServiceUnavailable"
    assert second.status_code == 503
    assert third.status_code != 503  # the fault was used up
    assert [r.get("detail") for r in log if r["path"] == "/v1.0/me"][:2] == ["fault:status"] * 2


def test_injected_reset_hang_and_latency(m365sim: Simulator) -> None:
    m365sim.fault("/v1.0/me", "reset")
    m365sim.fault("/v1.0/users", "hang")
    ctx = ssl.create_default_context(cafile=str(m365sim.ca_file))
    with httpx.Client(verify=ctx, timeout=httpx.Timeout(5, read=0.5)) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"{m365sim.graph_url}/me")
        with pytest.raises(httpx.ReadTimeout):
            client.get(f"{m365sim.graph_url}/users/x")
    m365sim.fault("/v1.0/me", "latency", latency=0.3, count=1)
    with https(m365sim) as client:
        started = time.monotonic()
        response = client.get(f"{m365sim.graph_url}/me")
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 401  # delayed, then answered normally (no token)


def test_token_endpoint_fault_reaches_msal_as_a_server_error(m365sim: Simulator) -> None:
    m365sim.fault(f"/{m365sim.tenant_id}/oauth2/v2.0/token", status=503, count=1)
    app = confidential(m365sim, SEED_APP_ONLY, SEED_APP_ONLY_SECRET)
    with pytest.raises(Exception, match="503"):
        app.acquire_token_for_client([f"{GRAPH}/.default"])


def test_control_api_refuses_non_loopback_clients(m365sim: Simulator) -> None:
    from m365sim._app import is_loopback

    assert is_loopback({"client": ("127.0.0.1", 5)})
    assert is_loopback({"client": ("::1", 5)})
    assert not is_loopback({"client": ("192.0.2.7", 5)})
    assert not is_loopback({})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_prints_its_endpoints_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    with subprocess.Popen(
        [sys.executable, "-m", "m365sim.cli", "serve", "--scenario", "no-send-as", "--port", str(port),
         "--state-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            assert set(ready) == {"authority_host", "tenant", "graph", "smtp_host", "smtp_port", "ca",
                                  "control"}
            assert ready["authority_host"] == f"https://127.0.0.1:{port}"
            assert Path(ready["ca"]) == tmp_path / "ca.pem"
            ctx = ssl.create_default_context(cafile=ready["ca"])
            info = httpx.get(ready["control"], verify=ctx).json()
            assert info["scenario"] == "no-send-as"
            with socket.create_connection((ready["smtp_host"], ready["smtp_port"])) as smtp:
                assert smtp.recv(512).startswith(b"220 ")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    # The CA outlives the process: a restart keeps what clients already trust.
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600


def test_serve_reports_a_bad_scenario() -> None:
    result = subprocess.run([sys.executable, "-m", "m365sim.cli", "serve", "--scenario", "nope"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no shipped scenario named 'nope'" in result.stderr


def test_the_ca_is_kept_across_restarts(tmp_path: Path) -> None:
    with Simulator("seed", state_dir=tmp_path) as first:
        ca = first.ca_file.read_bytes()
    with Simulator("seed", state_dir=tmp_path) as second:
        assert second.ca_file.read_bytes() == ca
