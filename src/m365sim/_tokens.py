"""Signing and checking the JWTs m365sim issues and receives.

Access tokens follow Graph's v1.0 format whatever endpoint issued them (the resource
decides the format, reference §7.4): ``iss`` is ``https://sts.windows.net/{tid}/``,
delegated tokens carry ``scp`` and the user's ``upn``/``oid``, app-only tokens carry
``roles`` and the service principal's ``oid``.  Expiry is judged against the emulator's
clock, not the wall clock, so ``advance()`` expires tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ._clock import Clock


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def _int_b64(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class AccessClaims:
    """What Graph and SMTP need to know about a presented access token."""

    raw: dict[str, Any]

    @property
    def app_only(self) -> bool:
        return self.raw.get("idtyp") == "app"

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(s.lower() for s in str(self.raw.get("scp", "")).split())

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(r.lower() for r in self.raw.get("roles", []))

    def has_permission(self, name: str) -> bool:
        n = name.lower()
        return n in self.roles if self.app_only else n in self.scopes

    @property
    def user_id(self) -> str | None:
        return None if self.app_only else str(self.raw["oid"])

    @property
    def upn(self) -> str | None:
        return self.raw.get("upn")

    @property
    def client_id(self) -> str:
        return str(self.raw["appid"])

    @property
    def audience(self) -> str:
        return str(self.raw["aud"])

    @property
    def expires(self) -> float:
        return float(self.raw["exp"])


class TokenInvalid(Exception):
    """A presented token is unusable; ``reason`` is a graph_errors.toml key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenAuthority:
    """Issues and verifies m365sim's tokens with one RSA key."""

    def __init__(self, key: rsa.RSAPrivateKey, clock: Clock) -> None:
        self._key = key
        self._public = key.public_key()
        self.clock = clock
        numbers = self._public.public_numbers()
        self.kid = b64url(hashlib.sha256(_int_b64(numbers.n).encode()).digest()[:20])
        self._jwk = {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": _int_b64(numbers.n),
            "e": _int_b64(numbers.e),
        }
        # Verifying RS256 costs more than the rest of a sendMail; tokens are reused
        # thousands of times, so remember the claims of the ones already checked.
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._jwk]}

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "typ": "JWT"})

    def verify_access_token(self, token: str, audiences: tuple[str, ...]) -> AccessClaims:
        """Claims of a token this emulator signed, checked for expiry and audience."""
        if not token:
            raise TokenInvalid("token_missing")
        claims = self._verified.get(token)
        if claims is None:
            try:
                claims = jwt.decode(
                    token, self._public, algorithms=["RS256"],
                    options={"verify_exp": False, "verify_aud": False, "verify_iat": False,
                             "verify_nbf": False},
                )
            except jwt.InvalidSignatureError as exc:
                raise TokenInvalid("token_bad_signature") from exc
            except jwt.PyJWTError as exc:
                raise TokenInvalid("token_invalid") from exc
            self._verified[token] = claims
            if len(self._verified) > 4096:
                self._verified.popitem(last=False)
        if float(claims.get("exp", 0)) <= self.clock.now():
            raise TokenInvalid("token_expired")
        if claims.get("aud") not in audiences:
            raise TokenInvalid("token_bad_signature")
        return AccessClaims(claims)

    def new_jti(self) -> str:
        return b64url(uuid.uuid4().bytes)


def verify_client_assertion(
    assertion: str, certificates: list[x509.Certificate], client_id: str,
    token_endpoints: tuple[str, ...], now: float,
) -> str | None:
    """Check a certificate-signed client assertion; return a problem name or None.

    Problems: ``unknown_key`` (no registered certificate matches the thumbprint),
    ``signature``, ``claims`` (iss/sub/aud wrong), ``time`` (expired or not yet valid),
    ``cert_expired``.
    """
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        return "signature"
    cert = _match_certificate(header, certificates)
    if cert is None:
        return "unknown_key"
    if not (cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp()):
        return "cert_expired"
    try:
        claims = jwt.decode(
            assertion, cert.public_key(), algorithms=["RS256", "PS256"],  # type: ignore[arg-type]
            options={"verify_exp": False, "verify_aud": False, "verify_iat": False,
                     "verify_nbf": False},
        )
    except jwt.PyJWTError:
        return "signature"
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        return "claims"
    aud = claims.get("aud")
    if aud not in token_endpoints:
        return "claims"
    skew = 300
    if float(claims.get("exp", 0)) + skew < now or float(claims.get("nbf", 0)) - skew > now:
        return "time"
    return None


def _match_certificate(header: dict[str, Any], certs: list[x509.Certificate]) -> x509.Certificate | None:
    # MSAL pads the base64url thumbprint, the JOSE spec does not: compare unpadded.
    x5t256 = str(header.get("x5t#S256", "")).rstrip("=")
    x5t = str(header.get("x5t", "")).rstrip("=")
    for cert in certs:
        if x5t256 and x5t256 == b64url(cert.fingerprint(hashes.SHA256())):
            return cert
        if x5t and x5t == b64url(cert.fingerprint(hashes.SHA1())):  # noqa: S303
            return cert
    x5c = header.get("x5c")
    if isinstance(x5c, list) and x5c:
        presented = base64.b64decode(x5c[0])
        for cert in certs:
            if cert.public_bytes(Encoding.DER) == presented:
                return cert
    return None

