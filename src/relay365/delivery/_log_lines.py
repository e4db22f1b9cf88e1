"""Delivery's log lines about messages: the queue id first, Postfix style, nothing secret.

    0197A3F2C41B5E09: to=<a@example.org>, from=<info@contoso.com>, connection=contoso,
        relay=graph, delay=0.42, attempts=1, status=sent (request_id 5d1c..., mime, 812 bytes)

Each record also carries ``queue_id`` (``relay365.log_format`` puts it in JSON lines).  Error
details come from the transports, which scrub credentials out of Microsoft's answers.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from ..store import AttemptResult, QueuedMessage

log = logging.getLogger("relay365.delivery")

# Recipients named on a line; the rest are counted.
LOGGED_RECIPIENTS = 10


def about(message: QueuedMessage) -> dict[str, str]:
    """``extra=`` for a log record about ``message``."""
    return {"queue_id": message.id}


def recipients(addresses: tuple[str, ...]) -> str:
    shown = ",".join(f"<{r}>" for r in addresses[:LOGGED_RECIPIENTS])
    more = len(addresses) - LOGGED_RECIPIENTS
    return shown + (f" and {more} more" if more > 0 else "")


def log_outcome(message: QueuedMessage, result: AttemptResult, attempts: int) -> None:
    """The line saying how an attempt ended, once the store has recorded it."""
    now = datetime.now(UTC)
    delay = (now - message.received_at).total_seconds()
    head = (f"{message.id}: to={recipients(message.recipients)}, from=<{message.sender}>, "
            f"connection={message.connection}, relay={result.transport}, delay={delay:.2f}, "
            f"attempts={attempts}")
    said = f"{result.entry_id} [{result.code}]" if result.code else str(result.entry_id)
    if result.outcome == "sent":
        log.info("%s, status=sent (request_id %s, %s)", head, result.request_id, result.detail,
                 extra=about(message))
    elif result.outcome == "deferred":
        wait = (result.next_attempt_at - now).total_seconds() if result.next_attempt_at else 0.0
        reason = f"{said}: {result.detail}" if result.entry_id else str(result.detail)
        log.info("%s, status=deferred (%s), next attempt in %.1fs", head, reason, max(wait, 0.0),
                 extra=about(message))
    else:
        log.warning("%s, status=failed (%s: %s)", head, said, result.detail, extra=about(message))
