"""Submitters: how an integration hands a finished message to relay365.

    submitter = submitter_for(None, client_label="django")          # the local outbox (the store)
    submitter = submitter_for("http://relay:8025", api_key="r365_...")  # a relay's HTTP API
    submitter = submitter_for("smtp://127.0.0.1:2525")                # the local SMTP relay
    queue_id = submitter.submit(raw, sender="info@contoso.com", recipients=["a@example.org"])
    submitter.close()

Each is synchronous (Django and ``logging`` are) and answers only once the relay has
committed the message to its outbox; otherwise it raises ``NotQueued`` (refused, with the
policy's fix, or unreachable) or ``StoreError``.  The outbox submitter runs the same policy as
every way in (``relay365 sendmail``'s checks: senders a connection owns, size, recipients) and
keeps the store open, with its own event loop thread, until ``close``.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx

from ..config import Settings, load_settings
from ..errors import Relay365Error, StoreError
from ..policy import (
    Client,
    Policy,
    Refusal,
    prepare,  # the one place local submissions become NewMessages
)
from ..store import Store

T = TypeVar("T")
API_PATH = "/api/v1/messages"


class NotQueued(Relay365Error):
    """The relay did not queue the message: it refused it (``temporary`` False) or could not
    be reached or could not commit it (``temporary`` True: trying later may work)."""

    def __init__(self, message: str, *, fix: str, temporary: bool, code: str | None = None) -> None:
        super().__init__(f"{message} (fix: {fix})", code=code,
                         entry="R365-TRANSIENT" if temporary else "R365-CONFIG")
        self.hint = fix
        self.temporary = temporary


class Submitter(Protocol):
    """Where an integration's messages go; ``submit`` returns the queue id."""

    def submit(self, raw: bytes, *, sender: str | None, recipients: Sequence[str]) -> str: ...

    def close(self) -> None: ...


def crlf(raw: bytes) -> bytes:
    """``raw`` with every line ending in CRLF, as the outbox keeps messages."""
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


class _LoopThread:
    """An event loop on a thread of its own: the async store behind a synchronous caller,
    whether or not that caller's thread runs a loop itself (Django under ASGI)."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        self.run(self._loop.shutdown_asyncgens())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class _NoSecrets:
    """The store's cipher for a process that only enqueues: no key is needed to queue mail, so
    an application may run as a user that cannot read relay365's secret key."""

    def encrypt(self, plaintext: str) -> bytes:
        raise StoreError("an application that only queues mail does not handle secrets")

    def decrypt(self, ciphertext: bytes) -> str:
        raise StoreError("an application that only queues mail does not handle secrets")


class OutboxSubmitter:
    """Messages straight into the outbox (the store the relay works from), after the policy."""

    def __init__(self, settings: Settings, *, client_label: str = "python") -> None:
        self._policy = Policy(settings)
        self._client = Client("local", client_label)
        self._label = f"{client_label} (pid {os.getpid()})"
        self._loop = _LoopThread("relay365-outbox")
        try:
            self._store = self._loop.run(Store.open(settings.store_url, _NoSecrets()))
        except BaseException:
            self._loop.close()
            raise
        self._where = settings.store_url.split("@")[-1]

    def __repr__(self) -> str:
        return f"OutboxSubmitter({self._where})"

    def submit(self, raw: bytes, *, sender: str | None, recipients: Sequence[str]) -> str:
        decision = prepare(self._policy, crlf(raw), sender=sender, recipients=list(recipients),
                                      client=self._client, source="api", client_label=self._label)
        if isinstance(decision, Refusal):
            raise NotQueued(decision.message, fix=decision.fix, temporary=decision.temporary,
                            code=decision.reply.split(" ", 2)[1] if " " in decision.reply else None)
        return self._loop.run(self._store.enqueue(decision))

    def close(self) -> None:
        try:
            self._loop.run(self._store.close())
        finally:
            self._loop.close()


class ApiSubmitter:
    """Messages to a relay's HTTP API as ``message/rfc822`` (a relay on another host)."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 30.0,
                 verify: bool | str = True) -> None:
        base = url.rstrip("/")
        self._url = base if base.endswith(API_PATH) else base + API_PATH
        headers = {"Content-Type": "message/rfc822"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(headers=headers, timeout=timeout, verify=verify)

    def __repr__(self) -> str:  # never the key
        return f"ApiSubmitter({self._url})"

    def submit(self, raw: bytes, *, sender: str | None, recipients: Sequence[str]) -> str:
        params = httpx.QueryParams([("to", r) for r in recipients])
        if sender:
            params = params.add("from", sender)
        try:
            response = self._http.post(self._url, params=params, content=crlf(raw))
        except httpx.HTTPError as exc:
            raise NotQueued(f"cannot reach relay365's HTTP API at {self._url}: {exc}",
                            fix="check that `relay365 serve` runs there and RELAY365_API_URL names it",
                            temporary=True) from exc
        if response.status_code == 202:
            return str(response.json()["id"])
        try:
            problem = response.json()["error"]
            message, fix, code = str(problem["message"]), str(problem["fix"]), str(problem["code"])
        except (ValueError, KeyError, TypeError):
            message, fix, code = response.text[:200], "see the relay's log", str(response.status_code)
        raise NotQueued(f"the HTTP API answered {response.status_code}: {message}", fix=fix, code=code,
                        temporary=response.status_code in (429, 502, 503, 504))

    def close(self) -> None:
        self._http.close()


class SmtpSubmitter:
    """Messages to relay365's SMTP relay (one SMTP session per message)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 2525, *, username: str | None = None,
                 password: str | None = None, starttls: bool = False, timeout: float = 30.0) -> None:
        self._host, self._port = host, port
        self._login = (username, password) if username and password is not None else None
        self._starttls = starttls
        self._timeout = timeout

    def __repr__(self) -> str:  # never the password
        return f"SmtpSubmitter({self._host}:{self._port})"

    def submit(self, raw: bytes, *, sender: str | None, recipients: Sequence[str]) -> str:
        if not sender:
            raise NotQueued("SMTP needs an envelope sender", fix="give the message a From",
                            temporary=False)
        data = crlf(raw)
        try:
            with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
                smtp.ehlo()
                if self._starttls:
                    smtp.starttls()
                    smtp.ehlo()
                if self._login is not None:
                    smtp.login(*self._login)
                eight_bit = any(b > 127 for b in data) and smtp.has_extn("8bitmime")
                options = ["BODY=8BITMIME"] if eight_bit else []
                _expect(smtp.mail(sender, options), 250)
                for rcpt in recipients:
                    _expect(smtp.rcpt(rcpt), 250, 251)
                code, reply = smtp.data(data)
                _expect((code, reply), 250)
        except NotQueued:
            raise
        except (OSError, smtplib.SMTPException) as exc:
            raise NotQueued(f"cannot reach relay365's SMTP relay at {self._host}:{self._port}: {exc}",
                            fix="start `relay365 serve` (relay.smtp says where it listens)",
                            temporary=True) from exc
        return reply.decode("utf-8", "replace").rsplit(" ", 1)[-1]  # "2.0.0 Ok: queued as <id>"

    def close(self) -> None:
        return None


def _expect(answer: tuple[int, bytes], *ok: int) -> None:
    code, text = answer
    if code not in ok:
        words = text.decode("utf-8", "replace")
        raise NotQueued(f"the relay refused the message: {code} {words}", code=str(code),
                        fix="the reply says why; the relay's log has the same line",
                        temporary=400 <= code < 500)


def submitter_for(url: str | None = None, *, api_key: str | None = None,
                  config: str | Path | Settings | None = None, client_label: str = "python") -> Submitter:
    """The submitter ``url`` names: None for the local outbox (settings from ``config``, else
    RELAY365_CONFIG, else the user's), ``http(s)://host:port`` for the HTTP API,
    ``smtp://[user:password@]host:port`` for the SMTP relay (``smtp+starttls://`` for STARTTLS)."""
    if url is None:
        settings = config if isinstance(config, Settings) else load_settings(config)
        return OutboxSubmitter(settings, client_label=client_label)
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return ApiSubmitter(url, api_key=api_key)
    if parts.scheme in ("smtp", "smtp+starttls"):
        return SmtpSubmitter(parts.hostname or "127.0.0.1", parts.port or 2525, username=parts.username,
                             password=parts.password, starttls=parts.scheme == "smtp+starttls")
    raise NotQueued(f"{url!r} is not a relay365 address", temporary=False,
                    fix="use http://HOST:8025 (HTTP API), smtp://HOST:2525 (SMTP relay), or none "
                        "(the local outbox)")
