"""SMTP client submission with OAuth 2.0 (AUTH XOAUTH2), for tenants that prefer it to Graph.

One connection per message: connect, STARTTLS, ``AUTH XOAUTH2`` with a token for
Exchange Online, MAIL FROM the envelope sender, RCPT each recipient, DATA the bytes as
built (``relay365.outbound`` has removed any Bcc field, as SMTP clients submit; line
endings normalised, dots stuffed).  ``user=`` is the account that
signed in (delegated; MAIL FROM may then be a shared mailbox it has Send As on), or the
sending mailbox (app-only).  A ``535 5.7.3`` (token refused) is answered once with a
forced refresh on a new connection.  Every aiosmtplib failure becomes a relay365 error
in ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl

import aiosmtplib

from ..auth import AccessToken, TokenSource
from ..config import ConnectionSettings
from ..errors import PermanentError
from ._classify import Attempt, smtp_failure, unreachable
from ._types import Envelope, SendOutcome

_SERVICE = "Exchange Online SMTP"
_QUEUED_ID = re.compile(r"<([^<>\s]+)>")
TIMEOUT = 60.0


def _token_refused(exc: aiosmtplib.SMTPAuthenticationError) -> bool:
    """535 5.7.3: the token was refused (expired, revoked); 5.7.139 and others are not."""
    return exc.code == 535 and exc.message.strip().startswith("5.7.3 ")


class SmtpXoauth2Transport:
    """Sends through Exchange Online SMTP submission with XOAUTH2."""

    def __init__(self, settings: ConnectionSettings, tokens: TokenSource, *,
                 timeout: float = TIMEOUT) -> None:
        self.settings = settings
        self._tokens = tokens
        self._timeout = timeout
        self._tls = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file is not None else None)

    async def aclose(self) -> None:
        """Nothing is kept open between messages."""

    async def send(self, envelope: Envelope) -> SendOutcome:
        """Send ``envelope``; TransientError / PermanentError when Exchange does not take it."""
        data = envelope.raw
        attempt = Attempt(_SERVICE, sender=envelope.sender, size=len(data), step="SMTP submission")
        try:
            queued = await self._submit(envelope, data)
        except aiosmtplib.SMTPRecipientRefused as exc:
            raise smtp_failure(exc.code, exc.message, attempt.at(f"RCPT TO {exc.recipient}")) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise smtp_failure(exc.code, exc.message, attempt) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:  # refused, reset, timed out, TLS
            raise unreachable(exc, attempt) from exc
        return SendOutcome("smtp-xoauth2", "smtp", queued, len(data))

    def _user(self, envelope: Envelope, token: AccessToken) -> str:
        """The XOAUTH2 ``user=``: the signed-in account, or the mailbox sent from (app-only)."""
        if self.settings.mode == "delegated":
            return token.account or self.settings.account or envelope.sender
        return envelope.mailbox

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(hostname=self.settings.smtp_host, port=self.settings.smtp_port,
                               start_tls=True, tls_context=self._tls, timeout=self._timeout)
        try:
            await smtp.connect()
        except BaseException:
            smtp.close()
            raise
        return smtp

    async def _submit(self, envelope: Envelope, data: bytes) -> str | None:
        smtp = await self._connect()
        try:
            token = await self._tokens.acquire_token("smtp")
            try:
                await smtp.auth_xoauth2(self._user(envelope, token), token.value)
            except aiosmtplib.SMTPAuthenticationError as exc:
                if not _token_refused(exc):
                    raise
                smtp.close()
                token = await self._tokens.acquire_token("smtp", force_refresh=True,
                                                         stale=token.value)
                smtp = await self._connect()
                await smtp.auth_xoauth2(self._user(envelope, token), token.value)
            return await self._transaction(smtp, envelope, data)
        finally:
            await self._hang_up(smtp)

    async def _transaction(self, smtp: aiosmtplib.SMTP, envelope: Envelope, data: bytes
                           ) -> str | None:
        """MAIL, RCPT for every recipient (all or none), DATA; the id Exchange queued it as."""
        addresses = (envelope.sender, *envelope.recipients)
        utf8 = not all(a.isascii() for a in addresses)
        options = []
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        if not data.isascii() and smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if utf8:
            if not smtp.supports_extension("smtputf8"):
                raise PermanentError(f"{_SERVICE} does not take non-ASCII addresses (SMTPUTF8), "
                                     f"needed for the message from {envelope.sender}")
            options.append("SMTPUTF8")
        encoding = "utf-8" if utf8 else "ascii"
        await smtp.mail(envelope.sender, options=options, encoding=encoding)
        for recipient in envelope.recipients:
            try:
                await smtp.rcpt(recipient, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused:
                # Sending to the others now would make a retry send them a second copy.
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await smtp.rset()
                raise
        reply = await smtp.data(data)
        match = _QUEUED_ID.search(reply.message)
        return match.group(1) if match else None

    @staticmethod
    async def _hang_up(smtp: aiosmtplib.SMTP) -> None:
        protocol = smtp.protocol
        if smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit(timeout=5)
        smtp.close()
        # Closing TLS takes a few turns of the loop; a loop that ends right after (a script's
        # asyncio.run) would otherwise leave the socket unclosed.  aiosmtplib offers no
        # awaitable for it, so watch its protocol's flag for up to a second.
        for _ in range(100):
            if protocol is None or getattr(protocol, "_connection_lost", True):
                return
            await asyncio.sleep(0.01)
