"""The emulator's certificate authority, TLS certificate and token-signing key.

m365sim speaks real HTTPS and STARTTLS, so it needs a CA that clients can trust
(``ca.pem``) and a server certificate for 127.0.0.1 and localhost.  The CA key and the
token-signing key live in the state directory, so a restarted emulator keeps the same
CA (clients configured with ``ca.pem`` keep working) and the same JWKS.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_KEY_SIZE = 2048


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files a running emulator serves with."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    signing_key: Path

    def server_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.server_cert), str(self.server_key))
        return ctx


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=_KEY_SIZE)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    # These are keys m365sim generated itself: skipping cryptography's RSA consistency
    # check saves ~0.1 s a load, which every test's emulator start pays.
    key = serialization.load_pem_private_key(path.read_bytes(), password=None,
                                             unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return key


def _load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        return _load_key(path)
    key = _new_key()
    _write_private(path, _pem_key(key))
    return key


def _ca_certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "m365sim local CA")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, key: rsa.RSAPrivateKey
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        x509.IPAddress(ipaddress.IPv6Address("::1")),
    ]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def ensure_pki(state_dir: Path) -> Pki:
    """Create (first run) or reuse the CA, server certificate and signing key."""
    state_dir.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_cert=state_dir / "ca.pem",
        server_cert=state_dir / "server.pem",
        server_key=state_dir / "server-key.pem",
        signing_key=state_dir / "signing-key.pem",
    )
    ca_key_path = state_dir / "ca-key.pem"
    ready = [ca_key_path, pki.ca_cert, pki.server_cert, pki.server_key, pki.signing_key]
    if all(p.exists() for p in ready):
        return pki
    if ca_key_path.exists() and pki.ca_cert.exists():
        ca_key = _load_key(ca_key_path)
        ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    else:
        ca_key = _new_key()
        _write_private(ca_key_path, _pem_key(ca_key))
        ca_cert = _ca_certificate(ca_key)
        pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        # A new CA invalidates any old server certificate.
        pki.server_cert.unlink(missing_ok=True)
    if not (pki.server_cert.exists() and pki.server_key.exists()):
        server_key = _new_key()
        _write_private(pki.server_key, _pem_key(server_key))
        cert = _server_certificate(ca_key, ca_cert, server_key)
        pki.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _load_or_create_key(pki.signing_key)
    return pki


def load_signing_key(pki: Pki) -> rsa.RSAPrivateKey:
    return _load_key(pki.signing_key)


def certificate_thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 thumbprint, upper-case hex, as the Entra portal shows it."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()  # noqa: S324
