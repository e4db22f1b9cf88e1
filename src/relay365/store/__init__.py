"""The store: relay365's one durable store (SQLite by default, PostgreSQL for several nodes).

It owns the schema and its migrations, the outbox (queued messages, their bodies, attempts
and state changes), the encrypted MSAL token caches, each connection's sign-in state and
small settings. Every message, whichever way it came and whether it was queued or sent at
once (``enqueue_claimed``), is in the outbox and its log. Only this package runs SQL;
every database failure leaves it as ``relay365.errors.StoreError``.

    store = await Store.open("sqlite:////var/lib/relay365/relay365.db", box)
    queue_id = await store.enqueue(NewMessage("contoso", sender, recipients, raw, "smtp", peer))
    for message in await store.claim_due("node1:4242:0", limit=8, lease_seconds=300):
        raw = await store.message_body(message.id)
        ...
        await store.finish_attempt(message.id, "node1:4242:0", AttemptResult("sent", "graph"), started)
    await store.close()

PostgreSQL: ``postgresql://USER@HOST/DB`` (driver psycopg 3).  To use a schema other
than ``public``: ``postgresql://USER@HOST/DB?options=-csearch_path%3Dmyschema``.
"""

from ._errors import LeaseLost
from ._groupcommit import GroupCommitStats
from ._inputs import AttemptResult, NewMessage, new_queue_id
from ._rows import (
    ATTEMPT_OUTCOMES,
    MESSAGE_SOURCES,
    Attempt,
    AttemptOutcome,
    ConnectionState,
    Event,
    MessageSource,
    MessageState,
    OutcomeCount,
    QueuedMessage,
)
from ._store import Cipher, Store

__all__ = [
    "ATTEMPT_OUTCOMES",
    "MESSAGE_SOURCES",
    "Attempt",
    "AttemptOutcome",
    "AttemptResult",
    "Cipher",
    "ConnectionState",
    "Event",
    "GroupCommitStats",
    "LeaseLost",
    "MessageSource",
    "MessageState",
    "NewMessage",
    "OutcomeCount",
    "QueuedMessage",
    "Store",
    "new_queue_id",
]
