"""pytest plugin: the ``m365sim`` fixture, a running emulator for each test.

    @pytest.mark.m365sim("no-send-as")      # scenario name or path; default "seed"
    def test_something(m365sim):
        app = msal.ConfidentialClientApplication(
            client_id, client_credential=secret, authority=m365sim.authority(),
            instance_discovery=False, verify=str(m365sim.ca_file))

The fixture prepares MSAL for a local authority:

- it removes ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE`` for the test: when they are
  set, ``requests`` (and so MSAL) ignores ``verify=`` and would not trust the CA;
- it tells MSAL that 127.0.0.1 has no user-realm discovery: MSAL's username/password
  flow asks ``https://{host}/common/userrealm/...`` on port 443 whatever the authority's
  port is, which no test emulator listens on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ._server import Simulator


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "m365sim(scenario): the m365sim scenario (name or path) for the m365sim fixture"
    )


def _skip_msal_user_realm_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        from msal.authority import Authority
    except ImportError:  # MSAL is not a dependency of m365sim
        return
    hosts = set(getattr(Authority, "_domains_without_user_realm_discovery", set()))
    monkeypatch.setattr(Authority, "_domains_without_user_realm_discovery",
                        hosts | {"127.0.0.1", "localhost"}, raising=False)


@pytest.fixture(scope="session")
def m365sim_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA for the whole session: generating keys for every test would be slow."""
    return tmp_path_factory.mktemp("m365sim-state")


@pytest.fixture
def m365sim(
    request: pytest.FixtureRequest, m365sim_state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Simulator]:
    """A running m365sim, on free loopback ports, stopped after the test."""
    marker = request.node.get_closest_marker("m365sim")
    scenario = marker.args[0] if marker and marker.args else "seed"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    _skip_msal_user_realm_discovery(monkeypatch)
    with Simulator(scenario, state_dir=m365sim_state_dir) as sim:
        yield sim
