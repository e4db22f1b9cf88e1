"""The retry policy, ``relay365.delivery.decide``: a pure function, tested with fixed times and rng."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from relay365.config import DeliverySettings
from relay365.delivery import backoff, decide, is_permanent
from relay365.errors import (
    AuthError,
    AuthUnavailable,
    ConfigError,
    DeliveryError,
    NeedsSignIn,
    PermanentError,
    Relay365Error,
    StoreError,
    TransientError,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = DeliverySettings(minimal_backoff=30, maximal_backoff=4000, maximal_queue_lifetime=5 * 86400)


def seconds_after(now: datetime, when: datetime | None) -> float:
    assert when is not None
    return (when - now).total_seconds()


def draw(seed: int) -> float:
    """The jitter factor decide draws from ``random.Random(seed)``."""
    return random.Random(seed).uniform(0.8, 1.2)


@pytest.mark.parametrize(("attempts", "expected"), [
    (0, 30), (1, 30), (2, 60), (3, 120), (4, 240), (7, 1920), (8, 3840), (9, 4000), (50, 4000),
    (10**6, 4000)])
def test_backoff_doubles_from_minimal_to_maximal(attempts: int, expected: float) -> None:
    assert backoff(attempts, SETTINGS) == expected


@pytest.mark.parametrize("attempts", [1, 2, 3, 5])
def test_transient_error_is_retried_after_the_jittered_backoff(attempts: int) -> None:
    now = T0 + timedelta(minutes=10)
    when = decide(TransientError("503"), attempts, T0, now, SETTINGS, random.Random(7))
    assert seconds_after(now, when) == pytest.approx(backoff(attempts, SETTINGS) * draw(7))


def test_jitter_is_twenty_percent_either_way() -> None:
    rng = random.Random(1)
    delays = [seconds_after(T0, decide(TransientError("503"), 2, T0, T0, SETTINGS, rng))
              for _ in range(2000)]
    assert min(delays) >= 60 * 0.8 and max(delays) <= 60 * 1.2
    assert min(delays) < 60 * 0.82 and max(delays) > 60 * 1.18  # the whole range is used
    assert sum(delays) / len(delays) == pytest.approx(60, rel=0.02)


def test_jitter_never_goes_past_maximal_backoff() -> None:
    rng = random.Random(3)
    delays = [seconds_after(T0, decide(TransientError("503"), 30, T0, T0, SETTINGS, rng)) for _ in range(500)]
    assert max(delays) == 4000 and min(delays) >= 4000 * 0.8


def test_retry_after_is_a_floor() -> None:
    small = decide(TransientError("429", retry_after=1), 1, T0, T0, SETTINGS, random.Random(5))
    assert seconds_after(T0, small) == pytest.approx(30 * draw(5))  # the backoff is longer
    large = decide(TransientError("429", retry_after=120), 1, T0, T0, SETTINGS, random.Random(5))
    assert seconds_after(T0, large) == 120
    # Microsoft's word wins over our own cap.
    beyond = decide(TransientError("429", retry_after=9000), 20, T0, T0, SETTINGS, random.Random(5))
    assert seconds_after(T0, beyond) == 9000


@pytest.mark.parametrize("error", [
    PermanentError("403", entry="M365-SEND-AS-DENIED", code="ErrorSendAsDenied"),
    DeliveryError("refused"),
    AuthError("AADSTS7000222", entry="AAD-SECRET-EXPIRED"),
])
def test_permanent_failures_go_to_the_dead_letter_at_once(error: Relay365Error) -> None:
    assert is_permanent(error)
    assert decide(error, 1, T0, T0, SETTINGS, random.Random(0)) is None


@pytest.mark.parametrize("error", [
    TransientError("503"),
    NeedsSignIn("revoked", entry="AAD-REFRESH-REVOKED"),
    AuthUnavailable("login.microsoftonline.com unreachable"),
    StoreError("disk full"),
    ConfigError("ca_file missing"),
    Relay365Error("unexpected KeyError"),
])
def test_temporary_failures_and_our_own_faults_are_retried(error: Relay365Error) -> None:
    assert not is_permanent(error)
    assert decide(error, 1, T0, T0, SETTINGS, random.Random(0)) is not None


def test_a_message_past_its_queue_lifetime_is_given_up() -> None:
    lifetime = timedelta(seconds=SETTINGS.maximal_queue_lifetime)
    just_before = T0 + lifetime - timedelta(seconds=1)
    assert decide(TransientError("503"), 40, T0, just_before, SETTINGS, random.Random(0)) is not None
    assert decide(TransientError("503"), 40, T0, T0 + lifetime, SETTINGS, random.Random(0)) is None
    assert decide(TransientError("503", retry_after=1), 40, T0, T0 + 2 * lifetime, SETTINGS) is None


def test_small_test_settings_and_the_default_rng() -> None:
    quick = DeliverySettings(minimal_backoff=0.05, maximal_backoff=0.5)
    delays = [seconds_after(T0, decide(TransientError("503"), n, T0, T0, quick)) for n in range(1, 8)]
    assert 0.04 <= delays[0] <= 0.06
    assert all(d <= 0.5 for d in delays) and delays[-1] >= 0.4


def test_decide_is_pure() -> None:
    args = (TransientError("503"), 3, T0, T0 + timedelta(hours=1), SETTINGS)
    assert decide(*args, random.Random(11)) == decide(*args, random.Random(11))
