"""A running ``relay365 serve`` on m365sim, signed in, for the integrations' tests.

One relay per test module (starting m365sim, signing in and starting the relay takes
seconds); tests tell their messages apart by subject and recipient.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from m365sim import DeliveredMessage, Simulator
from relay365.config import settings_from_dict, write_settings
from relay365.demo import demo_settings
from tests.e2e.relay365.test_serve import free_port, relay, sign_in

SHARED = "info@contoso.com"


@dataclass
class RunningRelay:
    sim: Simulator
    config: Path
    smtp_port: int
    http_url: str

    def delivered(self, address: str, subject: str, timeout: float = 60) -> DeliveredMessage:
        """The message with ``subject`` in ``address``'s m365sim mailbox, once it is there."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.sim.mailbox(address).messages if m.subject == subject]
            if found:
                return found[-1]
            assert time.monotonic() < deadline, f"{subject!r} never reached {address}"
            time.sleep(0.1)

    def subjects(self, address: str) -> list[str]:
        return [m.subject for m in self.sim.mailbox(address).messages]


@contextmanager
def running_relay(workdir: Path, state_dir: Path, *, relay_settings: dict[str, Any] | None = None,
                  **connection: Any) -> Iterator[RunningRelay]:
    """m365sim (seed), a config for it, the admin signed in, and ``relay365 serve`` running."""
    with pytest.MonkeyPatch.context() as mp:
        # What the m365sim fixture does for MSAL against a local authority.
        mp.delenv("REQUESTS_CA_BUNDLE", raising=False)
        mp.delenv("CURL_CA_BUNDLE", raising=False)
        from msal.authority import Authority

        hosts = set(getattr(Authority, "_domains_without_user_realm_discovery", set()))
        mp.setattr(Authority, "_domains_without_user_realm_discovery", hosts | {"127.0.0.1"}, raising=False)
        with Simulator("seed", state_dir=state_dir) as sim:
            port = free_port()
            data = demo_settings(sim, workdir)
            data["connections"][0].update(connection)
            data["relay"] = {"smtp": [{"host": "127.0.0.1", "port": port}], "http_port": 0,
                             **(relay_settings or {})}
            data["delivery"] = {"minimal_backoff": 0.2}
            config = workdir / "relay365.toml"
            write_settings(settings_from_dict(data, env={}), config)
            sign_in(sim, config)
            with relay(config) as (_, ready):
                yield RunningRelay(sim, config, port, ready["http_url"])
