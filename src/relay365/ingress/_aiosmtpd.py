"""Everything relay365 takes from aiosmtpd beyond its public hooks, in one module, for one version.

The relay's SMTP policy lives in the handler's hooks (``RelayHandler`` in ``_smtp.py``:
``handle_EHLO``/``handle_MAIL``/``handle_RCPT``/``handle_DATA``, ``handle_AUTH``, the
``auth_PLAIN``/``auth_LOGIN`` mechanisms, ``handle_exception``).  ``RelaySMTP`` is aiosmtpd's
``SMTP`` protocol with what a hook cannot do, written against aiosmtpd ``AIOSMTPD_VERSION``,
which pyproject.toml pins exactly.  ``RELIES_ON`` names each aiosmtpd member this module
copies, reads or assumes, with a digest of its source; a test fails when the installed
aiosmtpd is another version or any of those members changed, so that an upgrade is a
review of this module (then a new pin and new digests), never a silent change of behaviour.

What it overrides, and why the public API does not suffice:

``smtp_DATA``
    aiosmtpd reads DATA a line at a time (see ``_data.py``: ~5x the message in memory, most of
    a session's CPU); ``read_data`` reads it in chunks and gives the same bytes.  aiosmtpd
    offers no hook on how DATA is read, so the command method is replaced (``smtp_<COMMAND>``
    overrides are documented), copying aiosmtpd's checks before the 354 with their replies,
    and ending as aiosmtpd does (``envelope.content``/``original_content``, the handler's
    ``handle_DATA``, a fresh envelope, the handler's reply).  It reads from ``self._reader``,
    the one private member used: the StreamReader aiosmtpd keeps for the connection (set in
    ``_cb_client_connected``, moved onto the TLS transport by ``connection_made`` after
    STARTTLS); aiosmtpd has no public way to the stream.  relay365 never sets
    ``decode_data``, so the content stays bytes.  The "too much data" reply is relay365's
    own (``552 5.3.4``) where aiosmtpd's has no enhanced status code.
``push``
    aiosmtpd refuses ``MAIL FROM ... SIZE=`` over ``data_size_limit`` inside ``smtp_MAIL``,
    before any hook runs, with a reply of its own text and no enhanced status code;
    ``push`` (public) swaps that exact text for relay365's ``552 5.3.4``.
``__dir__``
    aiosmtpd's ``__init__`` builds its command and AUTH tables on every connection from
    ``dir(self)`` and ``inspect.getmembers(self)`` (a getattr on each of ~150 names), and those
    tables are its only use of ``dir`` on the protocol: listing just the ``smtp_*`` and
    ``auth_*`` names halves the cost of setting up a connection.

Also used, all documented: ``_create_envelope`` (an extension point despite its name:
``RelayEnvelope`` carries the route chosen at MAIL FROM), ``line_length_limit`` (the
StreamReader's limit), ``event_handler``, ``session``, ``envelope``, ``transport``.  And
``quiet_login_data_warning`` drops a WARNING that aiosmtpd 1.4 logs, about itself, on every
successful AUTH.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from typing import AnyStr

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from ..policy import Route, replies
from ._data import read_data

log = logging.getLogger("relay365.ingress.smtp")

# The version this module was written against; pyproject.toml pins the same.
AIOSMTPD_VERSION = "1.4.6"

# The aiosmtpd members this module relies on: sha256 of their source, first 16 hex digits
# (see ``source_digest``).  What each is for:
RELIES_ON = {
    # copied by RelaySMTP.smtp_DATA: its checks, replies and ending
    "SMTP.smtp_DATA": "3a33f30d3fd6d02f",
    # what smtp_DATA ends with; copied as ``self.envelope = self._create_envelope()``
    "SMTP._set_post_data_state": "1dc8a8abca2a8164",
    # sets the private ``_reader`` that smtp_DATA reads from
    "SMTP._cb_client_connected": "a73e95bb7f362ab9",
    # after STARTTLS, points ``_reader`` at the TLS transport (so reading DATA reads TLS)
    "SMTP.connection_made": "77a45df5065bba34",
    # builds the command and AUTH tables with dir(self) (__dir__); the reader's limit
    "SMTP.__init__": "8a9ca80f23ad9bf2",
    # the SIZE refusal whose text ``push`` replaces
    "SMTP.smtp_MAIL": "80dd938e7791acfb",
    # the WARNING that quiet_login_data_warning drops
    "Session.login_data": "bf5ece146658f3bb",
}

# aiosmtpd's reply to a MAIL FROM whose SIZE is over the limit (in smtp_MAIL).
_AIOSMTPD_SIZE_REFUSAL = "552 Error: message size exceeds fixed maximum message size"


def source_digest(qualified_name: str) -> str:
    """The digest ``RELIES_ON`` keeps for an aiosmtpd member named ``Class.member``."""
    class_name, member = qualified_name.split(".")
    owner = {"SMTP": SMTP, "Session": Session}[class_name]
    obj = inspect.getattr_static(owner, member)
    if isinstance(obj, property):
        source = "".join(inspect.getsource(f) for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
    else:
        source = inspect.getsource(obj)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


class RelayEnvelope(Envelope):
    """aiosmtpd's envelope plus the route policy chose at MAIL FROM."""

    def __init__(self) -> None:
        super().__init__()
        self.route: Route | None = None


_DIR_NAMES: dict[type[SMTP], list[str]] = {}


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP protocol with relay365's envelope and reply texts, and DATA read in chunks.

    The handler must have ``handle_DATA`` (``RelayHandler`` has).
    """

    # RFC 5321 limits a line to 1000 octets, but PHP and WordPress send longer lines of HTML,
    # and Postfix takes them.  The limit of aiosmtpd's StreamReader: DATA (smtp_DATA) reads in
    # chunks of up to this much and limits no line, only the size of the message.
    line_length_limit = 1 << 20

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def __dir__(self) -> list[str]:
        """Only the ``smtp_*`` and ``auth_*`` names, worked out once per class (see the module)."""
        cls = type(self)
        names = _DIR_NAMES.get(cls)
        if names is None:
            names = _DIR_NAMES[cls] = sorted(n for n in super().__dir__() if n.startswith(("smtp_", "auth_")))
        return list(names)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status == _AIOSMTPD_SIZE_REFUSAL:
            await super().push(replies.MESSAGE_TOO_BIG)
        else:
            await super().push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in large chunks (``read_data``) instead of by line."""
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
            original_content = await read_data(self._reader, self.data_size_limit)
        except asyncio.CancelledError:
            log.info("Connection lost during DATA")
            _hang_up(self)
            raise
        except asyncio.IncompleteReadError:
            log.info("Connection closed during DATA")
            _hang_up(self)
            return
        if original_content is None:
            # Like aiosmtpd: answered once the data is read (RFC 5321 4.2.5), session usable.
            await self.push(replies.MESSAGE_TOO_BIG)
            self.envelope = self._create_envelope()
            return

        self.envelope.content = original_content
        self.envelope.original_content = original_content
        status = await self.event_handler.handle_DATA(self, self.session, self.envelope)
        self.envelope = self._create_envelope()
        await self.push("250 OK" if status is MISSING else status)


def _hang_up(server: SMTP) -> None:
    # What aiosmtpd's ``self._writer.close()`` does there: close the transport (the TLS one
    # after STARTTLS); it is None once the connection is lost, and then closed already.
    if server.transport is not None:
        server.transport.close()


class _QuietLoginData(logging.Filter):
    """aiosmtpd 1.4 logs a WARNING on every successful AUTH, about its own use of a deprecated
    attribute (``Session.login_data``); it says nothing about relay365 or the client."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


_quiet_login_data = _QuietLoginData()


def quiet_login_data_warning() -> None:
    """Drop aiosmtpd's ``Session.login_data`` WARNING from its logger (once, however often called)."""
    logging.getLogger("mail.log").addFilter(_quiet_login_data)
