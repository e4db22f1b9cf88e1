"""``relay365 sendmail``: the sendmail command that PHP's mail(), cron and scripts call.

    sendmail [-t] [-i] [-oi] [-f SENDER] [-F NAME] [-o... ignored] [RECIPIENT...] < message

The message goes straight into the outbox (the same store the relay works from), or, when
``RELAY365_SENDMAIL_SMTP=host:port`` is set, to the running relay over SMTP (for users
that may not write the store).  It is silent when the message is queued; otherwise it
says why and how to fix it on stderr, and exits with a sysexits code, as sendmail does.
"""

from __future__ import annotations

import asyncio
import email.utils
import getopt
import getpass
import os
import re
import smtplib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from ..config import Settings, load_settings
from ..errors import ConfigError, StoreError
from ..mime import normalise_newlines, read_head
from ..policy import Client, Policy, Refusal, prepare
from ..store import Store
from ._outbox import NewMessage

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

SMTP_ENV = "RELAY365_SENDMAIL_SMTP"
USAGE = "usage: relay365 sendmail [-t] [-i] [-f sender] [-F full-name] [-o option] [recipient ...]"
# sendmail's option letters; those taking a value have a colon.  Unknown letters are usage errors.
_OPTIONS = "A:B:C:F:GL:N:O:R:UV:X:b:ce:f:h:imno:p:q:r:tvx"
_IGNORED_MODES = {"m"}  # -bm: deliver mail, the default
_END_OF_INPUT = re.compile(rb"(?:^|\n)\.\r?(?:\n|$)")
_REFUSAL_EXIT = {"auth": EX_NOPERM, "client": EX_NOPERM, "sender": EX_NOPERM,
                 "recipients": EX_DATAERR, "size": EX_DATAERR, "data": EX_DATAERR}
_REASON_EXIT = {"bad_recipient": EX_NOUSER}


class _Failure(Exception):
    def __init__(self, status: int, message: str, fix: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fix = fix


@dataclass
class _Options:
    extract: bool = False  # -t
    ignore_dots: bool = False  # -i, -oi
    sender: str | None = None  # -f, -r
    full_name: str | None = None  # -F
    recipients: list[str] = field(default_factory=list)


def parse_arguments(argv: Sequence[str]) -> _Options:
    """The options that matter of a sendmail command line (others are accepted and ignored)."""
    try:
        pairs, rest = getopt.gnu_getopt(list(argv), _OPTIONS)
    except getopt.GetoptError as exc:
        raise _Failure(EX_USAGE, f"{exc.msg}\n{USAGE}",
                       "use the options PHP and cron use: -t -i -f -F") from exc
    options = _Options()
    for flag, value in pairs:
        if flag == "-t":
            options.extract = True
        elif flag == "-i" or (flag == "-o" and value == "i"):
            options.ignore_dots = True
        elif flag in ("-f", "-r"):
            options.sender = _address(value) if value.strip() not in ("", "<>") else None
        elif flag == "-F":
            options.full_name = value
        elif flag == "-b" and value not in _IGNORED_MODES:
            raise _Failure(EX_USAGE, f"-b{value} is not supported: relay365 sendmail only sends mail (-bm)",
                           "drop the option; use `relay365 log` to look at the queue")
        elif flag == "-q":
            raise _Failure(EX_USAGE, "-q is not supported: the relay delivers the queue by itself",
                           "drop the option")
    options.recipients = [a for arg in rest for a in _addresses(arg)]
    return options


def _addresses(text: str) -> list[str]:
    return [addr for _, addr in email.utils.getaddresses([text]) if addr]


def _address(text: str) -> str:
    found = _addresses(text)
    if len(found) != 1 or "@" not in found[0]:
        raise _Failure(EX_USAGE, f"-f {text!r} is not an email address", "give -f user@example.com")
    return found[0]


def read_message(stdin: BinaryIO, ignore_dots: bool) -> bytes:
    """The message from stdin, every line ending in CRLF; a lone '.' ends it unless -i."""
    data = stdin.read()
    if not ignore_dots:
        end = _END_OF_INPUT.search(data)
        if end is not None:  # keep the newline that ends the line before the dot
            data = data[:end.start() + (1 if end.group().startswith(b"\n") else 0)]
    if data.startswith(b"From "):  # an mbox separator line, not a header
        data = data.partition(b"\n")[2]
    return normalise_newlines(data)


def _local_user() -> str:
    try:
        name = getpass.getuser()
    except (OSError, KeyError):
        name = "?"
    uid = os.getuid() if hasattr(os, "getuid") else -1
    return f"uid {uid} ({name})"


def sendmail_main(argv: list[str], stdin: BinaryIO, settings: Settings) -> int:
    """Queue the message on ``stdin`` as sendmail would; the sysexits status."""
    try:
        options = parse_arguments(argv)
        if not settings.connections:
            raise _Failure(EX_CONFIG, "no connection is configured", "run `relay365 init`")
        raw = read_message(stdin, options.ignore_dots)
        head = read_head(raw)
        recipients = list(options.recipients)
        if options.extract:
            recipients += head.addresses("To", "Cc", "Bcc")
        user = _local_user()
        decision = prepare(Policy(settings), raw, sender=options.sender, recipients=recipients,
                           client=Client("local", user), source="sendmail", client_label=user,
                           display_name=options.full_name, head=head)
        if isinstance(decision, Refusal):
            status = _REASON_EXIT.get(decision.reason, _REFUSAL_EXIT[decision.kind])
            raise _Failure(status, decision.message, decision.fix)
        address = os.environ.get(SMTP_ENV, "").strip()
        if address:
            _submit_smtp(address, decision.sender, list(decision.recipients), decision.raw)
        else:
            asyncio.run(_enqueue(settings, decision))
    except _Failure as exc:
        print(f"relay365 sendmail: {exc.message}\nfix: {exc.fix}", file=sys.stderr)
        return exc.status
    return EX_OK


class _NoSecrets:
    """The store's cipher for a process that only enqueues: sendmail needs no key to queue mail,
    so it runs as users (www-data) that may not read relay365's secret key."""

    def encrypt(self, plaintext: str) -> bytes:
        raise StoreError("the sendmail command does not handle secrets")

    def decrypt(self, ciphertext: bytes) -> str:
        raise StoreError("the sendmail command does not handle secrets")


async def _enqueue(settings: Settings, message: NewMessage) -> str:
    try:
        store = await Store.open(settings.store_url, _NoSecrets())
    except ConfigError as exc:
        raise _Failure(EX_CONFIG, f"the store URL is not usable: {exc.message}", exc.fix) from exc
    except StoreError as exc:
        raise _Failure(EX_TEMPFAIL, f"the outbox cannot be opened: {exc.message}",
                       _store_fix(settings)) from exc
    try:
        return await store.enqueue(message)
    except StoreError as exc:
        raise _Failure(EX_TEMPFAIL, f"the message was not queued: {exc.message}",
                       _store_fix(settings)) from exc
    finally:
        await store.close()


def _store_fix(settings: Settings) -> str:
    return (f"check that this user may write {settings.store_url} (and its directory), or set "
            f"{SMTP_ENV}=127.0.0.1:2525 to hand the message to the running relay instead")


def _submit_smtp(address: str, sender: str, recipients: list[str], raw: bytes) -> str:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise _Failure(EX_CONFIG, f"{SMTP_ENV}={address!r} is not host:port",
                       f"set {SMTP_ENV}=127.0.0.1:2525")
    try:
        with smtplib.SMTP(host.strip("[]"), int(port), timeout=60) as smtp:
            smtp.ehlo()
            options = ["BODY=8BITMIME"] if any(b > 127 for b in raw) and smtp.has_extn("8bitmime") else []
            if not (sender + "".join(recipients)).isascii() and smtp.has_extn("smtputf8"):
                options.append("SMTPUTF8")
            if smtp.has_extn("size"):
                options.append(f"SIZE={len(raw)}")
            _expect(smtp.mail(sender, options), 250)
            for rcpt in recipients:
                _expect(smtp.rcpt(rcpt), 250, 251)
            code, reply = smtp.data(raw)
            _expect((code, reply), 250)
            return reply.decode("utf-8", "replace").rsplit(" ", 1)[-1]
    except (OSError, smtplib.SMTPException) as exc:
        raise _Failure(EX_TEMPFAIL, f"cannot reach the relay at {address}: {exc}",
                       f"start relay365's SMTP relay on that address (relay.smtp), or unset {SMTP_ENV} "
                       "to queue into the store directly") from exc


def _expect(answer: tuple[int, bytes], *ok: int) -> None:
    code, text = answer
    if code in ok:
        return
    words = text.decode("utf-8", "replace")
    enhanced = words.split(" ", 1)[0]  # RFC 3463: 5.7.x policy, 5.1.x addresses
    if 400 <= code < 500:
        status = EX_TEMPFAIL
    elif enhanced.startswith("5.7.") or code in (530, 535, 538):
        status = EX_NOPERM
    elif enhanced.startswith("5.1."):
        status = EX_NOUSER
    else:
        status = EX_DATAERR
    reply = f"{code} {words}"
    raise _Failure(status, f"the relay refused the message: {reply}",
                   "the reply says why; the relay's log has the same line")


def manual() -> str:
    """The command's manual: this module's docstring (docs/reference/cli.md shows it)."""
    return __doc__ or ""


def main(argv: list[str] | None = None) -> int:
    """The console entry point: settings from RELAY365_CONFIG / the user's config, stdin, argv."""
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"relay365 sendmail: {exc.message}\nfix: {exc.fix}", file=sys.stderr)
        return EX_CONFIG
    return sendmail_main(args, sys.stdin.buffer, settings)
