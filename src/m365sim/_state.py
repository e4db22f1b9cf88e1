"""Everything a running emulator remembers, in one object owned by its event loop.

All handlers (HTTPS and SMTP) run on one asyncio loop and read and change this state
there; the Python API in another thread reaches it through ``Simulator._call``, which
runs the change on the loop.  So no lock is needed, and every request sees one
consistent scenario.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from ._clock import Clock, set_offset_from_start
from ._limits import SendingLimits
from ._mailstore import MailStore
from ._scenario import App, Fault, Scenario, SharedMailbox, User
from ._tokens import TokenAuthority


@dataclass
class AuthorizeRequest:
    """An /authorize call waiting for the person at the sign-in page."""

    tenant: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str
    response_mode: str
    client_info: bool
    login_hint: str | None
    prompt: str | None
    created: float


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str
    user_id: str
    scopes: tuple[str, ...]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str
    expires: float
    redeemed: bool = False


@dataclass
class RefreshGrant:
    client_id: str
    user_id: str
    scopes: tuple[str, ...]  # everything consented for this sign-in, resource-qualified
    issued: float
    last_used: float
    family: str  # the sign-in that started this chain


@dataclass
class DeviceGrant:
    client_id: str
    user_code: str
    scopes: tuple[str, ...]
    expires: float
    status: str = "pending"  # pending | approved | declined | redeemed
    user_id: str | None = None


@dataclass
class ActiveFault:
    fault: Fault
    remaining: int  # 0 = until cleared


@dataclass
class RequestRecord:
    time: float
    protocol: str  # https | smtp
    method: str
    path: str
    status: int | str
    client_id: str | None = None
    identity: str | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Draft:
    """A message created through POST /messages, waiting for attachments and /send.

    ``mime`` is the message of a draft created from MIME (``message`` is then what
    Graph shows of it); attachments added later become parts of it at /send.
    """

    id: str
    mailbox: str  # the mailbox the draft lives in
    owner_identity: str
    message: dict[str, Any]
    attachments: list[dict[str, Any]] = field(default_factory=list)
    mime: bytes | None = field(default=None, repr=False)


@dataclass
class UploadSession:
    id: str
    draft_id: str
    name: str
    size: int
    content_type: str
    is_inline: bool
    content_id: str | None
    expires: float
    data: bytearray = field(default_factory=bytearray)


class SimState:
    """The emulator's memory: scenario, clock, grants, mailboxes, limits, faults."""

    def __init__(self, scenario: Scenario, tokens: TokenAuthority, clock: Clock) -> None:
        self.clock = clock
        self.tokens = tokens
        self.scenario = scenario
        self.mail = MailStore(scenario.limits.messages_kept_per_mailbox)
        self.limits = SendingLimits(clock)
        self.authorize_requests: dict[str, AuthorizeRequest] = {}
        self.codes: dict[str, AuthCode] = {}
        self.refresh_tokens: dict[str, RefreshGrant] = {}
        self.device_codes: dict[str, DeviceGrant] = {}
        self.tokens_valid_from: dict[str, float] = {}
        self.user_consents: dict[tuple[str, str], set[str]] = {}  # (client_id, user_id)
        self.drafts: dict[str, Draft] = {}
        self.upload_sessions: dict[str, UploadSession] = {}
        self.faults: list[ActiveFault] = [ActiveFault(f, f.count) for f in scenario.faults]
        self.request_log: deque[RequestRecord] = deque(maxlen=10_000)
        self.started = time.time()
        if scenario.clock_start is not None:
            clock.advance(max(0.0, set_offset_from_start(scenario.clock_start)))

    # ---- scenario ---------------------------------------------------------------
    def set_scenario(self, scenario: Scenario) -> None:
        """Swap the tenant; issued tokens, grants and delivered mail are kept."""
        self.scenario = scenario
        self.mail.keep = scenario.limits.messages_kept_per_mailbox
        self.faults = [ActiveFault(f, f.count) for f in scenario.faults]

    def user(self, upn_or_id: str) -> User | None:
        return self.scenario.user(upn_or_id)

    def app(self, client_id: str) -> App | None:
        return self.scenario.app(client_id)

    def shared_mailbox(self, address: str) -> SharedMailbox | None:
        return self.scenario.shared_mailbox(address)

    def has_mailbox(self, address: str) -> bool:
        user = self.user(address)
        if user is not None:
            return user.mailbox
        return self.shared_mailbox(address) is not None

    def app_certificates(self, app: App) -> list[x509.Certificate]:
        return [x509.load_pem_x509_certificate(c.pem.encode()) for c in app.certificates]

    # ---- grants -----------------------------------------------------------------
    @staticmethod
    def new_opaque(prefix: str, nbytes: int = 48) -> str:
        return prefix + secrets.token_urlsafe(nbytes)

    def revoke(self, upn_or_id: str) -> None:
        """revokeSignInSessions: refresh tokens issued before now stop working."""
        user = self.user(upn_or_id)
        if user is None:
            raise KeyError(f"no user {upn_or_id!r} in scenario {self.scenario.name!r}")
        # Strictly after any token issued so far, even within the same clock tick.
        self.tokens_valid_from[user.id] = self.clock.now() + 1e-6

    # ---- faults -----------------------------------------------------------------
    def add_fault(self, fault: Fault) -> None:
        self.faults.append(ActiveFault(fault, fault.count))

    def clear_faults(self) -> None:
        self.faults.clear()

    def take_fault(self, method: str, path: str) -> Fault | None:
        for active in self.faults:
            f = active.fault
            if not path.startswith(f.path) or (f.method and f.method.upper() != method):
                continue
            if active.remaining > 0:
                active.remaining -= 1
                if active.remaining == 0:
                    self.faults.remove(active)
            return f
        return None

    # ---- log ----------------------------------------------------------------------
    def log(self, record: RequestRecord) -> None:
        self.request_log.append(record)
