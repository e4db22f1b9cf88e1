"""Delivery: works off the outbox through each connection's transport.

    engine = DeliveryEngine(settings, store, on_needs_sign_in=alert)
    await engine.start()          # workers claim due messages under a lease
    engine.kick()                 # a way in queued a message: look now
    await engine.stop(grace=30)   # in-flight sends finish; nothing is lost

``decide`` is the retry policy (a pure function of the error, the attempts and the
times); ``Pacer`` keeps each mailbox inside Exchange Online's limits.
"""

from ..outbound import TransportFactory
from ._engine import POLL_INTERVAL, SIGN_IN_HOLD, DeliveryEngine
from ._holds import NeedsSignInHook
from ._pacing import Pacer, sending_mailbox
from ._retry import backoff, decide, is_permanent

__all__ = [
    "POLL_INTERVAL",
    "SIGN_IN_HOLD",
    "DeliveryEngine",
    "NeedsSignInHook",
    "Pacer",
    "TransportFactory",
    "backoff",
    "decide",
    "is_permanent",
    "sending_mailbox",
]
