"""The /_sim control API and fault injection, on a running emulator (the serve command: e2e)."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
import pytest

from m365sim import Simulator

from .conftest import GRAPH, SEED_APP_ONLY, SEED_APP_ONLY_SECRET, confidential, https


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


def test_the_ca_is_kept_across_restarts(tmp_path: Path) -> None:
    with Simulator("seed", state_dir=tmp_path) as first:
        ca = first.ca_file.read_bytes()
    with Simulator("seed", state_dir=tmp_path) as second:
        assert second.ca_file.read_bytes() == ca
