"""pytest plugin: the ``m365sim`` fixture, a running emulator for each test.

    @pytest.mark.m365sim("no-send-as")      # scenario name or path; default "seed"
    def test_something(m365sim):
        app = msal.ConfidentialClientApplication(
            client_id, client_credential=secret, authority=m365sim.authority(),
            instance_discovery=False, verify=str(m365sim.ca_file))

The fixture removes ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE`` for the test: when
they are set, ``requests`` (and so MSAL) ignores ``verify=`` and would not trust the
emulator's CA.
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
    with Simulator(scenario, state_dir=m365sim_state_dir) as sim:
        yield sim
