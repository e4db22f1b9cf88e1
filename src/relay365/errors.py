"""relay365's one error tree.

    Relay365Error                    every failure relay365 reports; carries a catalogue entry
    ├── ConfigError                  the configuration is invalid or incomplete
    ├── StoreError                   the store (SQLite / PostgreSQL) failed
    │   └── LeaseLost                a worker finished a message another worker had reclaimed
    │                                (defined in relay365.store, which raises it)
    ├── AuthError                    a token could not be had
    │   ├── NeedsSignIn              only an interactive sign-in can fix it (refresh revoked...)
    │   └── AuthUnavailable          the identity platform could not be reached: retry
    └── DeliveryError                a message could not be handed to Microsoft 365
        ├── TransientError           worth retrying (429, 5xx, network); carries retry_after
        └── PermanentError           retrying will not help (403 Send As, 404 mailbox...)

Code decides by class, never by message text.  Foreign errors (httpx, MSAL, smtplib)
are translated into these at the edge that calls them, with ``raise ... from exc``.
Each error carries its diagnosis (``entry``: id, title, cause, fix) from the catalogue
and the code Microsoft answered with (``code``: an AADSTS number, a Graph error code or
an SMTP reply), so every place that shows a failure shows its cause and its fix.
"""

from __future__ import annotations

from .catalogue import Entry, lookup_entry


class Relay365Error(Exception):
    """Base of every error relay365 raises."""

    default_entry = "R365-INTERNAL"

    def __init__(self, message: str, *, entry: Entry | str | None = None, code: str | None = None,
                 status: int | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.entry = lookup_entry(entry or self.default_entry)
        self.code = code
        self.status = status
        self.request_id = request_id

    @property
    def cause(self) -> str:
        return self.entry.cause

    @property
    def fix(self) -> str:
        return self.entry.fix

    def explain(self) -> str:
        """The failure in plain words: what happened, why, and how to fix it."""
        code = f" [{self.code}]" if self.code else ""
        return (f"{self.message}{code}\n{self.entry.id}: {self.entry.title}\n"
                f"Cause: {self.entry.cause}\nFix: {self.entry.fix}")

    def __str__(self) -> str:
        code = f" [{self.code}]" if self.code else ""
        return f"{self.message}{code} ({self.entry.id}: {self.entry.title})"


class ConfigError(Relay365Error):
    default_entry = "R365-CONFIG"


class StoreError(Relay365Error):
    default_entry = "R365-STORE"


class AuthError(Relay365Error):
    default_entry = "R365-AUTH"


class NeedsSignIn(AuthError):
    default_entry = "R365-NEEDS-SIGN-IN"


class AuthUnavailable(AuthError):
    default_entry = "R365-TRANSIENT"


class DeliveryError(Relay365Error):
    default_entry = "R365-DELIVERY"


class TransientError(DeliveryError):
    default_entry = "R365-TRANSIENT"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    default_entry = "R365-PERMANENT"
