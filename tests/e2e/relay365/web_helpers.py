"""The admin page under test: a relay process with an admin password, and a logged-in client.

``admin_relay`` runs `relay365 serve` on a config written by ``write_config`` plus an admin
password; ``AdminClient`` logs in over real HTTP and posts forms with the page's CSRF token.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from relay365.config import settings_from_dict, write_settings
from relay365.ingress import hash_password

from .test_serve import free_port, relay

ADMIN_PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def empty_config(tmp_path: Path) -> Path:
    """A relay with no connection yet: what `relay365 serve` runs on before setup."""
    data = {"state_dir": str(tmp_path / "state"),
            "relay": {"smtp": [{"host": "127.0.0.1", "port": free_port()}], "http_port": 0},
            "delivery": {"minimal_backoff": 0.2}}
    config = tmp_path / "relay365.toml"
    write_settings(settings_from_dict(data, env={}), config)
    return config


def with_admin_password(config: Path, password: str = ADMIN_PASSWORD) -> Path:
    """``config`` with ``[admin] password_hash`` set (the file is rewritten in place)."""
    data = tomllib.loads(config.read_text(encoding="utf-8"))
    data.setdefault("admin", {})["password_hash"] = hash_password(password)
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    return config


class AdminClient:
    """A browser-like HTTP client of the admin page: cookies kept, CSRF token taken from pages."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=60, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def csrf(self, page: str = "/login") -> str:
        """The session's CSRF token, as the form on ``page`` carries it."""
        found = _CSRF.search(self.http.get(page).text)
        assert found, f"no CSRF token in {page}"
        return found.group(1)

    def login(self, password: str = ADMIN_PASSWORD) -> httpx.Response:
        return self.http.post("/login", data={"csrf": self.csrf("/login"), "password": password, "next": "/"})

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, *, form_page: str = "/",
             **kwargs: Any) -> httpx.Response:
        """POST a form with the CSRF token of the page ``form_page`` (as a browser would)."""
        return self.http.post(path, data={"csrf": self.csrf(form_page), **(data or {})}, **kwargs)


@contextmanager
def admin_relay(config: Path) -> Iterator[tuple[AdminClient, dict[str, Any]]]:
    """`relay365 serve` on ``config`` (given an admin password) and a client logged in to it."""
    with_admin_password(config)
    with relay(config) as (_, ready):
        client = AdminClient(ready["http_url"])
        try:
            assert client.login().status_code == 303
            yield client, ready
        finally:
            client.close()
