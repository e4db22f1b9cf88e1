"""Integrations: relay365 the way each application stack expects it.

- ``relay365.integrations.django.EmailBackend``: Django's email backend
  (``EMAIL_BACKEND = "relay365.integrations.django.EmailBackend"``);
- ``relay365.integrations.logging.Relay365Handler``: a ``logging.Handler`` that mails
  records without blocking the caller, rate limited;
- ``relay365.integrations.systemd``: the hardened unit ``relay365 install-service`` writes;
- ``relay365.integrations.docs``: the generated references under ``docs/``.

Each hands messages to relay365 through a ``Submitter`` (see ``submitter_for``): the local
outbox (the store itself, like ``relay365 sendmail``), the HTTP API of a relay elsewhere, or
the local SMTP relay.  None of them talks to Microsoft: the relay's delivery workers do.
Nothing here is imported by ``relay365`` itself; Django is needed only by its backend.
"""

from ._submitters import ApiSubmitter, NotQueued, OutboxSubmitter, SmtpSubmitter, Submitter, submitter_for

__all__ = ["ApiSubmitter", "NotQueued", "OutboxSubmitter", "SmtpSubmitter", "Submitter", "submitter_for"]
