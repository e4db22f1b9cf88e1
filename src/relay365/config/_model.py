"""The settings model: what relay365.toml may say, with defaults and examples.

The models are the single description of the configuration: validation, the error
messages (each names an example) and the generated reference all come from them.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from ._alerts import AlertSettings

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _default_state_dir() -> Path:
    return Path(platformdirs.user_state_dir("relay365", appauthor=False))


class ConnectionSettings(BaseModel):
    """One Microsoft 365 app registration and the senders it may send as."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Short name used on the command line.", examples=["contoso"])
    tenant: str = Field(
        description="Directory (tenant) ID or a verified domain. `common`/`organizations` are "
                    "accepted, but the tenant itself works for single-tenant registrations.",
        examples=["contoso.onmicrosoft.com", "6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b"])
    client_id: str = Field(description="Application (client) ID of the app registration.",
                           examples=["11111111-aaaa-4bbb-8ccc-111111111111"])
    mode: Literal["delegated", "app-only"] = Field(
        "delegated", description="`delegated`: a licensed user signs in (the seed's flow); "
                                 "`app-only`: client credentials, no sign-in.")
    client_secret: SecretStr | None = Field(None, description="The client secret's Value.",
                                            examples=["abc8Q~..."])
    client_secret_env: str | None = Field(None, description="Read the secret from this variable.",
                                          examples=["CONTOSO_CLIENT_SECRET"])
    client_secret_file: Path | None = Field(None, description="Read the secret from this file.",
                                            examples=["/etc/relay365/contoso.secret"])
    certificate_file: Path | None = Field(None, description="PEM certificate registered on the app.",
                                          examples=["/etc/relay365/contoso.crt"])
    private_key_file: Path | None = Field(None, description="PEM private key of the certificate.",
                                          examples=["/etc/relay365/contoso.key"])
    secret_expires: dt.date | None = Field(
        None, description="When the client secret expires (shown in Entra); used for warnings.",
        examples=["2028-06-01"])
    account: str | None = Field(
        None, description="The account expected to sign in (delegated); a different one is warned about.",
        examples=["admin@contoso.com"])
    senders: list[str] = Field(
        default_factory=list, description="Addresses this connection sends as: its own mailbox and "
                                          "shared mailboxes it has Send As on.",
        examples=[["admin@contoso.com", "info@contoso.com"]])
    default_sender: str | None = Field(None, description="Sender when a message names none.",
                                       examples=["info@contoso.com"])
    sender_name: str | None = Field(None, description="Display name for the default sender.",
                                    examples=["Contoso"])
    force_from: bool = Field(False, description="Send a From the connection does not own (or none) as "
                                                "the default sender; a From it owns is kept.")
    transport: Literal["graph", "smtp-xoauth2"] = Field(
        "graph", description="`graph`: Microsoft Graph sendMail; `smtp-xoauth2`: SMTP with OAuth.")
    large_messages: bool = Field(
        True, description="Send messages over 4 MB as a draft with upload sessions (needs Mail.ReadWrite).")
    authority_host: str = Field(DEFAULT_AUTHORITY_HOST, description="Identity platform base URL.",
                                examples=[DEFAULT_AUTHORITY_HOST])
    graph_url: str = Field(DEFAULT_GRAPH_URL, description="Microsoft Graph base URL.",
                           examples=[DEFAULT_GRAPH_URL])
    smtp_host: str = Field("smtp.office365.com", description="SMTP submission host.")
    smtp_port: int = Field(587, description="SMTP submission port (STARTTLS).")
    ca_file: Path | None = Field(None, description="CA bundle to trust (m365sim's ca.pem in tests).")
    messages_per_minute: int = Field(30, gt=0, description="Exchange Online's per-mailbox message rate.")
    recipients_per_day: int = Field(10_000, gt=0,
                                    description="Exchange Online's per-mailbox daily recipients.")
    concurrent_requests: int = Field(4, gt=0, description="Graph's concurrent requests per app and mailbox.")
    recipients_per_message: int = Field(500, gt=0, le=1000, description="Exchange Online's recipient limit.")
    redirect_uri: str = Field(
        "http://localhost", description="Redirect URI registered on the app; relay365 listens on it "
                                        "for the sign-in (any port when it is http://localhost).",
        examples=["http://localhost", "https://relay.example.com/auth/callback"])

    # The installation's key file, which opens a client secret the admin page sealed (set by
    # Settings).  The configuration keeps the sealed text as it is: auth unseals it when it
    # builds the connection's credential.
    _key_file: Path | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use letters, digits, '.', '-' or '_'")
        return v

    @field_validator("senders")
    @classmethod
    def _senders(cls, v: list[str]) -> list[str]:
        for address in v:
            if not _ADDRESS.match(address):
                raise ValueError(f"{address!r} is not an email address")
        return [a.lower() for a in v]

    @field_validator("default_sender", "account")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and not _ADDRESS.match(v):
            raise ValueError(f"{v!r} is not an email address")
        return v.lower() if v else v

    @model_validator(mode="after")
    def _consistent(self) -> ConnectionSettings:
        if self.default_sender and self.default_sender not in self.senders:
            raise ValueError(f"default_sender {self.default_sender!r} must be one of senders")
        if (self.certificate_file is None) != (self.private_key_file is None):
            raise ValueError("certificate_file and private_key_file go together")
        if self.mode == "app-only" and not self.senders:
            raise ValueError("an app-only connection must list the senders it sends as")
        secrets = [self.client_secret, self.client_secret_env, self.client_secret_file]
        if sum(s is not None for s in secrets) > 1:
            raise ValueError("give the secret one way: client_secret, client_secret_env "
                             "or client_secret_file")
        return self

    @property
    def key_file(self) -> Path | None:
        """The installation's key file (from ``Settings``); None for a connection built alone."""
        return self._key_file

    @property
    def sender(self) -> str | None:
        """The address used when a message names no sender."""
        return self.default_sender or (self.senders[0] if self.senders else None)

    def authority(self) -> str:
        return f"{self.authority_host.rstrip('/')}/{self.tenant}"


class SmtpListener(BaseModel):
    """One SMTP port applications submit mail to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to listen on (loopback by default).")
    port: int = Field(2525, ge=0, le=65535, description="Port to listen on.")
    tls: Literal["none", "starttls", "implicit"] = Field(
        "none", description="`starttls` (e.g. 587) or `implicit` (465) need certificate_file.")
    certificate_file: Path | None = Field(None, description="PEM certificate for STARTTLS/implicit TLS.")
    private_key_file: Path | None = Field(None, description="PEM private key of the certificate.")
    require_auth: bool = Field(False, description="Clients must AUTH (PLAIN/LOGIN) before MAIL.")

    @model_validator(mode="after")
    def _tls(self) -> SmtpListener:
        if self.tls != "none" and (self.certificate_file is None or self.private_key_file is None):
            raise ValueError(f"tls = {self.tls!r} needs certificate_file and private_key_file")
        return self


class ClientUser(BaseModel):
    """An SMTP or HTTP client allowed to submit mail (password hashed with argon2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(examples=["printer"])
    password_hash: str = Field(description="`relay365 user add` writes it (argon2id).",
                               examples=["$argon2id$v=19$m=65536,t=3,p=4$..."])
    senders: list[str] = Field(default_factory=list,
                               description="Senders this client may use; empty: any configured sender.")


class ApiKey(BaseModel):
    """A key for the HTTP API (stored hashed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(examples=["wordpress"])
    key_hash: str = Field(description="`relay365 api-key add` writes it (argon2id).")
    senders: list[str] = Field(default_factory=list,
                               description="Senders this key may use; empty: any configured sender.")


class RelaySettings(BaseModel):
    """How applications reach relay365 and who may send."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    smtp: list[SmtpListener] = Field(default_factory=lambda: [SmtpListener()])
    http_host: str = Field("127.0.0.1", description="Web page and HTTP API address.")
    http_port: int = Field(8025, ge=0, le=65535, description="Web page and HTTP API port.")
    allowed_networks: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Clients from these networks may submit without AUTH.",
        examples=[["127.0.0.0/8", "::1/128", "192.168.1.0/24"]])
    auth_without_tls_on_loopback: bool = Field(
        False, description="Offer AUTH over plain SMTP to loopback clients (never to others).")
    users: list[ClientUser] = Field(default_factory=list)
    api_keys: list[ApiKey] = Field(default_factory=list)
    max_message_size: int = Field(35 * 1024 * 1024, gt=0,
                                  description="Largest message accepted (bytes); Exchange's "
                                              "default is 35 MB.")
    max_recipients: int = Field(500, gt=0, le=1000, description="Most recipients per message.")
    auth_failures: int = Field(5, gt=0, description="Failed SMTP logins allowed per client address "
                                                    "within `auth_failure_window` before AUTH is refused "
                                                    "for a while (454).")
    auth_failure_window: float = Field(300, gt=0, description="The SMTP login limit's window (seconds).")


class DeliverySettings(BaseModel):
    """How the outbox is worked off (retry timing named as Postfix names it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(8, gt=0, description="Deliveries in flight at once (all connections).")
    lease_seconds: float = Field(300, gt=0, description="A claimed message returns to the queue "
                                                        "if its worker dies for this long.")
    minimal_backoff: float = Field(30, gt=0, description="First retry delay (seconds).")
    maximal_backoff: float = Field(4000, gt=0, description="Longest retry delay (seconds).")
    maximal_queue_lifetime: float = Field(5 * 86400, gt=0,
                                          description="Give up on a message after this long (seconds).")
    sign_in_hold: float = Field(300, gt=0, description="How long a connection that needs sign-in "
                                                       "holds its mail before checking again (seconds).")
    keep_sent_bodies_days: float = Field(7, ge=0, description="Prune sent messages' bodies after this.")
    keep_log_days: float = Field(90, ge=0, description="Prune log rows after this.")


class AdminSettings(BaseModel):
    """The web admin page on the HTTP listener."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    password_hash: str | None = Field(
        None, description="`relay365 admin set-password` writes it (argon2id); without it the "
                          "admin page only says how to set one.",
        examples=["$argon2id$v=19$m=65536,t=3,p=4$..."])
    session_hours: float = Field(12, gt=0, description="How long an admin stays signed in.")
    login_attempts: int = Field(5, gt=0, description="Wrong passwords allowed per client per "
                                                     "`login_window` before logins are refused.")
    login_window: float = Field(300, gt=0, description="The login rate limit's window (seconds).")


class Settings(BaseModel):
    """The whole relay365.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Path = Field(default_factory=_default_state_dir,
                            description="Where the store and the key file live.",
                            examples=["/var/lib/relay365"])
    store: str | None = Field(None, description="Database URL; default SQLite in state_dir.",
                              examples=["sqlite:////var/lib/relay365/relay365.db",
                                        "postgresql://relay@db/relay365"])
    secret_key_file: Path | None = Field(
        None, description="Key encrypting secrets and tokens at rest; default state_dir/secret.key "
                          "(created 0600). RELAY365_SECRET_KEY overrides it.")
    connections: list[ConnectionSettings] = Field(default_factory=list)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)

    @model_validator(mode="after")
    def _sealed_secrets_key(self) -> Settings:
        for c in self.connections:
            c._key_file = self.key_file
        return self

    @model_validator(mode="after")
    def _unique(self) -> Settings:
        names = [c.name for c in self.connections]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"connection names must be unique: {sorted(dupes)}")
        owners: dict[str, str] = {}
        for c in self.connections:
            for s in c.senders:
                if s in owners:
                    raise ValueError(f"sender {s} belongs to both {owners[s]!r} and {c.name!r}")
                owners[s] = c.name
        return self

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{self.state_dir / 'relay365.db'}"

    @property
    def key_file(self) -> Path:
        return self.secret_key_file or self.state_dir / "secret.key"

    def connection(self, name: str | None = None) -> ConnectionSettings:
        """The named connection, or the only/first one when no name is given."""
        from ..errors import ConfigError

        if not self.connections:
            raise ConfigError("no connection is configured; run `relay365 init`")
        if name is None:
            return self.connections[0]
        for c in self.connections:
            if c.name == name:
                return c
        raise ConfigError(f"no connection named {name!r}; configured: "
                          f"{', '.join(c.name for c in self.connections)}")

    def connection_for_sender(self, address: str) -> ConnectionSettings | None:
        a = address.lower()
        for c in self.connections:
            if a in c.senders:
                return c
        return None
