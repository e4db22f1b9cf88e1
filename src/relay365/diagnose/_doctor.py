"""``relay365 doctor``: check a connection end to end before the first message depends on it.

Checks, in order, each ``pass``, ``warn``, ``fail`` or ``skip`` with its catalogue entry:

    config          the connection's settings (a /common tenant is a warning)
    clock           this machine's clock against the identity platform's Date header
    tls-authority   TLS to the identity platform, with the configured trust
    tls-graph       TLS to Microsoft Graph (tls-smtp too for the smtp-xoauth2 transport)
    sign-in         (delegated) the authorize endpoint's verdict on the app registration:
                    single-tenant on /common, unknown app, redirect URI, missing consent
    credential      (client secret or certificate) client credentials with it: expired,
                    wrong or unknown secrets show here, even before anyone signs in
    token           a fresh token from the stored sign-in (a forced refresh) or the credential
    token-tenant    the token's tid is the configured tenant
    permissions     the token's scp/roles hold Mail.Send (+ Mail.Send.Shared for shared senders)
    account         (delegated) who signed in, against the connection's account
    mailbox         (delegated) the signed-in account has an Exchange Online mailbox
    sender:ADDRESS  each sender may be sent as: a probe, or with --send-test a real message
    secret-expiry   the client secret's end date (Graph when permitted, else secret_expires)
    certificate-expiry
    refresh-token   (delegated) the sign-in's age and last use

A failing check makes the checks that need its result ``skip``.  Nothing here changes
the tenant; the token check refreshes the stored sign-in, as sending would.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

from ..auth import (
    AccessToken,
    Connection,
    SecretBox,
    credential_kind,
    needed_scopes,
    read_credential,
    request_scopes,
    token_account,
    token_claims,
    transport_resource,
)
from ..catalogue import Entry, lookup_entry
from ..config import ConnectionSettings, Settings
from ..errors import AuthError, ConfigError, NeedsSignIn, Relay365Error
from ..outbound import Outbound
from ..store import ConnectionState, Store
from ..transport import Envelope
from ._expiry import WARN_DAYS, CredentialExpiry, credential_expiries
from ._probes import GENERIC_TENANTS, Reach, authorize_probe, graph_call, probe_message, reach

Status = Literal["pass", "warn", "fail", "skip"]
# Clock skew: Microsoft accepts client assertions a few minutes off; beyond a minute is worth a word.
SKEW_WARN = 60.0
SKEW_FAIL = 300.0
# A sign-in unused for this long is at risk: Microsoft expires refresh tokens after 90 idle days.
IDLE_WARN = dt.timedelta(days=30)
# Secret/certificate: warn this many days ahead (the expiry watch's first threshold).
EXPIRY_WARN_DAYS = WARN_DAYS[0]


@dataclass(frozen=True)
class Check:
    """One check's outcome; ``entry`` explains a warning or a failure."""

    name: str
    status: Status
    detail: str
    entry: Entry | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status,
                "entry": self.entry.id if self.entry else None,
                "title": self.entry.title if self.entry else None,
                "detail": self.detail, "fix": self.entry.fix if self.entry else None}


@dataclass(frozen=True)
class DoctorReport:
    connection: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed): ``relay365 doctor`` exits 0."""
        return all(c.status != "fail" for c in self.checks)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"connection": self.connection, "ok": self.ok,
                "checks": [c.to_json() for c in self.checks]}


def config_failure(error: Relay365Error, connection: str | None = None) -> DoctorReport:
    """The report when the configuration itself does not load."""
    return DoctorReport(connection or "", (Check("config", "fail", error.message, error.entry),))


async def run_doctor(settings: Settings, connection: str | None = None, *, send_test: str | None = None,
                     clock: Callable[[], dt.datetime] | None = None) -> DoctorReport:
    """Check one connection end to end (``connection`` None: the first configured)."""
    try:
        conn = settings.connection(connection)
    except ConfigError as exc:
        return config_failure(exc, connection)
    store = await Store.open(settings.store_url, SecretBox.from_environment(settings.key_file))
    # The delivery agent's credential, Graph client and transport: the doctor checks what sends.
    outbound = Outbound(settings, store)
    try:
        doctor = _Doctor(conn, store, outbound, send_test=send_test,
                         clock=clock or (lambda: dt.datetime.now(dt.UTC)))
        return await doctor.run()
    finally:
        await outbound.aclose()
        await store.close()


def _days(delta: dt.timedelta) -> str:
    seconds = max(delta.total_seconds(), 0.0)
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes"


@dataclass
class _Doctor:
    conn: ConnectionSettings
    store: Store
    outbound: Outbound
    send_test: str | None
    clock: Callable[[], dt.datetime]
    checks: list[Check] = field(default_factory=list)
    token: AccessToken | None = None
    app_token_source: Connection | None = None
    credential_entry: Entry | None = None

    def add(self, name: str, status: Status, detail: str, entry: Entry | str | None = None) -> Check:
        check = Check(name, status, detail, lookup_entry(entry) if entry is not None else None)
        self.checks.append(check)
        return check

    @property
    def delegated(self) -> bool:
        return self.conn.mode == "delegated"

    async def run(self) -> DoctorReport:
        connection = self.outbound.connection(self.conn.name)
        http = self.outbound.graph_client(self.conn)
        scratch_dir = tempfile.TemporaryDirectory(prefix="relay365-doctor-")
        scratch_store: Store | None = None
        try:
            if not self.check_config():
                return self.report()
            await self.check_endpoints(http)
            state = await self.store.connection_state(self.conn.name)
            if self.delegated:
                await self.check_sign_in(http)
            if self.delegated and credential_kind(self.conn) != "no credential":
                scratch_store = await Store.open(f"sqlite:///{Path(scratch_dir.name) / 'doctor.db'}",
                                                 SecretBox(base64.urlsafe_b64encode(os.urandom(32))))
                await self.check_credential(scratch_store)
            elif not self.delegated:
                self.app_token_source = connection
            await self.check_token(connection, state)
            if self.token is not None:
                self.check_claims()
                if self.delegated:
                    await self.check_mailbox(http)
                await self.check_senders(http, connection)
            else:
                needing = ("token-tenant", "permissions", "account", "mailbox", "senders")
                for name in needing if self.delegated else ("token-tenant", "permissions", "senders"):
                    self.add(name, "skip", "needs a token (see the token check)")
            await self.check_expiry(http, connection)
            if self.delegated:
                self.check_refresh_token(state)
        finally:
            if self.app_token_source is not None and self.app_token_source is not connection:
                self.app_token_source.close()
            if scratch_store is not None:
                await scratch_store.close()
            scratch_dir.cleanup()
        return self.report()

    def report(self) -> DoctorReport:
        return DoctorReport(self.conn.name, tuple(self.checks))

    # ---- config, clock, TLS ------------------------------------------------------------------

    def check_config(self) -> bool:
        c = self.conn
        try:
            read_credential(c)
        except ConfigError as exc:
            self.add("config", "fail", exc.message, exc.entry)
            return False
        if c.mode == "app-only" and credential_kind(c) == "no credential":
            self.add("config", "fail", f"connection {c.name!r} is app-only and has no client secret or "
                     "certificate", "R365-CONFIG")
            return False
        what = (f"connection {c.name!r}: {c.mode}, {c.transport}, {credential_kind(c)}, "
                f"senders {', '.join(c.senders) or 'none'}")
        if c.tenant.lower() in GENERIC_TENANTS:
            self.add("config", "warn", f"{what}; tenant {c.tenant!r} works only for a multi-tenant app "
                     "registration: use the tenant id or domain", "AAD-SINGLE-TENANT-COMMON")
        elif not c.senders:
            self.add("config", "warn", f"{what}; no sender is configured: only mail from the signed-in "
                     "account's own address can be routed here", "R365-CONFIG")
        else:
            self.add("config", "pass", what)
        return True

    async def check_endpoints(self, http: httpx.AsyncClient) -> None:
        authority = await reach(http, f"{self.conn.authority()}/v2.0/.well-known/openid-configuration")
        graph = await reach(http, f"{self.conn.graph_url.rstrip('/')}/")
        skew = authority.skew if authority.skew is not None else graph.skew
        if skew is None:
            self.add("clock", "skip", "no endpoint answered with a Date header")
        elif abs(skew) > SKEW_FAIL:
            self.add("clock", "fail", f"this machine's clock is {abs(skew):.0f} s "
                     f"{'behind' if skew > 0 else 'ahead of'} Microsoft's", "R365-CLOCK-SKEW")
        elif abs(skew) > SKEW_WARN:
            self.add("clock", "warn", f"this machine's clock is {abs(skew):.0f} s off Microsoft's",
                     "R365-CLOCK-SKEW")
        else:
            self.add("clock", "pass", f"within {max(abs(skew), 1):.0f} s of Microsoft's clock")
        for name, result in (("tls-authority", authority), ("tls-graph", graph)):
            self._reach_check(name, result)
        if self.conn.transport == "smtp-xoauth2":
            await self.check_smtp_tls()

    def _reach_check(self, name: str, result: Reach) -> None:
        if result.reached:
            self.add(name, "pass", f"{result.url}: TLS trusted, HTTP {result.status}")
        else:
            self.add(name, "fail", f"{result.url}: {result.detail}", result.entry)

    async def check_smtp_tls(self) -> None:
        import ssl

        import aiosmtplib

        context = ssl.create_default_context(
            cafile=str(self.conn.ca_file) if self.conn.ca_file else None)
        where = f"{self.conn.smtp_host}:{self.conn.smtp_port}"
        smtp = aiosmtplib.SMTP(hostname=self.conn.smtp_host, port=self.conn.smtp_port,
                               start_tls=True, tls_context=context, timeout=15)
        try:
            await smtp.connect()
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError) as exc:
            text = f"{type(exc).__name__}: {exc}"
            untrusted = "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text
            self.add("tls-smtp", "fail", f"{where}: {text[:300]}",
                     "R365-TLS-UNTRUSTED" if untrusted else "R365-NETWORK")
            return
        self.add("tls-smtp", "pass", f"{where}: STARTTLS trusted")

    # ---- sign-in, credential, token ----------------------------------------------------------

    async def check_sign_in(self, http: httpx.AsyncClient) -> None:
        scopes = request_scopes(self.conn, transport_resource(self.conn))
        verdict = await authorize_probe(http, self.conn, scopes)
        self.add("sign-in", "pass" if verdict.ok else "fail", verdict.detail, verdict.entry)

    async def check_credential(self, scratch: Store) -> None:
        """Client credentials with the connection's secret or certificate (a throwaway cache)."""
        kind = credential_kind(self.conn)
        if self.conn.tenant.lower() in GENERIC_TENANTS:
            self.add("credential", "skip", f"the {kind} can be checked only at a tenant-specific "
                     "authority (the connection's tenant is generic)")
            return
        probe = self.conn.model_copy(update={"mode": "app-only", "name": f"{self.conn.name}.doctor"})
        source = Connection(probe, scratch)
        try:
            await source.acquire_token("graph")
        except AuthError as exc:
            source.close()
            self.credential_entry = exc.entry
            self.add("credential", "fail", exc.message, exc.entry)
            return
        self.app_token_source = source
        self.add("credential", "pass", f"Microsoft accepts the {kind} (client credentials)")

    async def check_token(self, connection: Connection, state: ConnectionState) -> None:
        resource = transport_resource(self.conn)
        try:
            # Forced: a token still cached here proves nothing about the stored sign-in.
            self.token = await connection.acquire_token(resource, force_refresh=True)
        except NeedsSignIn as exc:
            detail = exc.message
            if state.signed_in_at is None and state.account is None:
                detail = f"nobody has signed in for connection {self.conn.name!r} yet: {exc.message}"
            self.add("token", "fail", detail, exc.entry)
            return
        except Relay365Error as exc:
            self.add("token", "fail", exc.message, exc.entry)
            return
        who = self.token.account or "the app itself"
        self.add("token", "pass", f"a fresh {resource} token for {who}, valid until "
                 f"{self.token.expires_at.isoformat(timespec='minutes')}")

    # ---- what the token says -----------------------------------------------------------------

    def check_claims(self) -> None:
        assert self.token is not None
        claims = token_claims(self.token.value)
        tid = str(claims.get("tid") or "")
        tenant = self.conn.tenant.lower()
        if not tid:
            self.add("token-tenant", "skip", "the token is opaque: its tenant cannot be read")
        elif tenant in GENERIC_TENANTS or "." in tenant:
            self.add("token-tenant", "pass", f"token from tenant {tid} (the connection names "
                     f"{self.conn.tenant!r}, which cannot be compared)")
        elif tid.lower() != tenant:
            self.add("token-tenant", "fail", f"the token comes from tenant {tid}, the connection is "
                     f"configured for {self.conn.tenant}", "R365-WRONG-TENANT")
        else:
            self.add("token-tenant", "pass", f"token from the configured tenant {tid}")
        self.check_permissions(claims)
        if self.delegated:
            self.check_account(claims)

    def check_permissions(self, claims: dict[str, Any]) -> None:
        assert self.token is not None
        granted = {s.lower() for s in self.token.scopes}
        resource = transport_resource(self.conn)
        account = self.token.account
        needed = list(needed_scopes(self.conn, resource))
        if "Mail.Send.Shared" in needed and account and all(s == account for s in self.conn.senders):
            needed.remove("Mail.Send.Shared")  # the account sends as itself only
        missing = [s for s in needed if s.lower() not in granted]
        shown = ", ".join(self.token.scopes) or "nothing"
        kind = "application permission" if self.conn.mode == "app-only" else "permission"
        fatal = [s for s in missing if s != "Mail.ReadWrite"]
        if fatal:
            first = fatal[0]
            entry = {"Mail.Send": "M365-NO-MAIL-SEND", "Mail.Send.Shared": "M365-NO-MAIL-SEND-SHARED"
                     }.get(first, "SMTP-AUTH-FAILED")
            self.add("permissions", "fail", f"the token lacks the {kind} {', '.join(fatal)} "
                     f"(it grants: {shown})", entry)
        elif missing:
            self.add("permissions", "warn", f"the token lacks Mail.ReadWrite, needed for messages over "
                     f"4 MB (it grants: {shown}); or set large_messages = false",
                     "M365-NEEDS-MAIL-READWRITE")
        else:
            self.add("permissions", "pass", f"the token grants {shown}")

    def check_account(self, claims: dict[str, Any]) -> None:
        who = token_account(claims) or (self.token.account if self.token else None)
        expected = self.conn.account
        if who is None:
            self.add("account", "warn", "the token names no account", "R365-WRONG-ACCOUNT")
        elif expected and who != expected:
            self.add("account", "fail", f"signed in as {who}, but connection {self.conn.name!r} expects "
                     f"{expected}", "R365-WRONG-ACCOUNT")
        else:
            self.add("account", "pass", f"signed in as {who}"
                     + ("" if expected else " (no account is configured to compare with)"))

    # ---- mailbox and senders -----------------------------------------------------------------

    def _graph(self, path: str) -> str:
        return f"{self.conn.graph_url.rstrip('/')}/{path}"

    async def check_mailbox(self, http: httpx.AsyncClient) -> None:
        assert self.token is not None
        reply = await graph_call(http, "GET", self._graph("me?$select=mail,userPrincipalName"),
                                 self.token.value)
        who = self.token.account or "the signed-in account"
        if reply.status == 200 and reply.body is not None:
            if reply.body.get("mail"):
                self.add("mailbox", "pass", f"{who} has the mailbox {reply.body['mail']}")
            else:
                self.add("mailbox", "fail", f"{who} has no mail address in Microsoft 365: no Exchange "
                         "Online licence, so no mailbox", "M365-NO-MAILBOX")
            return
        # /me needs User.Read, which relay365 does not ask for: probe sendMail instead.
        probe = await graph_call(http, "POST", self._graph("me/sendMail"), self.token.value,
                                 probe_message(self.token.account or ""))
        if probe.code == "ErrorInvalidRecipients":
            self.add("mailbox", "pass", f"{who} has a mailbox (Graph refused only the probe's missing "
                     "recipient)")
        elif probe.code == "MailboxNotEnabledForRESTAPI":
            self.add("mailbox", "fail", f"{who}: {probe.code} {probe.message}", "M365-NO-MAILBOX")
        else:
            self.add("mailbox", "warn", f"could not tell: GET /me answered {reply.status} {reply.code}, "
                     f"the probe {probe.status} {probe.code}", probe.entry() or "R365-DELIVERY")

    async def check_senders(self, http: httpx.AsyncClient, connection: Connection) -> None:
        senders = self.conn.senders or ([self.token.account] if self.token and self.token.account else [])
        if not senders:
            self.add("senders", "skip", "no sender is configured")
            return
        for sender in senders:
            if self.send_test:
                await self.send_test_from(sender, connection)
            elif self.conn.transport == "graph":
                await self.probe_sender(http, sender)
            else:
                self.add(f"sender:{sender}", "skip", "over SMTP a sender is checked only by sending: "
                         "use --send-test ADDRESS")

    async def probe_sender(self, http: httpx.AsyncClient, sender: str) -> None:
        assert self.token is not None
        path = "me/sendMail" if self.delegated else f"users/{quote(sender)}/sendMail"
        reply = await graph_call(http, "POST", self._graph(path), self.token.value, probe_message(sender))
        name = f"sender:{sender}"
        if reply.code == "ErrorInvalidRecipients":
            self.add(name, "pass", f"Microsoft accepts {sender} as the sender (a probe that sends "
                     "nothing; --send-test ADDRESS sends a real message)")
            return
        entry = reply.entry() or lookup_entry("R365-DELIVERY")
        self.add(name, "fail", f"{sender}: Graph answered {reply.status} {reply.code or ''} "
                 f"{reply.message}".rstrip(), entry)

    async def send_test_from(self, sender: str, connection: Connection) -> None:
        assert self.send_test is not None
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = self.send_test
        msg["Subject"] = f"relay365 doctor: test from {sender} ({self.conn.name})"
        msg.set_content(f"relay365 doctor sent this test of connection {self.conn.name!r}:\n"
                        f"sender {sender}, transport {self.conn.transport}, account "
                        f"{self.token.account if self.token else '-'}.\n")
        try:
            outcome = await self.outbound.send(Envelope(sender, (self.send_test,), msg.as_bytes()),
                                               connection=self.conn.name)
        except Relay365Error as exc:
            self.add(f"sender:{sender}", "fail", exc.message, exc.entry)
            return
        self.add(f"sender:{sender}", "pass", f"test message sent from {sender} to {self.send_test} "
                 f"(request id {outcome.request_id or '-'})")

    # ---- expiry and refresh token ------------------------------------------------------------

    async def check_expiry(self, http: httpx.AsyncClient, connection: Connection) -> None:
        sources: list[Any] = []
        if self.token is not None:
            sources.append(connection)
        if self.app_token_source is not None and self.app_token_source is not connection:
            sources.append(self.app_token_source)
        expiries, answer = await credential_expiries(self.conn, sources, http)
        why = ""
        if answer is not None and answer.status != 200:
            why = (f" (Microsoft Graph did not tell: {answer.status or ''} {answer.code or ''}; "
                   "it needs Application.Read.All)").replace("( ", "(")
        now = self.clock()
        for expiry in expiries:
            name = "secret-expiry" if expiry.kind == "client secret" else "certificate-expiry"
            self.expiry_check(name, expiry, now, why)

    def expiry_check(self, name: str, expiry: CredentialExpiry, now: dt.datetime, why: str) -> None:
        kind = expiry.kind
        if (kind == "client secret" and self.credential_entry is not None
                and self.credential_entry.id == "AAD-SECRET-EXPIRED"):
            self.add(name, "fail", f"Microsoft says the client secret has expired (see the credential "
                     f"check); the date from {expiry.source} is "
                     f"{expiry.expires_at.date().isoformat() if expiry.expires_at else 'unknown'}",
                     "AAD-SECRET-EXPIRED")
            return
        if expiry.expires_at is None:
            self.add(name, "warn", f"the {kind}'s expiry is not known{why}", "R365-SECRET-EXPIRY-UNKNOWN")
            return
        when = expiry.expires_at.date().isoformat()
        days = expiry.days_left(now)
        assert days is not None
        expiring = "R365-SECRET-EXPIRING" if kind == "client secret" else "R365-CERT-EXPIRING"
        expired = "AAD-SECRET-EXPIRED" if kind == "client secret" else "AAD-CERT-INVALID"
        if expiry.expired(now):
            self.add(name, "fail", f"the {kind} expired on {when} (from {expiry.source})", expired)
        elif days <= EXPIRY_WARN_DAYS:
            self.add(name, "warn", f"the {kind} expires on {when}, in {days} days (from {expiry.source})",
                     expiring)
        else:
            self.add(name, "pass", f"the {kind} expires on {when}, in {days} days "
                     f"(from {expiry.source}{why.replace(' (', '; ').rstrip(')')})")

    def check_refresh_token(self, state: ConnectionState) -> None:
        if state.signed_in_at is None:
            self.add("refresh-token", "skip", "nobody has signed in yet")
            return
        now = self.clock()
        last = state.last_refresh_at or state.signed_in_at
        idle = now - last
        age = f"signed in {_days(now - state.signed_in_at)} ago as {state.account or 'unknown'}, " \
              f"refresh token last used {_days(idle)} ago"
        token = next((c for c in self.checks if c.name == "token"), None)
        if token is not None and token.status == "fail":
            self.add("refresh-token", "fail", f"{age}; it no longer works (see the token check)",
                     token.entry)
        elif idle > IDLE_WARN:
            self.add("refresh-token", "warn", f"{age}: without the keep-alive of `relay365 serve`, "
                     "Microsoft expires it after 90 idle days", "R365-REFRESH-IDLE")
        else:
            self.add("refresh-token", "pass", age)
