"""`relay365 docs generate` as a process: it finds stale references, writes them, checks them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.relay365.test_serve import env

DOCS = Path(__file__).resolve().parents[3] / "docs"


def test_generate_and_check_from_the_command_line(tmp_path: Path) -> None:
    def relay365(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "relay365", *args], capture_output=True, text=True,
                              timeout=120, env=env())

    stale = relay365("docs", "generate", "--check", str(tmp_path))
    assert stale.returncode == 1 and "troubleshooting.md" in stale.stderr
    wrote = relay365("docs", "generate", str(tmp_path))
    assert wrote.returncode == 0 and "reference/cli.md" in wrote.stdout
    assert relay365("docs", "generate", "--check", str(tmp_path)).returncode == 0
    for name in ("reference/configuration.md", "reference/cli.md", "troubleshooting.md"):
        assert (tmp_path / name).read_text() == (DOCS / name).read_text()
    committed = relay365("docs", "generate", "--check")  # the repository's docs/, by default
    assert committed.returncode == 0, committed.stderr
