"""When a connection's credentials expire: read from Microsoft Graph when permitted, else locally.

Graph's ``applications(appId='...')`` lists the app registration's secrets and
certificates with their end dates (reference §7.2).  It needs Application.Read.All, which
relay365's sign-in does not ask for, so a 403 is the common answer: it means "unknown",
not a failure, and the date recorded at ``relay365 init`` (``secret_expires``) is used
instead.  A certificate's end date is read from ``certificate_file`` itself.

The doctor and the expiry watch (``relay365.alerts``) both read expiries here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..auth import TokenSource, read_credential
from ..config import ConnectionSettings
from ..errors import AuthError, ConfigError

CredentialKind = Literal["client secret", "certificate"]
# Days before the end date at which a warning is due (and the expiry watch alerts).
WARN_DAYS = (60, 30, 14, 7, 1, 0)


@dataclass(frozen=True)
class CredentialExpiry:
    """One credential of a connection and when it expires (None: unknown)."""

    connection: str
    kind: CredentialKind
    key: str  # stable: Graph's keyId, the certificate's thumbprint, or "configured"
    expires_at: dt.datetime | None
    source: str  # where the date comes from, in words

    def days_left(self, now: dt.datetime) -> int | None:
        """Whole days left (0: less than a day, "today"; negative once expired)."""
        if self.expires_at is None:
            return None
        return math.floor((self.expires_at - now).total_seconds() / 86400)

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class GraphAnswer:
    """What ``applications(appId=...)`` answered: the body, or a status meaning "unknown"."""

    status: int
    body: dict[str, Any] | None = None
    code: str | None = None


def _parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


async def read_application(settings: ConnectionSettings, tokens: TokenSource,
                           http: httpx.AsyncClient) -> GraphAnswer:
    """GET the connection's app registration from Graph (one forced refresh on a 401)."""
    url = (f"{settings.graph_url.rstrip('/')}/applications(appId='{quote(settings.client_id)}')"
           "?$select=id,appId,passwordCredentials,keyCredentials")
    stale: str | None = None
    for _ in range(2):
        try:
            token = await tokens.acquire_token("graph", force_refresh=stale is not None, stale=stale)
        except AuthError as exc:
            return GraphAnswer(status=0, code=exc.entry.id)
        try:
            response = await http.get(url, headers={"Authorization": f"Bearer {token.value}"})
        except httpx.HTTPError:
            return GraphAnswer(status=0, code="R365-NETWORK")
        if response.status_code == 401 and stale is None:
            stale = token.value  # expired early, or the emulator's clock moved: refresh once
            continue
        body: Any = None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 200 and isinstance(body, dict):
            return GraphAnswer(status=200, body=body)
        error = body.get("error") if isinstance(body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        return GraphAnswer(status=response.status_code, code=str(code) if code else None)
    return GraphAnswer(status=401, code="InvalidAuthenticationToken")


def _secret_value(settings: ConnectionSettings) -> str | None:
    try:
        credential = read_credential(settings)
    except ConfigError:
        return None
    return credential if isinstance(credential, str) else None


def _thumbprint(settings: ConnectionSettings) -> tuple[str, dt.datetime] | None:
    if settings.certificate_file is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(settings.certificate_file.read_bytes())
    except (OSError, ValueError):
        return None
    der = cert.public_bytes(Encoding.DER)
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(), cert.not_valid_after_utc


def expiries_from_graph(settings: ConnectionSettings, body: dict[str, Any]) -> list[CredentialExpiry]:
    """The connection's own credentials among the app registration's.

    A secret is recognised by its ``hint`` (its first three characters), a certificate by
    its thumbprint; when the hint matches several secrets, the soonest end date counts.
    """
    found: list[CredentialExpiry] = []
    secret = _secret_value(settings)
    if secret is not None:
        mine = [c for c in body.get("passwordCredentials") or []
                if isinstance(c, dict) and c.get("hint") and secret.startswith(str(c["hint"]))]
        ends = [(e, str(c.get("keyId") or "secret")) for c in mine
                if (e := _parse_time(c.get("endDateTime"))) is not None]
        if ends:
            end, key = min(ends)
            found.append(CredentialExpiry(settings.name, "client secret", key, end,
                                          "the app registration, read from Microsoft Graph"))
    cert = _thumbprint(settings)
    if cert is not None:
        for c in body.get("keyCredentials") or []:
            if isinstance(c, dict) and str(c.get("customKeyIdentifier") or "").upper() == cert[0]:
                cert_end = _parse_time(c.get("endDateTime"))
                if cert_end is not None:
                    found.append(CredentialExpiry(settings.name, "certificate", cert[0], cert_end,
                                                  "the app registration, read from Microsoft Graph"))
    return found


def local_expiries(settings: ConnectionSettings) -> list[CredentialExpiry]:
    """What the configuration says: ``secret_expires``, and the certificate file's end date."""
    found: list[CredentialExpiry] = []
    has_secret = (settings.client_secret is not None or settings.client_secret_env is not None
                  or settings.client_secret_file is not None)
    if has_secret and settings.certificate_file is None:
        when: dt.datetime | None = None
        if settings.secret_expires is not None:
            when = dt.datetime.combine(settings.secret_expires, dt.time(), tzinfo=dt.UTC)
        found.append(CredentialExpiry(settings.name, "client secret", "configured", when,
                                      "secret_expires in the configuration"))
    cert = _thumbprint(settings)
    if cert is not None:
        found.append(CredentialExpiry(settings.name, "certificate", cert[0], cert[1],
                                      "certificate_file"))
    return found


async def credential_expiries(settings: ConnectionSettings, tokens: list[TokenSource],
                              http: httpx.AsyncClient) -> tuple[list[CredentialExpiry], GraphAnswer | None]:
    """The connection's credentials and their end dates, from Graph when one of ``tokens``
    may read the app registration, otherwise from the configuration.

    Also returns Graph's last answer (None when no token was tried), so a caller can say
    why Graph did not tell.
    """
    local = local_expiries(settings)
    if not local:
        return [], None  # a public client has nothing that expires
    answer: GraphAnswer | None = None
    for source in tokens:
        answer = await read_application(settings, source, http)
        if answer.status == 200 and answer.body is not None:
            remote = expiries_from_graph(settings, answer.body)
            kinds = {e.kind for e in remote}
            return remote + [e for e in local if e.kind not in kinds], answer
    return local, answer
