"""When to try a message again, or never: one pure function, as a queue's retry policy should be.

Postfix's names for the timing: ``minimal_backoff`` is the first delay, doubled after
each failed attempt up to ``maximal_backoff``; a message older than
``maximal_queue_lifetime`` goes to the dead letter at its next failure.  Microsoft's
``Retry-After`` is a floor: retrying earlier only lengthens the throttling (reference §6.2).

Jitter is ±20 % of the delay, drawn uniformly, then capped at ``maximal_backoff``: the
first retry stays close to the ``minimal_backoff`` an administrator configured (full
jitter would retry some messages at once), and a storm of messages that failed together
(a 503 burst) spreads over 40 % of the delay instead of coming back in one wave.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from ..config import DeliverySettings
from ..errors import (
    AuthError,
    AuthUnavailable,
    DeliveryError,
    NeedsSignIn,
    Relay365Error,
    TransientError,
)

JITTER = 0.2
# 2**64 times any sane minimal backoff is past any maximal one; the cap keeps the float finite.
_MAX_DOUBLINGS = 64


def is_permanent(error: Relay365Error) -> bool:
    """Whether retrying cannot help: decided by the error's class, never by its text.

    Permanent: ``PermanentError`` (and a bare ``DeliveryError``, which no transport raises
    for a condition it knows to be temporary), and ``AuthError`` other than ``NeedsSignIn``
    (it waits for a sign-in, see the engine) and ``AuthUnavailable`` (the identity
    platform could not be reached).  Everything else (``TransientError``, ``StoreError``,
    ``ConfigError``, an unexplained ``Relay365Error``) is retried: as in Postfix, a fault
    on relay365's own side defers the mail until it is fixed, up to the queue lifetime.
    """
    if isinstance(error, TransientError | NeedsSignIn | AuthUnavailable):
        return False
    return isinstance(error, DeliveryError | AuthError)


def backoff(attempts: int, settings: DeliverySettings) -> float:
    """The delay before the next try after ``attempts`` attempts, without jitter (seconds)."""
    doublings = min(max(attempts, 1) - 1, _MAX_DOUBLINGS)
    return float(min(settings.maximal_backoff, settings.minimal_backoff * 2.0 ** doublings))


def decide(error: Relay365Error, attempts: int, first_seen: datetime, now: datetime,
           settings: DeliverySettings, rng: random.Random | None = None) -> datetime | None:
    """When to try again after ``error`` ended attempt number ``attempts``; None: dead letter.

    ``first_seen`` is when the message was queued.  The delay is ``backoff`` ±20 % (capped
    at ``maximal_backoff``), never shorter than the error's ``retry_after``.  ``rng``
    makes the jitter reproducible in tests.
    """
    if is_permanent(error):
        return None
    if (now - first_seen).total_seconds() >= settings.maximal_queue_lifetime:
        return None
    draw = (rng or random).uniform(1.0 - JITTER, 1.0 + JITTER)
    delay = min(backoff(attempts, settings) * draw, settings.maximal_backoff)
    if isinstance(error, TransientError) and error.retry_after is not None:
        delay = max(delay, error.retry_after)  # Microsoft's word beats our cap
    return now + timedelta(seconds=delay)
