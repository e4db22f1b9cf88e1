"""`relay365 install-service`: the unit it writes, checked by systemd's own tools.

`systemd-analyze verify` loads the unit as systemd would (it only warns on unknown or
malformed directives, so any output fails the test); `systemd-analyze security --offline`
scores its hardening.  Both run unprivileged, without a running systemd.  Where they are
missing the directives are still checked with a parser.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay365.integrations.systemd import ServiceOptions, unit_text
from tests.e2e.relay365.test_serve import env

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="needs systemd-analyze: apt-get install systemd")


def install_service(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay365", "install-service", *args], capture_output=True,
                          text=True, timeout=60, env=env())


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit, values of repeated keys in order (systemd's own syntax)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line.strip())
        if header:
            section = header.group(1)
            continue
        key, eq, value = line.partition("=")
        assert eq, f"not a directive: {line!r}"
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    path = tmp_path / "relay365.service"
    result = install_service("--output", str(path), "--config", "/etc/relay365/relay365.toml")
    assert result.returncode == 0, result.stderr
    assert f"Wrote {path}" in result.stdout
    assert "systemctl enable --now relay365" in result.stdout
    assert "useradd --system" in result.stdout
    return path


def test_the_unit_is_hardened(unit: Path) -> None:
    d = directives(unit.read_text())
    executable = Path(sys.executable).with_name("relay365")
    assert d["Service.ExecStart"] == [f"{executable} serve --config /etc/relay365/relay365.toml "
                                      "--log-format json --grace 30"]
    assert d["Service.User"] == ["relay365"] and d["Service.Group"] == ["relay365"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "StateDirectory": "relay365", "Restart": "on-failure", "PrivateTmp": "yes",
                       "PrivateDevices": "yes", "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": "",
                       "ExecReload": "/bin/kill -HUP $MAINPID", "Type": "exec"}.items():
        assert d[f"Service.{key}"] == [value], key
    assert d["Service.SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert d["Install.WantedBy"] == ["multi-user.target"]
    assert "Service.DynamicUser" not in d  # login and sendmail must reach the store as that user


def test_privileged_ports_and_a_program_under_home() -> None:
    d = directives(unit_text(ServiceOptions(Path("/home/ops/venv/bin/relay365"), privileged_ports=True)))
    assert d["Service.CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert d["Service.AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert d["Service.ProtectHome"] == ["read-only"]


def test_an_existing_unit_is_kept_unless_forced(unit: Path) -> None:
    unit.write_text("# mine\n")
    kept = install_service("--output", str(unit))
    assert kept.returncode == 1 and "--force" in kept.stderr and unit.read_text() == "# mine\n"
    assert install_service("--output", str(unit), "--force").returncode == 0
    assert "ProtectSystem=strict" in unit.read_text()


def test_a_config_with_another_state_dir_is_warned_about(tmp_path: Path) -> None:
    config = tmp_path / "relay365.toml"
    config.write_text(f'state_dir = "{tmp_path}"\n')
    result = install_service("--output", str(tmp_path / "relay365.service"), "--config", str(config))
    assert result.returncode == 0
    # The warning names tmp_path twice, so it may wrap at COLUMNS (xdist's tmp paths are longer).
    assert 'set state_dir = "/var/lib/relay365"' in " ".join(result.stdout.split())


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(unit: Path) -> None:
    result = subprocess.run([str(ANALYZE), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


@needs_analyze
def test_systemd_analyze_verify_would_see_a_mistake(unit: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad" / "relay365.service"
    bad.parent.mkdir()
    bad.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    result = subprocess.run([str(ANALYZE), "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'ProtectSytem'" in result.stderr


@needs_analyze
def test_systemd_rates_the_hardening_ok(unit: Path) -> None:
    result = subprocess.run([str(ANALYZE), "security", "--offline=yes", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for relay365\.service: ([0-9.]+) (\w+)", result.stdout)
    assert score is not None, result.stdout + result.stderr
    assert float(score.group(1)) <= 2.0 and score.group(2) == "OK"
