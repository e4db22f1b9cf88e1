"""The admin password from the command line, and the demo's admin page."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

from argon2 import PasswordHasher

from .test_cli import relay365
from .test_serve import env
from .web_helpers import AdminClient


def test_admin_set_password_stores_only_an_argon2_hash(tmp_path: Path) -> None:
    config = tmp_path / "relay365.toml"
    config.write_text('state_dir = "state"\n')
    done = relay365("admin", "set-password", "--config", str(config), "--stdin", input="s3cret-enough\n")
    assert done.returncode == 0, done.stderr
    text = config.read_text()
    assert "s3cret-enough" not in text
    stored = tomllib.loads(text)
    assert stored["state_dir"] == "state"  # the rest of the file is kept
    assert PasswordHasher().verify(stored["admin"]["password_hash"], "s3cret-enough")
    assert oct(config.stat().st_mode & 0o777) == "0o600"

    short = relay365("admin", "set-password", "--config", str(config), "--stdin", input="short\n")
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    assert config.read_text() == text


def test_init_asks_for_the_admin_password(tmp_path: Path) -> None:
    config = tmp_path / "relay365.toml"
    answers = "\n".join(["contoso", "contoso.onmicrosoft.com", "11111111-aaaa-4bbb-8ccc-111111111111",
                         "admin@contoso.com", "admin@contoso.com", "", "", "pa55-for-the-page",
                         "pa55-for-the-page"]) + "\n"
    done = relay365("init", "--config", str(config), input=answers)
    assert done.returncode == 0, done.stdout + done.stderr
    stored = tomllib.loads(config.read_text())
    assert PasswordHasher().verify(stored["admin"]["password_hash"], "pa55-for-the-page")


def test_the_demo_serves_its_admin_page_behind_a_one_time_password() -> None:
    with subprocess.Popen([sys.executable, "-m", "relay365", "demo"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env={**env(), "COLUMNS": "2000"}) as demo:
        assert demo.stdout is not None
        ready = None
        for line in demo.stdout:
            if line.startswith("READY "):
                ready = json.loads(line[6:])
                break
        assert ready is not None, "the demo printed no READY line"
        try:
            admin = AdminClient(ready["http_url"])
            assert admin.login("not the password").status_code == 401
            assert admin.login(ready["admin_password"]).status_code == 303
            setup = admin.get("/setup")
            assert setup.status_code == 200 and ">demo</a>" in setup.text
            assert "signed in" in setup.text
            log = admin.get("/log")  # the demo's mail, through every way in, delivered
            for way in ("SMTP", "sendmail", "the HTTP API"):
                assert f"relay365 demo via {way}" in log.text
            assert log.text.count('data-state="sent"') >= 3
            admin.close()
        finally:
            demo.send_signal(signal.SIGTERM)
            demo.wait(60)


def test_a_new_admin_password_signs_every_session_out(tmp_path: Path) -> None:
    from .test_serve import eventually, relay
    from .web_helpers import ADMIN_PASSWORD, empty_config, with_admin_password

    config = with_admin_password(empty_config(tmp_path))
    with relay(config) as (proc, ready):
        admin = AdminClient(ready["http_url"])
        assert admin.login().status_code == 303
        assert admin.get("/").status_code == 200
        changed = relay365("admin", "set-password", "--config", str(config), "--stdin", input="a-new-one-9\n")
        assert changed.returncode == 0, changed.stderr
        proc.send_signal(signal.SIGHUP)
        eventually(lambda: admin.get("/").status_code == 303, timeout=30)  # back to the login
        assert admin.login(ADMIN_PASSWORD).status_code == 401
        assert admin.login("a-new-one-9").status_code == 303
        admin.close()
