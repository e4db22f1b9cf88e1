"""The SMTP relay: aiosmtpd's protocol, relay365's policy in its hooks, the outbox behind DATA.

Per connection, aiosmtpd's ``Session`` holds who logged in (``auth_data``: a ``Client``);
per transaction, the envelope holds the route chosen at MAIL FROM.  The hooks decide
(``handle_MAIL``/``handle_RCPT`` answer ``5xx``/``4xx`` or accept), ``handle_DATA``
commits to the outbox and answers ``250 2.0.0 Ok: queued as <id>`` only once it is
committed.  Nothing here calls Microsoft: delivery is another part that shares only the
outbox.

AUTH (PLAIN, LOGIN) is offered only over TLS (STARTTLS or implicit), or in the clear to
loopback clients when ``relay.auth_without_tls_on_loopback`` says so, and only when
``relay.users`` is not empty; passwords are checked against their argon2id hashes in a
worker thread and never logged (aiosmtpd masks the AUTH line itself).

What aiosmtpd's hooks cannot do (reading DATA in chunks, its SIZE reply) is ``RelaySMTP``'s,
in ``_aiosmtpd.py``: the one module that goes beyond aiosmtpd's public API, for one version.

SMTP smuggling.  ``RelaySMTP.smtp_DATA`` (aiosmtpd's, reading in large chunks) ends the data
only at ``<CR><LF>.<CR><LF>`` (a line that is exactly ``.\\r\\n``, as aiosmtpd 1.4.6), so
``<LF>.<LF>``, ``<LF>.<CR><LF>`` and ``<CR>.<CR>`` never end the data here; they arrive
verbatim inside ``envelope.original_content`` (only the dot-stuffing is removed).  A server
further on (Exchange, or any SMTP hop) might read them as the end of the message and the
rest as a second, forged one, so like Postfix's ``smtpd_forbid_bare_newline`` the relay
refuses any message holding a CR or LF outside a CRLF pair: ``handle_DATA`` counts them
in ``original_content`` (three ``bytes.count`` calls, no copy).  Nothing is queued, and
since the whole data was read up to the real ``<CR><LF>.<CR><LF>``, the session stays in
step.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import socket
import ssl
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from .._failed_logins import FailedLogins
from ..config import Settings, SmtpListener
from ..errors import ConfigError, StoreError
from ..mime import has_bare_newline, read_head
from ..policy import Client, Policy, Refusal, replies
from ._aiosmtpd import RelayEnvelope, RelaySMTP, quiet_login_data_warning
from ._credentials import Credentials
from ._outbox import NewMessage, Outbox

log = logging.getLogger("relay365.ingress.smtp")


def peer_address(session: Session) -> str | None:
    """The client's IP address (IPv4-mapped IPv6 addresses as IPv4)."""
    peer = session.peer
    if not isinstance(peer, tuple) or not peer:
        return None
    host = str(peer[0])
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return host


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class RelayHandler:
    """The aiosmtpd handler of one listener: policy at MAIL/RCPT/DATA, enqueue at DATA."""

    def __init__(self, listener: SmtpListener, settings: Settings, store: Outbox, policy: Policy,
                 credentials: Credentials, failed_logins: FailedLogins) -> None:
        self.listener = listener
        self._settings = settings
        self._store = store
        self._policy = policy
        self._credentials = credentials
        self._failed_logins = failed_logins  # shared by every listener

    def __repr__(self) -> str:
        return f"RelayHandler({self.listener.host}:{self.listener.port}, tls={self.listener.tls})"

    # -- TLS and AUTH ------------------------------------------------------------------------

    def _encrypted(self, server: SMTP, session: Session) -> bool:
        return self.listener.tls == "implicit" or session.ssl is not None

    def _offers_auth(self, server: SMTP, session: Session) -> bool:
        """AUTH over TLS only (or plain to loopback clients when the settings say so)."""
        if not self._credentials.has_users:
            return False
        if self._encrypted(server, session):
            return True
        return self._settings.relay.auth_without_tls_on_loopback and _is_loopback(peer_address(session))

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        offers_auth = self._offers_auth(server, session)
        out = [r for r in responses if offers_auth or not r[4:].startswith("AUTH")]
        out.insert(len(out) - 1, "250-PIPELINING")
        return out

    async def handle_AUTH(self, server: SMTP, session: Session, envelope: Envelope, args: list[str]) -> Any:
        # aiosmtpd's own auth_require_tls check runs first; this one also covers the listeners
        # where it is off (implicit TLS; plain AUTH allowed to loopback clients only).
        if not self._credentials.has_users:
            return replies.AUTH_NOT_ENABLED
        if not self._offers_auth(server, session):
            return replies.ENCRYPTION_REQUIRED
        return MISSING

    # aiosmtpd calls its ``authenticator`` synchronously, on the event loop, and argon2 spends
    # 50-250 ms per check: every other session would stall during each login.  So PLAIN and
    # LOGIN are the handler's own mechanisms (aiosmtpd prefers a handler's ``auth_<NAME>``
    # to its built-in one): they read the credentials as aiosmtpd does, check them in a
    # worker thread, and return AuthResult like an authenticator.

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        blob = await server.challenge_auth("") if len(args) == 1 else await _decode(server, args[1])
        if not isinstance(blob, bytes):
            return AuthResult(success=False, handled=True)  # aiosmtpd answered already
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._check_password(server, "PLAIN", LoginPassword(parts[1], parts[2]))

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        login = (await server.challenge_auth(server.AuthLoginUsernameChallenge) if len(args) == 1
                 else await _decode(server, args[1]))
        if not isinstance(login, bytes):
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._check_password(server, "LOGIN", LoginPassword(login, password))

    async def _check_password(self, server: SMTP, mechanism: str, credentials: LoginPassword) -> AuthResult:
        login = credentials.login.decode("utf-8", "replace")
        assert server.session is not None
        peer = peer_address(server.session)
        relay = self._settings.relay
        wait = self._failed_logins.retry_after(peer or "?", relay.auth_failures, relay.auth_failure_window)
        if wait is not None:  # refused before argon2 runs: guessing costs the guesser, not us
            log.warning("AUTH %s refused for user %r from [%s]: too many failed logins",
                        mechanism, login, peer)
            return AuthResult(success=False, handled=False,
                              message=replies.AUTH_TOO_MANY.format(seconds=int(wait) + 1))
        client = await asyncio.get_running_loop().run_in_executor(
            None, self._credentials.check_user, login, credentials.password)
        if client is None:
            self._failed_logins.failed(peer or "?")
            log.warning("AUTH %s failed for user %r from [%s]", mechanism, login, peer)
            return AuthResult(success=False, handled=False, message=replies.AUTH_FAILED)
        self._failed_logins.succeeded(peer or "?")
        log.info("AUTH %s: user %r logged in from [%s]", mechanism, client.name, peer)
        return AuthResult(success=True, auth_data=client)

    # -- the transaction -------------------------------------------------------------------

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: RelayEnvelope, address: str,
                          mail_options: list[str]) -> str:
        client = _client_of(session)
        peer = peer_address(session)
        refusal = self._policy.check_client(peer, client, require_auth=self.listener.require_auth)
        if refusal is None:
            route = self._policy.route(address, client)
            if isinstance(route, Refusal):
                refusal = route
            else:
                envelope.route = route
                envelope.mail_from = address
                envelope.mail_options.extend(mail_options)
                return replies.SENDER_OK
        return _reject("MAIL", session, refusal, f"from=<{address}>")

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: RelayEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        refusal = (self._policy.check_recipient(address)
                   or self._policy.check_recipients(len(envelope.rcpt_tos) + 1, envelope.route))
        if refusal is not None:
            return _reject("RCPT", session, refusal, f"from=<{envelope.mail_from}> to=<{address}>")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: RelayEnvelope) -> str:
        raw: bytes = envelope.original_content or b""
        route = envelope.route
        assert route is not None  # aiosmtpd refuses DATA before an accepted MAIL and RCPT
        client = _client_of(session)
        if has_bare_newline(raw):
            return _reject("DATA", session, Refusal("data", "bare_newline", replies.BARE_NEWLINE,
                                                    replies.BARE_NEWLINE_FIX), f"from=<{envelope.mail_from}>")
        head = read_head(raw)
        refusal = self._policy.check_header_from(route, head.addresses("From"), client)
        if refusal is not None:
            return _reject("DATA", session, refusal, f"from=<{envelope.mail_from}>")
        assert envelope.mail_from is not None  # set with the route by handle_MAIL
        message = NewMessage(
            connection=route.connection.name, sender=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos), raw=raw, source="smtp",
            client=_client_label(session, client), subject=head.subject)
        try:
            queue_id = await self._store.enqueue(message)
        except StoreError as exc:
            log.warning("NOQUEUE: %s from %s: %s; from=<%s> to=%d size=%d", replies.STORE_UNAVAILABLE,
                        message.client, exc, message.sender, len(message.recipients), len(raw))
            return replies.STORE_UNAVAILABLE
        # A client that hangs up before this answer may or may not have its message queued (the
        # store commits a batch it took), as with Postfix; an answered 250 is always committed.
        log.info("%s: client=%s, from=<%s>, to=%d, size=%d, connection=%s, source=smtp", queue_id,
                 message.client, message.sender, len(message.recipients), len(raw), message.connection)
        return replies.QUEUED.format(queue_id=queue_id)

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session failed: %s", error, exc_info=error)
        return replies.INTERNAL_ERROR


async def _decode(server: SMTP, text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        await server.push("501 5.5.2 Can't decode base64")
        return None


def _client_of(session: Session) -> Client | None:
    data = session.auth_data if session.authenticated else None
    return data if isinstance(data, Client) else None


def _client_label(session: Session, client: Client | None) -> str:
    peer = peer_address(session) or "unknown"
    return f"{client.name} [{peer}]" if client is not None else f"[{peer}]"


def _reject(stage: str, session: Session, refusal: Refusal, detail: str) -> str:
    """Log the refusal as Postfix does (no queue id yet) and give the reply to send."""
    log.info("NOQUEUE: reject: %s from [%s]: %s; %s", stage, peer_address(session), refusal.reply, detail)
    return refusal.reply


def _tls_context(listener: SmtpListener) -> ssl.SSLContext:
    assert listener.certificate_file is not None and listener.private_key_file is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(listener.certificate_file, listener.private_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"SMTP listener {listener.host}:{listener.port}: cannot load the certificate "
                          f"{listener.certificate_file} and key {listener.private_key_file}: {exc}") from exc
    return context


async def start_smtp_listeners(settings: Settings, store: Outbox, policy: Policy) -> list[asyncio.Server]:
    """Listen on every ``relay.smtp`` listener on the running loop; close the servers to stop.

    ConfigError when a listener cannot start (address in use, unreadable certificate).
    """
    loop = asyncio.get_running_loop()
    quiet_login_data_warning()
    # aiosmtpd would look the name up on every connection; once is enough.
    hostname = await loop.run_in_executor(None, socket.getfqdn)
    credentials = Credentials(settings.relay)
    failed_logins = FailedLogins()
    servers: list[asyncio.Server] = []
    try:
        for listener in settings.relay.smtp:
            handler = RelayHandler(listener, settings, store, policy, credentials, failed_logins)
            servers.append(await _start(handler, settings, hostname, loop))
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers


async def _start(handler: RelayHandler, settings: Settings, hostname: str,
                 loop: asyncio.AbstractEventLoop) -> asyncio.Server:
    listener = handler.listener
    context = _tls_context(listener) if listener.tls != "none" else None
    # aiosmtpd refuses AUTH without STARTTLS by itself; implicit TLS and loopback AUTH are the
    # handler's to judge (see RelayHandler.handle_AUTH).
    require_tls = listener.tls != "implicit" and not settings.relay.auth_without_tls_on_loopback

    def protocol() -> RelaySMTP:
        return RelaySMTP(
            handler, data_size_limit=settings.relay.max_message_size, enable_SMTPUTF8=True,
            hostname=hostname, ident="ESMTP relay365",
            tls_context=context if listener.tls == "starttls" else None,
            auth_require_tls=require_tls, loop=loop)

    try:
        server = await loop.create_server(protocol, host=listener.host, port=listener.port,
                                          ssl=context if listener.tls == "implicit" else None)
    except OSError as exc:
        raise ConfigError(f"cannot listen for SMTP on {listener.host}:{listener.port}: {exc.strerror or exc} "
                          "(another program uses the port? change relay.smtp port)") from exc
    for sock in server.sockets:
        log.info("SMTP relay listening on %s (tls=%s, require_auth=%s)", sock.getsockname()[:2],
                 listener.tls, listener.require_auth)
    return server
