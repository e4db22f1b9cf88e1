"""`m365sim serve` as a process: its READY line, its listeners, SIGTERM, a bad scenario."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import httpx

from tests.ports import free_port


def test_serve_prints_its_endpoints_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
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
