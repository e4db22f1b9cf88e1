"""Exchange Online SMTP client submission (smtp.office365.com:587), on aiosmtpd.

The dialogue follows reference §5: Exchange's banner and EHLO lines, STARTTLS, then
``AUTH XOAUTH2`` (one-line or two-step) with an Exchange Online access token, while
``AUTH LOGIN``/``PLAIN`` (basic auth) is always refused the way the scenario says.
Every reply text comes from ``data/smtp_replies.toml``.

aiosmtpd's ``SMTP`` protocol runs the command loop.  ``_Handler`` (its hooks) decides
EHLO, MAIL, RCPT and DATA; ``_ExchangeSmtp`` changes only what a hook cannot: the
banner, the whole AUTH command, the replies aiosmtpd hard-codes, DSN parameters, and
closing the connection after a 4xx that ends the session.  Neither keeps secrets:
tokens and passwords are checked and dropped, never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import email.parser
import email.utils
import secrets
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session

from ._knowledge import resources_by_name, smtp_replies
from ._state import RequestRecord, SimState
from ._tokens import TokenInvalid

# The emulated front-end server, as it appears in replies ("[SY5P282CA0097.outlook...]").
HOST = "M365SIM01.outlook.office365.com"
# What EHLO advertises after STARTTLS: Exchange offers exactly these two (reference §5.1).
ADVERTISED_AUTH = "AUTH LOGIN XOAUTH2"
# Long enough for an XOAUTH2 initial response (a JWT, base64 again) on the command line.
# Exchange is not known to refuse message lines over 1000 octets [UNCONFIRMED], so DATA
# lines get the same room.
MAX_LINE = 1 << 20
# DSN parameters Exchange accepts; the emulator sends no DSNs, so it drops them.
_DSN_MAIL_PARAMS = ("RET=", "ENVID=")
_DSN_RCPT_PARAMS = ("NOTIFY=", "ORCPT=")
# Replies aiosmtpd writes from inside its own methods (STARTTLS, DATA, sequence and
# base64 checks).  Overriding those methods would mean copying aiosmtpd's TLS and DATA
# internals, so the fixed texts are swapped for Exchange's as they are written.
_AIOSMTPD_REPLIES = {
    "220 Ready to start TLS": "starttls_ready",
    "354 End data with <CR><LF>.<CR><LF>": "data_go",
    "503 Error: send HELO first": "need_hello",
    "503 Error: send EHLO first": "need_hello",
    "503 Error: need MAIL command": "need_mail",
    "503 Error: need RCPT command": "need_rcpt",
    "503 Error: nested MAIL command": "nested_mail",
    "501 5.5.2 Can't decode base64": "bad_base64",
    "501 5.7.0 Auth aborted": "auth_aborted",
}


def reply(key: str, **fmt: Any) -> str:
    """An Exchange reply from smtp_replies.toml, with the emulated host filled in."""
    return smtp_replies()[key].format(host=HOST, **fmt)


def _code(text: str) -> int:
    return int(text[:3])


@dataclass(frozen=True)
class Identity:
    """Who an SMTP session authenticated as."""

    mailbox: str  # the XOAUTH2 ``user=``: the mailbox the session submits from
    principal: str  # who holds the token: a UPN, or "app:{client_id}"
    client_id: str
    delegate: str | None = None  # the token's user (delegated tokens only)

    @property
    def acting_user(self) -> str:
        """The name Exchange puts in SendAsDenied: the signed-in user, or the mailbox."""
        return self.delegate or self.mailbox


@dataclass(frozen=True)
class AuthOutcome:
    identity: Identity | None
    reply_key: str
    reason: str  # for the request log: why, never the credential itself
    client_id: str | None = None
    principal: str | None = None


# ---- decisions (pure: state in, answer out) --------------------------------------------
def smtp_auth_disabled(state: SimState, mailbox: str) -> str | None:
    """The 5.7.139 reply key when SMTP AUTH is off for ``mailbox``, else None.

    Set-CASMailbox on the mailbox overrides Set-TransportConfig on the tenant.
    """
    user = state.user(mailbox)
    if user is not None and user.smtp_client_authentication is not None:
        return None if user.smtp_client_authentication else "auth_mailbox_disabled"
    return None if state.scenario.tenant.smtp_client_authentication else "auth_tenant_disabled"


def basic_auth_refusal(state: SimState, username: str) -> str:
    """The reply key for AUTH LOGIN/PLAIN, which never succeeds (reference §5.4-5.5)."""
    tenant = state.scenario.tenant
    if tenant.security_defaults:
        return "auth_security_defaults"
    disabled = smtp_auth_disabled(state, username)
    if disabled is not None:
        return disabled
    return {
        "security-defaults": "auth_security_defaults",
        "tenant-disabled": "auth_tenant_disabled",
        "mailbox-disabled": "auth_mailbox_disabled",
        "basic-disabled": "auth_basic_disabled",
        "retired": "auth_retired",
        "conditional-access": "auth_conditional_access",
    }[tenant.basic_auth_rejection]


def parse_xoauth2(blob: bytes) -> tuple[str, str] | None:
    """(user, token) from ``user=...^Aauth=Bearer ...^A^A``, or None when malformed."""
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        return None
    fields: dict[str, str] = {}
    for part in text.split("\x01"):
        key, _, value = part.partition("=")
        if key:
            fields[key.strip().lower()] = value
    user, auth = fields.get("user", ""), fields.get("auth", "")
    scheme, _, token = auth.partition(" ")
    if not user or scheme.lower() != "bearer" or not token.strip():
        return None
    return user.strip(), token.strip()


def authorize_xoauth2(state: SimState, user_name: str, token: str) -> AuthOutcome:
    """Check an XOAUTH2 login as Exchange does; say who it is or which 535 to answer."""
    try:
        claims = state.tokens.verify_access_token(token, resources_by_name()["exchange"].uris)
    except TokenInvalid as exc:
        return AuthOutcome(None, "auth_failed", exc.reason)
    client_id = claims.client_id
    scenario = state.scenario
    if claims.raw.get("tid") != scenario.tenant.id:
        return AuthOutcome(None, "auth_failed", "token from another tenant", client_id)
    app = state.app(client_id)
    if app is None:
        return AuthOutcome(None, "auth_failed", "unknown application", client_id)
    delegate = None
    if claims.app_only:
        principal = f"app:{app.client_id}"
    else:
        user = state.user(claims.user_id or "")
        if user is None:
            return AuthOutcome(None, "auth_failed", "token user not in tenant", client_id)
        delegate = principal = user.upn

    def refuse(key: str, reason: str) -> AuthOutcome:
        return AuthOutcome(None, key, reason, client_id, principal)

    if not state.has_mailbox(user_name):
        return refuse("auth_failed", f"no mailbox {user_name}")
    disabled = smtp_auth_disabled(state, user_name)
    if disabled is not None:
        return refuse(disabled, "SMTP AUTH disabled")
    needed = "SMTP.SendAsApp" if claims.app_only else "SMTP.Send"
    if not claims.has_permission(needed):
        return refuse("auth_failed", f"token lacks {needed}")
    shared = state.shared_mailbox(user_name)
    owner = state.user(user_name)
    # The scenario's spelling of the address (has_mailbox said one of the two exists).
    mailbox = shared.address if shared is not None else (owner.upn if owner else user_name)
    if delegate is not None:
        full_access = {u.lower() for u in shared.full_access} if shared is not None else set()
        if mailbox.lower() != delegate.lower() and delegate.lower() not in full_access:
            return refuse("auth_failed", f"{delegate} may not use mailbox {mailbox}")
    elif app.mailbox_scope is not None and \
            mailbox.lower() not in (m.lower() for m in app.mailbox_scope):
        return refuse("auth_failed", f"mailbox {mailbox} outside the app's mailbox scope")
    identity = Identity(mailbox=mailbox, principal=principal, client_id=client_id,
                        delegate=delegate)
    return AuthOutcome(identity, "auth_ok", f"as {mailbox}", client_id, principal)


def may_send_as(state: SimState, identity: Identity, address: str) -> bool:
    """The session's own mailbox, the signed-in user, or a mailbox granting Send As."""
    a = address.lower()
    acting = {identity.mailbox.lower()} | ({identity.delegate.lower()} if identity.delegate else set())
    if a in acting:
        return True
    shared = state.shared_mailbox(address)
    return shared is not None and bool(acting & {u.lower() for u in shared.send_as})


def without_bcc(raw: bytes) -> bytes:
    """The message as recipients see it: the Bcc header field (folded lines too) removed."""
    lines = raw.splitlines(keepends=True)
    out: list[bytes] = []
    dropping = False
    for i, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):  # end of the header section
            out.extend(lines[i:])
            break
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower() == b"bcc"
        if not dropping:
            out.append(line)
    return b"".join(out)


def _header_addresses(raw: bytes, name: str) -> list[str]:
    headers = email.parser.BytesHeaderParser().parsebytes(raw)
    return [addr for _, addr in email.utils.getaddresses([str(v) for v in headers.get_all(name, [])])
            if addr]


def _message_id(raw: bytes) -> str | None:
    value = email.parser.BytesHeaderParser().parsebytes(raw).get("Message-ID")
    if value is None:
        return None
    return str(value).strip().strip("<>") or None


def _peer_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


# ---- aiosmtpd handler -------------------------------------------------------------------------
class _Handler:
    """aiosmtpd hooks: what Exchange answers to EHLO, MAIL, RCPT, DATA, RSET, QUIT."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def log(self, method: str, status: str, identity: Identity | None,
            detail: str | None = None) -> None:
        self.state.log(RequestRecord(
            time=self.state.clock.now(), protocol="smtp", method=method, path="smtp",
            status=_code(status), client_id=identity.client_id if identity else None,
            identity=identity.principal if identity else None, detail=detail,
        ))

    @staticmethod
    def identity(session: Session) -> Identity | None:
        data = session.auth_data
        return data if session.authenticated and isinstance(data, Identity) else None

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str) -> str:
        session.host_name = hostname
        return "250 " + reply("hello", ip=_peer_ip(session))

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        # aiosmtpd's own list is replaced: Exchange's lines, in Exchange's order.
        session.host_name = hostname
        lines = [reply("hello", ip=_peer_ip(session)),
                 f"SIZE {self.state.scenario.limits.upload_session_max}",
                 "PIPELINING", "DSN", "ENHANCEDSTATUSCODES",
                 ADVERTISED_AUTH if session.ssl is not None else "STARTTLS",
                 "8BITMIME", "SMTPUTF8"]
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope,
                          arg: str | None) -> str:
        return reply("noop_ok")

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return reply("reset_ok")

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return reply("closing")

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        identity = self.identity(session)
        if identity is None:
            status = reply("not_authenticated")
            self.log("MAIL", status, None, "MAIL before AUTH")
            return status
        size = next((o[5:] for o in mail_options if o.startswith("SIZE=")), None)
        if size is not None and int(size) > self.state.scenario.limits.upload_session_max:
            status = reply("size_exceeded")
            self.log("MAIL", status, identity, f"declared SIZE={size}")
            return status
        if not may_send_as(self.state, identity, address):
            status = reply("send_as_denied_mail")
            self.log("MAIL", status, identity, f"may not send as {address}")
            return status
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return reply("sender_ok")

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        limit = self.state.scenario.limits.recipients_per_message
        if len(envelope.rcpt_tos) >= limit:
            status = reply("too_many_recipients")
            self.log("RCPT", status, self.identity(session), f"over {limit} recipients")
            return status
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return reply("recipient_ok")

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        state = self.state
        identity = self.identity(session)
        # DATA follows an accepted MAIL, which needed both.
        assert identity is not None
        assert envelope.mail_from is not None
        raw = envelope.original_content or b""
        scenario = state.scenario
        user = state.user(identity.mailbox)
        max_size = (user.max_send_size if user else None) or scenario.limits.max_send_size
        if len(raw) > max_size:
            status = reply("size_exceeded")
            self.log("DATA", status, identity, f"{len(raw)} bytes > {max_size}")
            return status
        for sender in _header_addresses(raw, "From"):
            if not may_send_as(state, identity, sender):
                status = reply("send_as_denied_data", user=identity.acting_user, sender=sender)
                self.log("DATA", status, identity, f"From: {sender} not permitted")
                return status
        recipients = list(dict.fromkeys(r.lower() for r in envelope.rcpt_tos))
        refusal = state.limits.admit(
            identity.mailbox, len(recipients), per_minute=scenario.limits.messages_per_minute,
            per_day=scenario.limits.recipients_per_day, time_scale=scenario.limits.time_scale,
        )
        if refusal is not None:
            if refusal.limit == "rate":
                # A 421 ends the session (RFC 5321 §3.8); smtplib closes on it as well.
                status = reply("rate_exceeded")
                if isinstance(server, _ExchangeSmtp):
                    server.close_after_reply = True
            else:
                status = reply("quota_exceeded")
            self.log("DATA", status, identity, f"{refusal.limit} limit")
            return status
        raw = without_bcc(raw)
        message_id = _message_id(raw)
        if message_id is None:
            # Exchange stamps a Message-ID on submissions without one; the reply names it.
            message_id = f"{secrets.token_hex(16).upper()}@{HOST}"
            raw = f"Message-ID: <{message_id}>\r\n".encode("ascii") + raw
        delivered = state.mail.deliver(
            raw=raw, path="smtp", identity=identity.principal, sender=envelope.mail_from,
            recipients=envelope.rcpt_tos, now=state.clock.now(),
        )
        status = reply("accepted", message_id=message_id)
        self.log("DATA", status, identity, f"delivered {delivered.id} to {len(recipients)}")
        return status


# ---- aiosmtpd protocol ---------------------------------------------------------------------
class _ExchangeSmtp(SMTP):
    """aiosmtpd's SMTP speaking Exchange where its defaults differ."""

    line_length_limit = MAX_LINE

    def __init__(self, handler: _Handler, tls: ssl.SSLContext,
                 loop: asyncio.AbstractEventLoop, live: set[_ExchangeSmtp]) -> None:
        state = handler.state
        banner = reply("banner", date=email.utils.format_datetime(state.clock.now_datetime()))
        super().__init__(
            handler,
            hostname=HOST,
            # aiosmtpd writes "220 {hostname} {ident}"; the rest of the banner is the ident.
            ident=banner.removeprefix(f"220 {HOST} "),
            tls_context=tls,
            enable_SMTPUTF8=True,
            data_size_limit=None,  # sizes are judged by the handler, with Exchange's reply
            loop=loop,
        )
        self.state = state
        # Per connection: aiosmtpd's class-level dict is shared and grows at every EHLO.
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit, {"AUTH": MAX_LINE})
        self.close_after_reply = False
        self._connected_mailbox: str | None = None  # counted against 3 connections
        self._live = live
        live.add(self)

    # -- connection --------------------------------------------------------------------
    def connection_lost(self, error: Exception | None) -> None:
        if self._connected_mailbox is not None:
            self.state.limits.smtp_disconnect(self._connected_mailbox)
            self._connected_mailbox = None
        self._live.discard(self)
        super().connection_lost(error)

    def hang_up(self, *, abort: bool = False) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            key = _AIOSMTPD_REPLIES.get(status)
            await super().push(reply(key) if key is not None else status)
        else:
            await super().push(status)
        if self.close_after_reply and self.transport is not None:
            self.transport.close()

    # -- DSN: advertised, accepted, not acted on -----------------------------------------
    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(_drop_params(arg, _DSN_MAIL_PARAMS))

    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(_drop_params(arg, _DSN_RCPT_PARAMS))

    # -- AUTH ------------------------------------------------------------------------------
    async def smtp_AUTH(self, arg: str) -> None:
        """AUTH as Exchange answers it (aiosmtpd's version has other replies and checks)."""
        if await self.check_helo_needed("EHLO"):
            return
        session = self.session
        assert session is not None
        if session.ssl is None:
            await self.push(reply("auth_needs_tls"))
            return
        if session.authenticated:
            await self.push(reply("already_authenticated"))
            return
        args = (arg or "").split()
        if not args or len(args) > 2:
            await self.push(reply("invalid_arguments"))
            return
        mechanism = {"XOAUTH2": self.auth_XOAUTH2, "LOGIN": self.auth_LOGIN,
                     "PLAIN": self.auth_PLAIN}.get(args[0].upper())
        if mechanism is None:
            await self.push(reply("auth_unrecognized"))
            return
        result: AuthResult = await mechanism(self, args)
        if result.success:
            session.authenticated = True
            session.auth_data = result.auth_data
        if result.message is not None:
            await self.push(result.message)

    async def _client_response(self, args: list[str], challenge: str) -> bytes | None:
        """The initial response on the AUTH line, or the answer to a 334 challenge.

        None when the client aborted or sent bad base64 (the reply is already sent).
        """
        if len(args) == 2:
            try:
                return base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await self.push(reply("bad_base64"))
                return None
        answer = await self.challenge_auth(challenge)
        return None if answer is MISSING else bytes(answer)

    async def auth_XOAUTH2(self, _: SMTP, args: list[str]) -> AuthResult:
        blob = await self._client_response(args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parsed = parse_xoauth2(blob)
        if parsed is None:
            outcome = AuthOutcome(None, "auth_failed", "malformed XOAUTH2 response")
        else:
            outcome = authorize_xoauth2(self.state, *parsed)
        if outcome.identity is not None:
            mailbox = outcome.identity.mailbox
            limit = self.state.scenario.limits.smtp_concurrent_connections
            if self.state.limits.smtp_connect(mailbox, limit):
                self._connected_mailbox = mailbox
            else:
                outcome = AuthOutcome(None, "concurrent_connections",
                                      f"over {limit} connections to {mailbox}",
                                      outcome.client_id, outcome.principal)
                self.close_after_reply = True
        status = reply(outcome.reply_key)
        self.state.log(RequestRecord(
            time=self.state.clock.now(), protocol="smtp", method="AUTH", path="smtp",
            status=_code(status), client_id=outcome.client_id, identity=outcome.principal,
            detail=f"XOAUTH2: {outcome.reason}",
        ))
        return AuthResult(success=outcome.identity is not None, handled=False, message=status,
                          auth_data=outcome.identity)

    async def auth_LOGIN(self, _: SMTP, args: list[str]) -> AuthResult:
        # Exchange prompts with "Username:" and "Password:" and judges only afterwards.
        login = await self._client_response(args, "Username:")
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await self.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return self._refuse_basic("LOGIN", login)

    async def auth_PLAIN(self, _: SMTP, args: list[str]) -> AuthResult:
        blob = await self._client_response(args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")  # authzid NUL authcid NUL password
        return self._refuse_basic("PLAIN", parts[1] if len(parts) == 3 else b"")

    def _refuse_basic(self, mechanism: str, login: bytes) -> AuthResult:
        username = login.decode("utf-8", errors="replace").strip()
        status = reply(basic_auth_refusal(self.state, username))
        self.state.log(RequestRecord(
            time=self.state.clock.now(), protocol="smtp", method="AUTH", path="smtp",
            status=_code(status), identity=username or None,
            detail=f"{mechanism}: basic authentication refused",
        ))
        return AuthResult(success=False, handled=False, message=status)


def _drop_params(arg: str | None, names: tuple[str, ...]) -> str | None:
    if arg is None:
        return None
    return " ".join(p for p in arg.split(" ") if not p.upper().startswith(names))


class SmtpSubmission:
    """The SMTP listener: one ``_ExchangeSmtp`` per connection, all sharing ``state``."""

    def __init__(self, state: SimState, tls: ssl.SSLContext) -> None:
        self.state = state
        self.tls = tls
        self._handler = _Handler(state)
        self._server: asyncio.Server | None = None
        self._live: set[_ExchangeSmtp] = set()

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ExchangeSmtp(self._handler, self.tls, loop, self._live), sock=sock)

    async def stop(self) -> None:
        """Stop listening and hang up on open sessions.

        Sessions left open when the loop closes would leak their transports (a
        ResourceWarning, an error under ``filterwarnings = error``).
        """
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._live):
            conn.hang_up()
        # A TLS close waits for the client's close_notify; an idle client never sends
        # it, so whoever is still there after a moment is cut off.
        await self._until_all_gone(0.5)
        for conn in list(self._live):
            conn.hang_up(abort=True)
        await self._until_all_gone(1.0)
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the cancelled session tasks finish

    async def _until_all_gone(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self._live and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
