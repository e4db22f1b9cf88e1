"""What the ways in need of the outbox: ``enqueue`` (commit, then a queue id) and a look at a message.

``relay365.store.Store`` is the outbox; tests may hand in fakes with the same methods.
"""

from __future__ import annotations

from typing import Protocol

from ..store import Attempt, MessageSource, NewMessage, QueuedMessage


class Outbox(Protocol):
    async def enqueue(self, message: NewMessage) -> str:
        """Commit ``message`` durably and return its queue id; StoreError when it cannot."""
        ...

    async def get_message(self, message_id: str) -> QueuedMessage | None:
        """The queued message, or None."""
        ...

    async def attempts(self, message_id: str) -> list[Attempt]:
        """The message's finished delivery attempts, first first."""
        ...


__all__ = ["Attempt", "MessageSource", "NewMessage", "Outbox", "QueuedMessage"]
