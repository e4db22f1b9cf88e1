"""Group commit: concurrent writes wait together for one transaction and one fsync.

A commit that reaches the disk costs a few milliseconds whatever it holds, so one commit
per message caps a relay at a few hundred messages a second.  Callers of ``submit`` put
their item on a list and wait; one writer task takes everything waiting, runs it as one
batch (one transaction), and answers every caller after the commit.  While a batch
commits, the next one gathers.

When the last batch held several items, others are probably on their way (ten SMTP
sessions answer their clients and send again), so the writer lingers up to ``window``
seconds for as many as the last batch held before committing; after a lone item it does
not linger, so a single sender pays no latency for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import StoreError

I = TypeVar("I")  # noqa: E741 (an item, as in typing's docs)
R = TypeVar("R")


@dataclass(frozen=True)
class GroupCommitStats:
    """How well writes were grouped: the transactions committed for how many items."""

    batches: int = 0  # transactions committed or failed
    items: int = 0  # items in them
    largest_batch: int = 0
    failed_batches: int = 0


class GroupCommit(Generic[I, R]):
    """Runs ``commit(batch)`` for items submitted together; each caller gets its own result.

    ``commit`` gets the items in submission order and returns one result per item, or
    raises: then every caller of that batch gets a StoreError (a StoreError raised by
    ``commit`` keeps its message), and no caller is left waiting.
    """

    def __init__(self, commit: Callable[[list[I]], Awaitable[list[R]]], *, max_batch: int,
                 window: float, doing: str) -> None:
        if max_batch < 1 or window < 0:
            raise ValueError(f"max_batch must be 1 or more and window 0 or more, got {max_batch}, {window}")
        self._commit = commit
        self._max_batch = max_batch
        self._window = window
        self._doing = doing  # for the StoreError of an unexpected failure
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_batch = 1
        self.stats = GroupCommitStats()

    async def submit(self, item: I) -> R:
        """Wait until ``item`` is committed with whatever else was submitted meanwhile; its result."""
        if self._stopping:
            raise StoreError(f"the store was closed before {self._doing}")
        loop = asyncio.get_running_loop()
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            # First use, or a new event loop (a sync shell running asyncio.run twice).
            self._pending = []
            self._wake = asyncio.Event()
            self._writer = loop.create_task(self._write(), name="relay365-store-group-commit")
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        assert self._wake is not None
        self._wake.set()
        # Cancelling the caller cancels only its wait: once its batch is taken, it still commits.
        return await future

    async def stop(self) -> None:
        """Commit what is waiting, then stop the writer; later submits raise StoreError."""
        self._stopping = True
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not asyncio.get_running_loop():
            return  # nothing waits (a writer of an event loop that is gone had nothing left)
        assert self._wake is not None
        self._wake.set()
        await writer

    async def _write(self) -> None:
        assert self._wake is not None
        wake = self._wake
        try:
            while True:
                while not self._pending:
                    if self._stopping:
                        return
                    wake.clear()
                    await wake.wait()
                await self._linger(wake)
                batch = self._take()
                if batch:
                    await self._run(batch)
                # Not kept while waiting for the next batch: it may hold a 100 MB message.
                del batch
        finally:
            # Cancelled with its event loop: nobody may be left waiting for an answer.
            for _, future in self._pending:
                if not future.done():
                    future.set_exception(StoreError(f"the store stopped before {self._doing}"))
            self._pending = []

    async def _linger(self, wake: asyncio.Event) -> None:
        target = min(self._last_batch, self._max_batch)
        if self._stopping or self._window == 0 or len(self._pending) >= target:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._window):
                while len(self._pending) < target:
                    wake.clear()
                    await wake.wait()

    def _take(self) -> list[tuple[I, asyncio.Future[R]]]:
        taken, self._pending = self._pending[:self._max_batch], self._pending[self._max_batch:]
        # A caller that gave up before its batch was taken is not written.
        return [(item, future) for item, future in taken if not future.done()]

    async def _run(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        stats = self.stats
        self._last_batch = len(batch)
        try:
            results = await self._commit([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"commit returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            # The transaction goes on in its thread, but its outcome will not be heard here.
            for _, future in batch:
                if not future.done():
                    future.set_exception(StoreError(
                        f"the store stopped while {self._doing}: the message may or may not be queued"))
            raise
        except Exception as exc:  # every caller hears of it; the writer goes on with the next batch
            self.stats = GroupCommitStats(stats.batches + 1, stats.items + len(batch),
                                          max(stats.largest_batch, len(batch)), stats.failed_batches + 1)
            message = exc.message if isinstance(exc, StoreError) else (
                f"the store failed while {self._doing}: {type(exc).__name__}: {exc}")
            for _, future in batch:
                if not future.done():
                    # One exception each: a shared one would collect every caller's traceback.
                    error = StoreError(message)
                    error.__cause__ = exc
                    future.set_exception(error)
            return
        self.stats = GroupCommitStats(stats.batches + 1, stats.items + len(batch),
                                      max(stats.largest_batch, len(batch)), stats.failed_batches)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
