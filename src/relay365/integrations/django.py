# Django ships no type information: its base class is Any to mypy (see the report's override).
# mypy: disallow-subclassing-any=False
"""Django's email backend for relay365: every ``send_mail`` goes out through Microsoft 365.

    # settings.py
    EMAIL_BACKEND = "relay365.integrations.django.EmailBackend"
    DEFAULT_FROM_EMAIL = "info@contoso.com"          # a sender one of relay365's connections owns
    SERVER_EMAIL = "info@contoso.com"                # mail_admins / mail_managers
    RELAY365_CONFIG = "/etc/relay365/relay365.toml"  # optional: else RELAY365_CONFIG, else the user's
    # or, for a relay on another host (its HTTP API):
    RELAY365_API_URL = "http://relay.internal:8025"
    RELAY365_API_KEY = os.environ["RELAY365_API_KEY"]   # `relay365 api-key add`

Messages are queued, not sent inline: ``send_messages`` returns once relay365 has committed
each message to its outbox (the local store, or the remote relay's through its HTTP API) and
the relay's workers deliver them, with retries, Microsoft's limits and a diagnosis for any
failure (``relay365 log``).  Everything Django puts in a message is kept byte for byte:
alternatives, attachments, inline images (``multipart/related``), Reply-To and custom
headers; Bcc recipients travel in the envelope only, as with Django's SMTP backend.

Like the SMTP backend, one backend instance keeps its connection (the open store, or the
HTTP client) between ``open()`` and ``close()``, so ``get_connection()`` used as a context
manager sends many messages over one.  A message relay365 refuses raises
``relay365.integrations.NotQueued`` (a ``Relay365Error`` with the cause and the fix), or is
skipped and not counted when ``fail_silently`` is true.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from email.utils import getaddresses
from typing import Any

from django.conf import settings as django_settings
from django.core.mail.backends.base import BaseEmailBackend

from ..errors import Relay365Error
from ._submitters import Submitter, submitter_for

__all__ = ["EmailBackend"]


def _setting(name: str) -> Any:
    """A Django setting, else the environment variable of the same name, else None."""
    value = getattr(django_settings, name, None)
    return value if value not in (None, "") else (os.environ.get(name) or None)


def envelope(message: Any) -> tuple[str | None, list[str]]:
    """The envelope sender and recipients (To, Cc and Bcc) of a Django EmailMessage."""
    senders = [a for _, a in getaddresses([str(message.from_email or "")]) if a]
    recipients = [a for _, a in getaddresses([str(r) for r in message.recipients()]) if a]
    return (senders[0] if senders else None), recipients


class EmailBackend(BaseEmailBackend):
    """Queue Django's messages in relay365's outbox (local store or a relay's HTTP API)."""

    def __init__(self, fail_silently: bool = False, *, config: str | None = None,
                 api_url: str | None = None, api_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.config = config or _setting("RELAY365_CONFIG")
        self.api_url = api_url or _setting("RELAY365_API_URL")
        self.api_key = api_key or _setting("RELAY365_API_KEY")
        self.submitter: Submitter | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        where = self.api_url or f"outbox of {self.config or 'the default relay365.toml'}"
        return f"<relay365 EmailBackend to {where}>"

    def open(self) -> bool | None:
        """Open the store (or the HTTP client); True if this call opened it, False if it was
        open already, None when it failed and ``fail_silently`` is set."""
        with self._lock:
            if self.submitter is not None:
                return False
            try:
                self.submitter = submitter_for(self.api_url, api_key=self.api_key, config=self.config,
                                               client_label="django")
            except Relay365Error:
                if not self.fail_silently:
                    raise
                return None
            return True

    def close(self) -> None:
        with self._lock:
            submitter, self.submitter = self.submitter, None
            if submitter is None:
                return
            try:
                submitter.close()
            except Relay365Error:
                if not self.fail_silently:
                    raise

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        """Queue each message; the number relay365 accepted."""
        if not email_messages:
            return 0
        with self._lock:
            opened = self.open()
            if self.submitter is None or opened is None:
                return 0  # opening failed silently
            sent = 0
            try:
                for message in email_messages:
                    if self._queue(self.submitter, message):
                        sent += 1
            finally:
                if opened:
                    self.close()
        return sent

    def _queue(self, submitter: Submitter, message: Any) -> bool:
        sender, recipients = envelope(message)
        if not recipients:
            return False
        try:
            submitter.submit(message.message().as_bytes(), sender=sender, recipients=recipients)
        except Relay365Error:
            if not self.fail_silently:
                raise
            return False
        return True
