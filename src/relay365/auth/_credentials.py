"""A connection's client credential, as MSAL takes it: a secret string or a certificate dict.

A certificate is preferred when one is configured (Microsoft's recommendation, and no
expiry surprise every 24 months).  Files are read when the MSAL application is built,
so a connection's credential is checked before the first token request; errors name
the setting, never the value.
"""

from __future__ import annotations

import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..config import ConnectionSettings
from ..errors import ConfigError
from ._crypto import SecretBox


def credential_kind(settings: ConnectionSettings) -> str:
    """What the connection authenticates with, in words for messages."""
    if settings.certificate_file is not None:
        return "certificate"
    if settings.client_secret is not None or settings.client_secret_env or settings.client_secret_file:
        return "client secret"
    return "no credential"


def client_secret(settings: ConnectionSettings) -> str | None:
    """The client secret written in relay365.toml, unsealed when the admin page wrote it sealed.

    The installation's key is read only here, when a secret is needed.
    """
    if settings.client_secret is None:
        return None
    value = settings.client_secret.get_secret_value()
    if settings.key_file is None:
        return value
    return SecretBox.from_environment(settings.key_file).unseal(value)


def read_credential(settings: ConnectionSettings) -> str | dict[str, str] | None:
    """MSAL's ``client_credential``; None for a public client (no secret, no certificate)."""
    name = settings.name
    if settings.certificate_file is not None and settings.private_key_file is not None:
        try:
            cert_pem = settings.certificate_file.read_text(encoding="ascii")
            key_pem = settings.private_key_file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"connection {name!r}: cannot read certificate_file or private_key_file "
                              f"({type(exc).__name__})") from exc
        try:
            x509.load_pem_x509_certificate(cert_pem.encode())
            serialization.load_pem_private_key(key_pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"connection {name!r}: certificate_file must hold a PEM certificate and "
                              "private_key_file its unencrypted PEM private key") from exc
        # With public_certificate MSAL sends x5c and signs with PS256 / x5t#S256.
        return {"private_key": key_pem, "public_certificate": cert_pem}
    if settings.client_secret is not None:
        return client_secret(settings)
    if settings.client_secret_env:
        value = os.environ.get(settings.client_secret_env, "").strip()
        if not value:
            raise ConfigError(f"connection {name!r}: the variable {settings.client_secret_env} "
                              "(client_secret_env) is not set")
        return value
    if settings.client_secret_file is not None:
        try:
            value = settings.client_secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"connection {name!r}: cannot read client_secret_file "
                              f"{settings.client_secret_file} ({exc.strerror})") from exc
        if not value:
            raise ConfigError(f"connection {name!r}: client_secret_file {settings.client_secret_file} "
                              "is empty")
        return value
    return None
