"""The admin page's guards, over real HTTP: login required, CSRF on every POST, the session
cookie, security headers, the login rate limit, no open redirect, and no secret in any page.

Routes come from the page modules' ``ROUTES`` tables, so a page added later is covered
without editing this file; the pages the admin page promises are listed too, so a page that
goes missing fails here instead of passing unnoticed.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import smtplib
import ssl
import tomllib
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from m365sim import Simulator
from relay365 import Client
from relay365.web._signin import CALLBACK_PATH

from .test_serve import free_port, sign_in, write_config
from .web_helpers import ADMIN_PASSWORD, AdminClient, admin_relay

PAGE_MODULES = ["_pages", "_status", "_setup", "_signin", "_log_page", "_tools", "_alerts_page"]
# What the admin page promises (issue 6): each must exist and be behind the login.
PROMISED_PAGES = ["/", "/setup", "/setup/new", "/setup/demo", "/test", "/log", "/alerts", "/doctor"]
PUBLIC_PAGES = {"/login"}
# Microsoft's answer may come back on another host name (localhost), without the session
# cookie: the state of a sign-in started on the page authorises it, nothing else.
SESSIONLESS = {CALLBACK_PATH}
SECRET = "seed~Delegated.Secret-0123456789abcdefghij"  # write_config's client secret (the seed's)
_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")
_HREF = re.compile(r'href="([^"#]+)')
_FORM = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.DOTALL | re.IGNORECASE)


def route_table() -> list[tuple[str, set[str]]]:
    """(path, methods) of every admin route, as ``admin_routes`` mounts them."""
    table: list[tuple[str, set[str]]] = []
    for name in PAGE_MODULES:
        module = importlib.import_module(f"relay365.web.{name}")
        table.extend((path, set(methods)) for path, _, methods in module.ROUTES)
    return table


def fill(path: str, values: dict[str, str] | None = None) -> str:
    """``path`` with its parameters replaced: known values, else a dummy of the right kind."""
    def value(match: re.Match[str]) -> str:
        name, kind = match.group(1), match.group(2)
        if values and name in values:
            return values[name]
        return {"int": "1", "uuid": "00000000-0000-4000-8000-000000000000"}.get(kind or "", "dummy")

    return _PARAM.sub(value, path)


def get_paths(values: dict[str, str] | None = None, *, known_only: bool = False) -> list[str]:
    """Every GET page; with ``known_only``, only those whose parameters all have ``values``."""
    paths = set(PROMISED_PAGES)
    for path, methods in route_table():
        params = {m.group(1) for m in _PARAM.finditer(path)}
        if "GET" in methods and not (known_only and params - set(values or {})):
            paths.add(fill(path, values))
    return sorted(paths)


def post_paths() -> list[str]:
    return sorted({fill(p) for p, methods in route_table() if "POST" in methods})


@pytest.fixture
def admin(m365sim: Simulator, tmp_path: Path) -> Iterator[tuple[AdminClient, dict[str, Any], Path]]:
    """A signed-in relay (connection ``demo`` on m365sim) and a logged-in admin client."""
    config = write_config(m365sim, tmp_path, free_port())
    sign_in(m365sim, config)
    with admin_relay(config) as (client, ready):
        yield client, ready, config


def test_the_route_table_has_the_login_and_post_routes() -> None:
    table = route_table()
    assert ("/login", {"GET"}) in table and ("/login", {"POST"}) in table
    assert "/logout" in post_paths()


def test_every_page_but_login_needs_a_session(admin: tuple[AdminClient, dict[str, Any], Path]) -> None:
    _, ready, _ = admin
    with httpx.Client(base_url=ready["http_url"], timeout=30) as anonymous:
        for path in get_paths():
            response = anonymous.get(path)
            if path in PUBLIC_PAGES:
                assert response.status_code == 200, path
                continue
            if path in SESSIONLESS:
                assert response.status_code == 400, (path, response.status_code)
                assert "not one in progress" in response.text
                forged = anonymous.get(path, params={"state": "forged", "code": "stolen"})
                assert forged.status_code == 400, forged.status_code
                continue
            assert response.status_code == 303, (path, response.status_code)
            location = urllib.parse.urlsplit(response.headers["location"])
            assert location.path == "/login" and not location.netloc, (path, location)
            assert urllib.parse.parse_qs(location.query)["next"] == [path], (path, location)
        assert anonymous.get("/static/relay365.css").status_code == 200


def test_every_post_needs_this_sessions_csrf_token(admin: tuple[AdminClient, dict[str, Any], Path]) -> None:
    client, ready, _ = admin
    other = AdminClient(ready["http_url"])
    try:
        assert other.login().status_code == 303
        foreign_token = other.csrf("/")  # a signed-in page: the logout form carries the token
        own_token = client.csrf("/")
        assert foreign_token != own_token
        paths = post_paths()
        for path in paths:
            for data in ({}, {"csrf": ""}, {"csrf": foreign_token}, {"csrf": own_token + "x"}):
                response = client.http.post(path, data=data)
                assert response.status_code == 403, (path, data, response.status_code)
        with httpx.Client(base_url=ready["http_url"], timeout=30) as anonymous:
            for path in paths:
                assert anonymous.post(path, data={"csrf": own_token}).status_code == 403, path
        # The token itself is good: logging out with it works, and only then.
        assert client.http.post("/logout", data={"csrf": own_token}).status_code == 303
        assert client.get("/").status_code == 303
        assert other.get("/").status_code != 303  # the other session is untouched
    finally:
        other.close()


def test_session_cookie_and_security_headers(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, free_port())
    with admin_relay(config) as (_, ready):
        fresh = AdminClient(ready["http_url"])
        try:
            login_page = fresh.get("/login")
            before = fresh.csrf("/login")
            response = fresh.login()
            after = fresh.csrf("/setup")  # a new session at login: a token seen before is worthless
            assert after != before
            assert fresh.http.post("/logout", data={"csrf": before}).status_code == 403
        finally:
            fresh.close()
    assert response.status_code == 303
    cookies = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    session = [c for c in cookies if c.startswith("relay365_admin=")]
    assert len(session) == 1, cookies
    attributes = {a.strip().split("=")[0].lower(): a.strip() for a in session[0].split(";")[1:]}
    assert "httponly" in attributes and attributes["samesite"].lower() == "samesite=lax"
    assert attributes["path"].lower() == "path=/"
    for page in (login_page, response):
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"


def test_pages_carry_the_security_headers(admin: tuple[AdminClient, dict[str, Any], Path]) -> None:
    client, _, _ = admin
    for path in [*get_paths({"name": "demo"}), "/static/relay365.css"]:
        response = client.get(path)
        assert "default-src 'self'" in response.headers.get("content-security-policy", ""), path


def test_wrong_passwords_are_rate_limited(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, free_port())
    with admin_relay(config) as (_, ready):
        client = AdminClient(ready["http_url"])
        try:
            token = client.csrf("/login")
            for _ in range(5):
                wrong = client.http.post("/login", data={"csrf": token, "password": "guess", "next": "/"})
                assert wrong.status_code == 401
            refused = client.http.post("/login", data={"csrf": token, "password": ADMIN_PASSWORD,
                                                       "next": "/"})
            assert refused.status_code == 429
            assert 0 < int(refused.headers["retry-after"]) <= 300
            assert "Too many wrong passwords" in refused.text
            assert client.get("/login").status_code == 200  # not signed in: no redirect onwards
        finally:
            client.close()


EVIL_TARGETS = ["//evil.example", "//evil.example/path", "https://evil.example/", "http:evil.example",
                "/\\evil.example", "\\\\evil.example", "/\t/evil.example", "%2F%2Fevil.example",
                "////evil.example", " //evil.example"]


def stays_here(base: str, location: str) -> bool:
    target = urllib.parse.urlsplit(urllib.parse.urljoin(base + "/login", location))
    return target.netloc == urllib.parse.urlsplit(base).netloc and "\\" not in location \
        and not re.match(r"^[\s/\\]{2}", location)


def test_next_does_not_leave_the_site(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, free_port())
    with admin_relay(config) as (client, ready):
        base = ready["http_url"]
        for target in EVIL_TARGETS:
            already = client.get("/login", params={"next": target})  # signed in: straight on
            assert already.status_code == 303 and stays_here(base, already.headers["location"]), \
                (target, already.headers["location"])
        fresh = AdminClient(base)
        try:
            for target in EVIL_TARGETS:
                fresh.http.cookies.clear()
                page = fresh.get("/login", params={"next": target})
                hidden = re.search(r'name="next" value="([^"]*)"', page.text)
                assert hidden and stays_here(base, hidden.group(1)), (target, hidden)
                fresh.http.cookies.clear()
                logged_in = fresh.http.post("/login", data={"csrf": fresh.csrf("/login"), "next": target,
                                                            "password": ADMIN_PASSWORD})
                assert logged_in.status_code == 303
                location = logged_in.headers["location"]
                assert stays_here(base, location), (target, location)
            fresh.http.cookies.clear()
            back = fresh.http.post("/login", data={"csrf": fresh.csrf("/login"), "next": "/log?status=failed",
                                                   "password": ADMIN_PASSWORD})
            assert back.headers["location"] == "/log?status=failed"
        finally:
            fresh.close()


def test_login_returns_to_the_whole_address(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, free_port())
    with admin_relay(config) as (_, ready):
        asked = "/log?recipient=a%40example.org&status=failed"
        with httpx.Client(base_url=ready["http_url"], timeout=30) as anonymous:
            location = urllib.parse.urlsplit(anonymous.get(asked).headers["location"])
        assert urllib.parse.parse_qs(location.query)["next"] == [asked]


def stored_tokens(config: Path) -> set[str]:
    """Every token value in the connection's token cache (access, refresh and ID tokens)."""
    async def load() -> str | None:
        async with Client(config) as client:
            return await (await client.store()).load_token_cache("demo")

    text = asyncio.run(load())
    assert text, "nobody signed in"
    cache = json.loads(text)
    tokens = {str(entry["secret"]) for section in ("AccessToken", "RefreshToken", "IdToken")
              for entry in cache.get(section, {}).values()}
    assert tokens
    return tokens


def crawl(client: AdminClient, start: list[str]) -> dict[str, str]:
    """Every same-site page reachable by GET from ``start``: path → HTML."""
    seen: dict[str, str] = {}
    queue = list(start)
    while queue:
        path = queue.pop(0)
        if path in seen or path.startswith(("/static/", "/api/", CALLBACK_PATH)):
            continue
        response = client.get(path)
        assert response.status_code in (200, 303), (path, response.status_code)
        if response.status_code == 303:
            target = response.headers["location"]
            assert not target.startswith("/login"), f"{path}: the crawl's session ended"
            queue.append(target)
            continue
        seen[path] = response.text
        for href in _HREF.findall(response.text):
            parts = urllib.parse.urlsplit(href)
            if not parts.netloc and href.startswith("/"):
                queue.append(parts.path + (f"?{parts.query}" if parts.query else ""))
    return seen


def sign_in_from_the_page(client: AdminClient, sim: Simulator) -> str:
    """The page's "Sign in with Microsoft 365" as a browser does it; the result page's path.
    The seed's browser user has consented, so m365sim answers the authorize request at once."""
    started = client.post("/setup/demo/sign-in", form_page="/setup/demo")
    assert started.status_code in (302, 303), started.status_code
    with httpx.Client(verify=ssl.create_default_context(cafile=str(sim.ca_file)), timeout=30) as microsoft:
        callback = microsoft.get(started.headers["location"])
    assert callback.status_code == 302, callback.text
    landed = client.get(callback.headers["location"])
    assert landed.status_code == 303, landed.text
    return urllib.parse.urlsplit(landed.headers["location"]).path


# An alert channel's credentials sit in its URL: user, password, path and query.
ALERT_SECRETS = ["alert-pass-4f7d", "hook-token-9c2e", "query-secret-71b"]
ALERT_URL = "json://alerts:alert-pass-4f7d@127.0.0.1:9/hook-token-9c2e?key=query-secret-71b"


def test_no_secret_or_token_in_any_page(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, free_port())
    data = tomllib.loads(config.read_text(encoding="utf-8"))
    data.setdefault("alerts", {})["urls"] = [ALERT_URL]
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    sign_in(m365sim, config)
    with admin_relay(config) as (client, ready):
        with smtplib.SMTP(ready["smtp_host"], ready["smtp_port"], timeout=30) as smtp:
            smtp.sendmail("info@contoso.com", ["crawl@example.org"],
                          b"From: info@contoso.com\r\nTo: crawl@example.org\r\nSubject: crawl\r\n\r\nhi\r\n")
        # Every page with a known address, the page sign-in's result, and what they link to.
        start = [*get_paths({"name": "demo"}, known_only=True), sign_in_from_the_page(client, m365sim)]
        pages = crawl(client, start)
    forbidden = {SECRET, *ALERT_SECRETS, *stored_tokens(config)}
    password_hash = re.search(r'password_hash = "([^"]+)"', config.read_text())
    assert password_hash
    forbidden.add(password_hash.group(1))
    for path, html in pages.items():
        for value in forbidden:
            assert value not in html, f"{path} shows a secret ({value[:12]}...)"
    assert set(PROMISED_PAGES) <= set(pages), sorted(set(PROMISED_PAGES) - set(pages))
    # Every POST form carries the token; no GET form does (it would end up in URLs and logs).
    for path, html in pages.items():
        for attributes, body in _FORM.findall(html):
            posts = re.search(r'method="post"', attributes, re.IGNORECASE) is not None
            assert ('name="csrf"' in body) == posts, (path, attributes)
    # The crawl saw the places a secret could show: the channel (masked), a message, a sign-in.
    assert "json://" in pages["/alerts"] and "127.0.0.1" in pages["/alerts"]
    assert any(re.fullmatch(r"/log/[^/]+", p) for p in pages)
    assert any("/signed-in/" in p for p in pages)
