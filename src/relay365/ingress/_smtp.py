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

SMTP smuggling.  ``RelaySMTP.smtp_DATA`` (aiosmtpd's, reading in large chunks) ends the data
only at ``<CR><LF>.<CR><LF>`` (a line that is exactly ``.\\r\\n``, as aiosmtpd 1.4.6), so
``<LF>.<LF>``, ``<LF>.<CR><LF>`` and ``<CR>.<CR>`` never end the data here; they arrive
verbatim inside ``envelope.original_content`` (only the dot-stuffing is removed).  A server
further on (Exchange, or any SMTP hop) might read them as the end of the message and the
rest as a second, forged one, so like Postfix's ``smtpd_forbid_bare_newline`` the relay
refuses any message holding a CR or LF outside a CRLF pair: ``handle_DATA`` counts them
in ``original_content`` (three ``bytes.count`` calls, no copy).  Nothing is queued, and
since aiosmtpd consumed the whole data up to the real ``<CR><LF>.<CR><LF>``, the session
stays in step.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import logging
import re
import socket
import ssl
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from .._limits import FailedLogins
from ..config import Settings, SmtpListener
from ..errors import ConfigError, StoreError
from ..mime import has_bare_newline, read_head
from ..policy import Client, Policy, Refusal, Route, replies
from ._credentials import Credentials
from ._outbox import NewMessage, Outbox

log = logging.getLogger("relay365.ingress.smtp")

# aiosmtpd enforces the size limit itself, with replies that carry no enhanced status code.
_AIOSMTPD_REPLIES = {
    "552 Error: message size exceeds fixed maximum message size": replies.MESSAGE_TOO_BIG,
    "552 Error: Too much mail data": replies.MESSAGE_TOO_BIG,
}


class RelayEnvelope(Envelope):
    """aiosmtpd's envelope plus the route policy chose at MAIL FROM."""

    def __init__(self) -> None:
        super().__init__()
        self.route: Route | None = None


_DIR_NAMES: dict[type[SMTP], list[str]] = {}


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP protocol with relay365's envelope and reply texts, and DATA read in chunks."""

    # RFC 5321 limits a line to 1000 octets, but PHP and WordPress send longer lines of HTML,
    # and Postfix takes them.  The limit of aiosmtpd's StreamReader: DATA (smtp_DATA) reads in
    # chunks of up to this much and limits no line, only the size of the message.
    line_length_limit = 1 << 20

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def __dir__(self) -> list[str]:
        """Only the ``smtp_*`` and ``auth_*`` names, worked out once per class.

        aiosmtpd's ``__init__`` builds its command and AUTH tables on every connection with
        ``dir(self)`` and ``inspect.getmembers(self)`` (a getattr on each of ~150 names), and
        keeps only those names: its only uses of ``dir`` on the protocol.  Listing just them
        gives the same tables for half the cost of a connection's setup.
        """
        cls = type(self)
        names = _DIR_NAMES.get(cls)
        if names is None:
            names = _DIR_NAMES[cls] = sorted(n for n in super().__dir__() if n.startswith(("smtp_", "auth_")))
        return list(names)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status in _AIOSMTPD_REPLIES:
            await super().push(_AIOSMTPD_REPLIES[status])
        else:
            await super().push(status)

    # -- DATA --------------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in large chunks instead of line by line.

        aiosmtpd 1.4.6 reads one line per ``readuntil(b"\\r\\n")`` into a list of bytearrays
        and joins them: ~5x the message in memory at the peak, and most of the CPU of a
        session.  This reads up to the first ``<CR><LF>.<CR><LF>`` (the CRLF that ended the
        DATA command counts, so ``.<CR><LF>`` right after the 354 is an empty message) into
        one BytesIO, leaves what follows in the reader for the next (pipelined) command,
        and removes the dot-stuffing in place.  The message is the same bytes aiosmtpd would
        give: lines are CRLF-terminated, a line that starts with a dot loses that dot, and a
        ``<LF>.<LF>`` or any bare CR or LF is data (``handle_DATA`` refuses it).  One thing
        differs: a line longer than ``line_length_limit`` is not refused with 500 (only the
        size limit holds, with 552 once the data is read, as aiosmtpd does).
        """
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return

        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            original_content = await self._read_data()
        except asyncio.CancelledError:
            log.info("Connection lost during DATA")
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            log.info("Connection closed during DATA")
            self._writer.close()
            return
        if original_content is None:
            # Like aiosmtpd: answered once the data is read (RFC 5321 4.2.5), session usable.
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it untyped
            return

        content: str | bytes
        if self._decode_data:
            if self.enable_SMTPUTF8:
                content = original_content.decode("utf-8", errors="surrogateescape")
            else:
                try:
                    content = original_content.decode("ascii", errors="strict")
                except UnicodeDecodeError:
                    await self.push("500 Error: strict ASCII mode")
                    return
        else:
            content = original_content
        self.envelope.content = content
        self.envelope.original_content = original_content

        status = await self._call_handler_hook("DATA") if "DATA" in self._handle_hooks else MISSING
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> bytes | None:
        """The message, up to the ``.<CR><LF>`` that ends it, dot-stuffing removed; None when
        it is larger than ``data_size_limit`` (then read to its end and discarded).

        The chunks go into a BytesIO, whose buffer is a bytes object that grows in place and
        that ``getvalue`` returns without a copy: the message is in memory once, not twice.
        """
        reader = self._reader
        limit = self.data_size_limit
        data = io.BytesIO()
        received = 0
        too_much = False
        # The last bytes read, to find an end that spans two reads; the CRLF that ended the
        # DATA command to begin with.
        tail = b"\r\n"
        while True:
            partial = _end_prefix(tail)
            if partial:
                # The end may be the next 5 - partial bytes, and cannot end any sooner:
                # reading exactly those never takes a byte of the next command.
                chunk = await reader.readexactly(len(_END) - partial)
            else:
                try:
                    # No end starts in what was read: the first in the stream is the one.
                    chunk = await reader.readuntil(_END)
                except asyncio.LimitOverrunError as exc:
                    # Not in the reader's first ``limit`` bytes: no end starts in the first
                    # ``consumed`` ones (or the end starts right there); take those.
                    chunk = await reader.readexactly(exc.consumed)
            received += len(chunk)
            window = tail + chunk[-len(_END):]
            done = window.endswith(_END)
            tail = window[-(len(_END) - 1):]
            # Before the end, up to 2 bytes of what was read (".\r") may be the end's.
            if limit and not too_much and received - (3 if done else 2) > limit:
                too_much = True
                data = io.BytesIO()  # let go of it at once; read on to the end
            if not too_much:
                data.write(chunk)
            if done:
                if too_much:
                    return None
                # Without the final ".\r\n": its CRLF ends the message's last line.
                return _unstuffed(data, data.tell() - 3)


_END = b"\r\n.\r\n"
_STUFFED = re.compile(rb"\r\n\.")
_END_PREFIXES = tuple((n, _END[:n]) for n in range(len(_END) - 1, 0, -1))


def _end_prefix(tail: bytes) -> int:
    """How many bytes at the end of ``tail`` could begin ``<CR><LF>.<CR><LF>`` (0 to 4)."""
    for n, prefix in _END_PREFIXES:
        if tail.endswith(prefix):
            return n
    return 0


def _unstuffed(data: io.BytesIO, size: int) -> bytes:
    """The first ``size`` bytes of ``data`` without the first dot of every line that starts
    with one (RFC 5321 4.5.2): moved within ``data``'s buffer, which is then returned."""
    with data.getbuffer() as view:
        read = 1 if size and view[0] == ord(".") else 0
        found = _STUFFED.search(view, read, size)  # the end's dot (at ``size``) is left out
        if read or found is not None:
            write = 0
            while found is not None:
                keep = found.start() + 2  # through the CRLF; the dot after it goes
                view[write:write + keep - read] = view[read:keep]  # a memmove: overlap is fine
                write += keep - read
                read = keep + 1
                found = _STUFFED.search(view, read, size)
            view[write:write + size - read] = view[read:size]
            size = write + size - read
    data.truncate(size)
    return data.getvalue()


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


class _QuietDeprecation(logging.Filter):
    """aiosmtpd 1.4 logs a WARNING on every successful AUTH, about its own use of a deprecated
    attribute (``Session.login_data``); it says nothing about relay365 or the client."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


_quiet_deprecation = _QuietDeprecation()


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
    logging.getLogger("mail.log").addFilter(_quiet_deprecation)  # the same filter once, however often
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
