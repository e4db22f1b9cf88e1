"""`relay365 explain` as a process: a line in the arguments, on standard input, and one it does not know."""

from __future__ import annotations

import json
import subprocess
import sys


def test_explain_as_a_command() -> None:
    line = ("535 5.7.139 Authentication unsuccessful, user is locked by your organization's security "
            "defaults policy.")
    shown = subprocess.run([sys.executable, "-m", "relay365", "explain", *line.split()],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "SMTP-SECURITY-DEFAULTS" in shown.stdout and "Fix:" in shown.stdout
    piped = subprocess.run([sys.executable, "-m", "relay365", "explain", "--json", "-"],
                           input="AADSTS7000222", capture_output=True, text=True, timeout=60)
    assert json.loads(piped.stdout)["id"] == "AAD-SECRET-EXPIRED"
    unknown = subprocess.run([sys.executable, "-m", "relay365", "explain", "all quiet"],
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1 and "No catalogue entry" in unknown.stdout
