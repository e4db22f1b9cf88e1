"""Checking SMTP passwords and API keys against the argon2id hashes in the settings.

argon2 is slow on purpose (tens of milliseconds), and an application that logs in for
every message would pay that on each one.  A credential that verified once is
remembered for the life of the process as an HMAC under a random per-process key: the
plain secret is never kept, and a wrong one always pays the full argon2 price.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Iterable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..config import RelaySettings
from ..policy import Client

log = logging.getLogger("relay365.ingress")

_hasher = PasswordHasher()  # argon2id, the library's current recommended parameters
_API_KEY_PREFIX = "r365_"
_CACHE_LIMIT = 4096


def hash_password(plain: str) -> str:
    """The argon2id hash of a password or API key, for ``relay.users`` / ``relay.api_keys``."""
    return _hasher.hash(plain)


def new_api_key() -> str:
    """A fresh random API key (show it once; store only ``hash_password(key)``)."""
    return _API_KEY_PREFIX + secrets.token_urlsafe(32)


class Credentials:
    """Who a login or an API key is, per ``relay.users`` and ``relay.api_keys``."""

    def __init__(self, relay: RelaySettings) -> None:
        self._users = {u.name: u for u in relay.users}
        self._keys = list(relay.api_keys)
        self._pepper = secrets.token_bytes(32)
        self._verified: dict[bytes, Client] = {}
        self._lock = threading.Lock()  # API keys are checked in worker threads

    def __repr__(self) -> str:
        return f"Credentials(users={sorted(self._users)}, api_keys={[k.name for k in self._keys]})"

    @property
    def has_users(self) -> bool:
        return bool(self._users)

    def check_user(self, login: str, password: str | bytes) -> Client | None:
        """The SMTP user ``login`` when ``password`` is theirs, else None."""
        secret = password.encode("utf-8") if isinstance(password, str) else password
        token = self._token(b"user", login.encode("utf-8", "surrogateescape"), secret)
        known = self._verified.get(token)
        if known is not None:
            return known
        user = self._users.get(login)
        if user is None:
            _verify(_decoy_hash(), secret, "")  # as slow as a known user: no timing oracle for names
            return None
        if not _verify(user.password_hash, secret, f"user {login!r}"):
            return None
        return self._remember(token, Client("user", user.name, _lower(user.senders)))

    def check_api_key(self, key: str) -> Client | None:
        """The API key's client when ``key`` matches one of ``relay.api_keys``, else None."""
        secret = key.encode("utf-8", "surrogateescape")
        token = self._token(b"api-key", b"", secret)
        known = self._verified.get(token)
        if known is not None:
            return known
        for api_key in self._keys:
            if _verify(api_key.key_hash, secret, f"api key {api_key.name!r}"):
                return self._remember(token, Client("api-key", api_key.name, _lower(api_key.senders)))
        return None

    def _token(self, kind: bytes, name: bytes, secret: bytes) -> bytes:
        return hmac.digest(self._pepper, kind + b"\0" + name + b"\0" + secret, hashlib.sha256)

    def _remember(self, token: bytes, client: Client) -> Client:
        with self._lock:
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.clear()
            self._verified[token] = client
        return client


@functools.cache
def _decoy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def _verify(password_hash: str, secret: bytes, whose: str) -> bool:
    try:
        return _hasher.verify(password_hash, secret)
    except InvalidHashError:
        if whose:
            log.warning("the password hash of %s is not an argon2 hash; "
                        "set it again with `relay365 user add` / `relay365 api-key add`", whose)
        return False
    except VerificationError:  # VerifyMismatchError and friends
        return False


def _lower(addresses: Iterable[str]) -> tuple[str, ...]:
    return tuple(a.lower() for a in addresses)
