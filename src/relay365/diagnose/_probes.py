"""The doctor's look at Microsoft's endpoints: reachable over trusted TLS, their clock, the
authorize endpoint's verdict on the app registration, and harmless Graph probes.

Each probe only reads, or asks for something Microsoft refuses without side effects: the
authorize probe uses ``prompt=none`` (no page is shown, no code is redeemed), the send
probe a message with no recipients (Graph refuses it before anything is sent).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ..catalogue import Entry, find_entry, lookup_entry
from ..config import ConnectionSettings

_AADSTS = re.compile(r"AADSTS\d+:?[^<\r\n]*")
GENERIC_TENANTS = ("common", "organizations", "consumers")


@dataclass(frozen=True)
class Reach:
    """One HTTPS request to an endpoint: did TLS work, and what the server's clock says."""

    url: str
    status: int | None = None
    skew: float | None = None  # server's Date minus our clock, seconds
    entry: Entry | None = None  # why it could not be reached
    detail: str = ""

    @property
    def reached(self) -> bool:
        return self.status is not None


async def reach(http: httpx.AsyncClient, url: str) -> Reach:
    """GET ``url``; any HTTP answer proves the TLS handshake with the configured trust."""
    started = time.time()
    try:
        response = await http.get(url)
    except httpx.TimeoutException as exc:
        return Reach(url, entry=lookup_entry("R365-NETWORK"), detail=f"timed out ({type(exc).__name__})")
    except httpx.HTTPError as exc:
        text = f"{type(exc).__name__}: {exc}"
        untrusted = "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text
        entry = lookup_entry("R365-TLS-UNTRUSTED" if untrusted else "R365-NETWORK")
        return Reach(url, entry=entry, detail=text[:300])
    finished = time.time()
    skew = None
    date = response.headers.get("date")
    if date:
        try:
            server = parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            server = None
        if server is not None:
            if server.tzinfo is None:
                server = server.replace(tzinfo=dt.UTC)
            skew = server.timestamp() - (started + finished) / 2
    return Reach(url, status=response.status_code, skew=skew)


@dataclass(frozen=True)
class Verdict:
    """What the authorize endpoint says of a sign-in that has not happened yet."""

    ok: bool
    detail: str
    entry: Entry | None = None


def _aadsts_line(text: str) -> str | None:
    found = _AADSTS.search(text)
    return found.group(0).strip() if found else None


async def authorize_probe(http: httpx.AsyncClient, settings: ConnectionSettings,
                          scopes: list[str]) -> Verdict:
    """Ask the authorize endpoint for a silent sign-in (``prompt=none``) and read its verdict.

    Microsoft checks the tenant, the client id, the redirect URI and the account types
    before anything else, so a single-tenant app on /common (AADSTS50194), an unknown app
    (AADSTS700016) or an unregistered redirect URI (AADSTS50011) show here before any
    sign-in.  Without a browser session the answer is otherwise ``login_required``.
    """
    params = {"client_id": settings.client_id, "response_type": "code",
              "redirect_uri": settings.redirect_uri, "response_mode": "query", "prompt": "none",
              "scope": " ".join([*scopes, "offline_access", "openid", "profile"]),
              "state": secrets.token_urlsafe(12)}
    if settings.account:
        params["login_hint"] = settings.account
    url = f"{settings.authority()}/oauth2/v2.0/authorize"
    try:
        response = await http.get(url, params=params)
    except httpx.HTTPError as exc:
        return Verdict(False, f"the authorize endpoint could not be reached ({type(exc).__name__})",
                       lookup_entry("R365-NETWORK"))
    location = response.headers.get("location")
    if response.is_redirect and location:
        parts = urllib.parse.urlsplit(location)
        answer = dict(urllib.parse.parse_qsl(parts.query))
        answer.update(urllib.parse.parse_qsl(parts.fragment))
        if "code" in answer:
            return Verdict(True, "Microsoft accepts the app registration, the tenant and the redirect URI, "
                                 "and the account has consented")
        error = answer.get("error")
        if not error:
            return Verdict(True, "Microsoft accepts the app registration and asks for a sign-in")
        description = (answer.get("error_description") or "").splitlines()[0] if answer.get(
            "error_description") else ""
        if error == "login_required":
            return Verdict(True, "Microsoft accepts the app registration, the tenant and the redirect "
                                 "URI; someone has to sign in (relay365 login)")
        entry = find_entry(description, error)
        if error == "consent_required":
            entry = lookup_entry("AAD-CONSENT-MISSING")
        if error == "interaction_required" and entry is None:
            return Verdict(True, f"Microsoft accepts the app registration and wants an interactive "
                                 f"sign-in: {description or error}")
        return Verdict(False, f"the authorize endpoint answered {error}: {description or '-'}",
                       entry or lookup_entry("R365-AUTH"))
    line = _aadsts_line(response.text)
    if line is not None:
        return Verdict(False, f"Microsoft's sign-in page says: {line}",
                       find_entry(line) or lookup_entry("R365-AUTH"))
    if response.status_code >= 400:
        return Verdict(False, f"the authorize endpoint answered HTTP {response.status_code}",
                       lookup_entry("R365-AUTH"))
    return Verdict(True, "Microsoft shows its sign-in page: the app registration is accepted")


@dataclass(frozen=True)
class GraphReply:
    status: int | None
    code: str | None = None
    message: str = ""
    body: dict[str, Any] | None = None

    def entry(self) -> Entry | None:
        return find_entry(self.code, self.message)


async def graph_call(http: httpx.AsyncClient, method: str, url: str, token: str,
                     json: dict[str, Any] | None = None) -> GraphReply:
    try:
        response = await http.request(method, url, json=json,
                                      headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return GraphReply(None, "R365-NETWORK", f"{type(exc).__name__}: {exc}"[:300])
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return GraphReply(response.status_code, str(error.get("code") or ""),
                          str(error.get("message") or ""), body)
    return GraphReply(response.status_code, None, response.reason_phrase,
                      body if isinstance(body, dict) else None)


def probe_message(sender: str) -> dict[str, Any]:
    """A sendMail body Graph refuses for having no recipient, after checking the sender.

    Graph checks the token, the permission, the mailbox and the right to send as the
    From address before the recipients, so the refusal tells which of them fails; with
    no recipient nothing can be sent.
    """
    return {"message": {"subject": "relay365 doctor probe (never sent)",
                        "body": {"contentType": "Text", "content": "relay365 doctor"},
                        "from": {"emailAddress": {"address": sender}},
                        "toRecipients": []},
            "saveToSentItems": False}
