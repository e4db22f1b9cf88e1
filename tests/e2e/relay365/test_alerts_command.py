"""`relay365 alerts test` as a process, posting to a loopback receiver."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay365.config import settings_from_dict, write_settings
from tests.integration.relay365.test_alerts import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_alerts_test_command_tries_every_channel(receiver: Receiver, tmp_path: Path) -> None:
    config = tmp_path / "relay365.toml"
    write_settings(settings_from_dict({"state_dir": str(tmp_path / "state")}, env={}), config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY365_")}
    ok = subprocess.run([sys.executable, "-m", "relay365", "alerts", "test", "--config", str(config),
                         "--url", receiver.url("one"), "--url", receiver.url("two")],
                        capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0, ok.stderr
    assert sorted(p["path"] for p in receiver.posts) == ["/one", "/two"]
    assert receiver.posts[0]["title"] == "relay365 test alert" and receiver.posts[0]["type"] == "info"
    receiver.status = 500
    refused = subprocess.run([sys.executable, "-m", "relay365", "alerts", "test", "--config", str(config),
                              "--url", receiver.url("three")], capture_output=True, text=True, timeout=60,
                             env=env)
    assert refused.returncode == 1 and "failed" in refused.stdout
