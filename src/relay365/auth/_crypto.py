"""Encryption of secrets at rest: client secrets, refresh tokens, MSAL's token cache.

Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``) with one key per
installation: ``RELAY365_SECRET_KEY`` when set, otherwise a key file created 0600 on
first use.  Without the key the store's secrets are unreadable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from ..errors import ConfigError, StoreError

KEY_ENV = "RELAY365_SECRET_KEY"
# A secret in relay365.toml written by the admin page: encrypted with the installation's key.
SEALED_PREFIX = "relay365-sealed:"


class SecretBox:
    """Encrypts and decrypts small secrets with the installation's key."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        try:
            self._fernet = Fernet(key)
        except ValueError as exc:
            raise ConfigError(f"{KEY_ENV} or the key file does not hold a valid key (32 url-safe "
                              "base64-encoded bytes, as `relay365 init` writes)") from exc

    @classmethod
    def from_environment(cls, key_file: Path) -> SecretBox:
        """The key from RELAY365_SECRET_KEY, or from ``key_file`` (created 0600 if missing)."""
        env = os.environ.get(KEY_ENV)
        if env:
            return cls(env.encode())
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process created it first: use theirs
                return cls(key_file.read_bytes().strip())
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
        return cls(key_file.read_bytes().strip())

    def derive_key(self, purpose: str) -> bytes:
        """A key for ``purpose`` (e.g. signing admin sessions), derived from the installation's key:
        it changes when that key does, and reveals nothing of it."""
        return hmac.new(self._key, f"relay365:{purpose}".encode(), hashlib.sha256).digest()

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._fernet.decrypt(ciphertext).decode("utf-8")
        except InvalidToken as exc:
            raise StoreError("a stored secret cannot be decrypted: the key changed "
                             f"(set {KEY_ENV} or restore the key file), or the store was altered") from exc

    def seal(self, plaintext: str) -> str:
        """``plaintext`` encrypted, as relay365.toml keeps a secret the admin page wrote."""
        return SEALED_PREFIX + self.encrypt(plaintext).decode("ascii")

    def unseal(self, value: str) -> str:
        """The plaintext of a sealed value; any other value as it is."""
        if not value.startswith(SEALED_PREFIX):
            return value
        try:
            return self.decrypt(value.removeprefix(SEALED_PREFIX).encode("ascii"))
        except (StoreError, UnicodeEncodeError) as exc:
            raise ConfigError("a client secret in relay365.toml was encrypted with another key: restore "
                              f"the key file (or {KEY_ENV}), or enter the secret again on the admin "
                              "page") from exc

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"
