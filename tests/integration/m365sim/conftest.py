"""Clients of m365sim for the tests: MSAL applications and an httpx client trusting its CA.

Tokens come from the emulator's real endpoints through MSAL, as a user's code gets them.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import httpx
import msal
import pytest

from m365sim import Simulator

SEED_DELEGATED_APP = "11111111-aaaa-4bbb-8ccc-111111111111"
SEED_DELEGATED_SECRET = "seed~Delegated.Secret-0123456789abcdefghij"
SEED_APP_ONLY = "22222222-aaaa-4bbb-8ccc-222222222222"
SEED_APP_ONLY_SECRET = "seed~AppOnly.Secret-abcdefghij0123456789"
GRAPH = "https://graph.microsoft.com"
MEGAN = ("megan@contoso.com", "Megan-Pa55word")


def confidential(sim: Simulator, client_id: str = SEED_DELEGATED_APP,
                 credential: Any = SEED_DELEGATED_SECRET, tenant: str | None = None,
                 ) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id, client_credential=credential, authority=sim.authority(tenant),
        instance_discovery=False, verify=str(sim.ca_file),
    )


def public(sim: Simulator, client_id: str = SEED_DELEGATED_APP,
           tenant: str | None = None) -> msal.PublicClientApplication:
    return msal.PublicClientApplication(
        client_id, authority=sim.authority(tenant), instance_discovery=False,
        verify=str(sim.ca_file),
    )


def https(sim: Simulator, **kwargs: Any) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(sim.ca_file))
    return httpx.Client(verify=ctx, timeout=30, **kwargs)


def app_only_token(sim: Simulator, resource: str = GRAPH) -> str:
    result = confidential(sim, SEED_APP_ONLY, SEED_APP_ONLY_SECRET).acquire_token_for_client(
        [f"{resource}/.default"])
    assert "access_token" in result, result
    return str(result["access_token"])


def ropc_token(sim: Simulator, scopes: list[str], user: tuple[str, str] = MEGAN) -> str:
    # MSAL deprecates the password grant for public clients; confidential ones may use it.
    result = confidential(sim).acquire_token_by_username_password(user[0], user[1], scopes=scopes)
    assert "access_token" in result, result
    return str(result["access_token"])


class _HiddenFields(HTMLParser):
    """The fields of a form_post response page (what a browser would POST back)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self.action = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.action = a.get("action") or ""
        if tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.fields[str(a["name"])] = a.get("value") or ""


def form_post_fields(html: str) -> tuple[str, dict[str, str]]:
    parser = _HiddenFields()
    parser.feed(html)
    return parser.action, parser.fields


def redirect_params(response: httpx.Response) -> dict[str, str]:
    """What the redirect URI receives: the query of a 302, or a form_post page's fields."""
    if response.status_code == 302:
        location = response.headers["location"]
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert response.status_code == 200, response.text
    return form_post_fields(response.text)[1]


def auth_code_token(sim: Simulator, scopes: list[str], *,
                    app: msal.ClientApplication | None = None,
                    redirect_uri: str = "http://localhost:8765") -> dict[str, Any]:
    """Authorization code + PKCE with the scenario's already signed-in browser_user."""
    app = app or confidential(sim)
    flow = app.initiate_auth_code_flow(scopes, redirect_uri=redirect_uri,
                                       response_mode="form_post")
    with https(sim) as client:
        response = client.get(flow["auth_uri"])
    return dict(app.acquire_token_by_auth_code_flow(flow, redirect_params(response)))


def freeze_clock(sim: Simulator) -> None:
    """Stop real time on the emulator's clock: then only ``sim.advance`` moves it, limit windows too.

    A test counting what a (compressed) minute allows would otherwise count what the machine
    manages to send in a real second.
    """
    sim._call(lambda s: s.clock.freeze())


def delegated_token(sim: Simulator, scopes: list[str]) -> str:
    result = auth_code_token(sim, scopes)
    assert "access_token" in result, result
    return str(result["access_token"])


@pytest.fixture
def graph(m365sim: Simulator) -> Iterator[httpx.Client]:
    """An httpx client for Graph on the running emulator."""
    with https(m365sim, base_url=m365sim.graph_url) as client:
        yield client
