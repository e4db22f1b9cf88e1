"""``DeliveryEngine``: works off the outbox, one leased message per worker task.

    engine = DeliveryEngine(settings, store)
    await engine.start()
    engine.kick()                      # after an enqueue: claim now instead of at the next poll
    await engine.stop(grace=30)

A dispatcher claims due messages (a lease of ``delivery.lease_seconds``, renewed while a
send runs long) up to ``delivery.workers`` in flight, and each becomes a task: take a
pacing slot of its mailbox, read the body, hand it to ``Outbound`` (the delivery agent
that sends it through its connection), write the outcome. The outcome is written by one
``Store.finish_attempt`` call, in a task of its own that a cancelled worker does not stop.
Temporary failures are retried when ``decide`` says, permanent ones go to the dead letter
with their diagnosis; a connection that needs a sign-in holds its mail
(``Store.defer_connection``) without burning attempts.

Every log line about a message starts with its queue id, Postfix style (``_log``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .. import metrics
from ..auth import Resource
from ..config import ConnectionSettings, Settings
from ..errors import NeedsSignIn, Relay365Error, StoreError, TransientError
from ..outbound import Outbound, TransportFactory
from ..store import AttemptResult, LeaseLost, MessageState, QueuedMessage, Store
from ..transport import Envelope
from ._holds import NeedsSignInHook, SignInHolds
from ._log_lines import about, log_outcome
from ._pacing import Pacer
from ._retry import decide

log = logging.getLogger("relay365.delivery")

# How long a connection that needs a sign-in holds its mail before relay365 looks again.
SIGN_IN_HOLD = 300.0
# How often an idle engine looks for messages that came due (deferred, or a dead worker's).
POLL_INTERVAL = 1.0

def default_worker_id() -> str:
    """host:pid:random, unique to this engine among every node sharing the store."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class _InFlight:
    """One claimed message and the task delivering it."""

    message: QueuedMessage
    worker: str  # the id it was claimed under; the lease's owner
    conn: ConnectionSettings
    task: asyncio.Task[None] | None = None
    sending: bool = False  # the transport has it: cancelling now cannot tell whether it went
    lease_lost: bool = False
    started_at: datetime = field(default_factory=_now)


class DeliveryEngine:
    """Delivers the outbox's messages through ``Outbound``.

    ``outbound`` sends them (default: one of the engine's own, closed by ``stop``);
    ``transports`` builds a connection's transport for that default one (tests hand in
    fakes); ``pacer`` paces each mailbox (default: real time);
    ``on_needs_sign_in(connection, error)`` is called once when a connection starts
    needing a sign-in (again after it has sent since); ``sign_in_hold`` is how long its
    mail then waits before relay365 tries its token again.
    """

    def __init__(self, settings: Settings, store: Store, *, worker_id: str | None = None,
                 outbound: Outbound | None = None, transports: TransportFactory | None = None,
                 pacer: Pacer | None = None,
                 on_needs_sign_in: NeedsSignInHook | None = None, sign_in_hold: float = SIGN_IN_HOLD,
                 poll_interval: float = POLL_INTERVAL, rng: random.Random | None = None) -> None:
        if sign_in_hold <= 0 or poll_interval <= 0:
            raise ValueError(f"sign_in_hold and poll_interval must be more than zero, "
                             f"got {sign_in_hold} and {poll_interval}")
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.pacer = pacer or Pacer()
        self._store = store
        self._owns_outbound = outbound is None
        self._outbound = outbound or Outbound(settings, store, transports=transports)
        self._holds = SignInHolds(store, timedelta(seconds=sign_in_hold), on_needs_sign_in)
        self._poll = poll_interval
        self._rng = rng
        self._in_flight: set[_InFlight] = set()
        self._finishing: set[asyncio.Task[None]] = set()
        self._claims = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._dispatcher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"DeliveryEngine({self.worker_id!r}, {len(self._in_flight)} in flight)"

    # ---- running ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start claiming and delivering in the background until ``stop``."""
        if self._dispatcher is not None:
            raise RuntimeError("this DeliveryEngine is already running")
        self._stopping = False
        self._dispatcher = asyncio.create_task(self._dispatch(drain=False, deadline=0.0),
                                               name=f"relay365-delivery-{self.worker_id}")
        log.info("delivery %s started: %d workers, lease %gs", self.worker_id,
                 self.settings.delivery.workers, self.settings.delivery.lease_seconds)

    def kick(self) -> None:
        """A message was queued: claim now rather than at the next poll."""
        self._wake.set()

    def signed_in(self, connection: str) -> None:
        """Someone signed the connection in: its hold ends now, not when it times out."""
        self._holds.end(connection)
        self._holds.signed_in_again(connection)
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Stop claiming; let deliveries in flight finish for up to ``grace`` seconds.

        A message still being sent after that keeps its lease and is tried again when the
        lease ends (by this node or another): whether Microsoft took it cannot be known.
        A message not yet handed to its transport is put back, due at once.  Every outcome
        known is written before this returns; then the engine's own Outbound is closed.
        """
        self._stopping = True
        self._wake.set()
        if self._dispatcher is not None:
            dispatcher, self._dispatcher = self._dispatcher, None
            await dispatcher  # it never waits long: between claims it only waits for a wake-up
        tasks = [f.task for f in self._in_flight if f.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(grace, 0.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        if self._owns_outbound:
            await self._outbound.aclose()
        log.info("delivery %s stopped", self.worker_id)

    async def run_until_idle(self, within: float = 0.0) -> None:
        """Deliver until no message is due; for tests and one-shot runs (not with ``start``).

        ``within``: also wait for messages that come due in that many seconds from now
        (deferred ones, and those whose worker's lease ends).  Transports stay open for
        the next call; ``stop`` closes them.
        """
        if self._dispatcher is not None:
            raise RuntimeError("run_until_idle is for an engine that was not started")
        self._stopping = False
        await self._dispatch(drain=True, deadline=time.monotonic() + within)

    # ---- the dispatcher ---------------------------------------------------------------

    async def _dispatch(self, *, drain: bool, deadline: float) -> None:
        while not self._stopping:
            if drain:
                if not await self._dispatch_once(drain=True, deadline=deadline):
                    return
                continue
            try:
                await self._dispatch_once(drain=False, deadline=deadline)
            except Exception:  # the engine must outlive a bad moment: log it, look again later
                log.exception("delivery %s: the dispatcher failed; it tries again in %gs",
                              self.worker_id, self._poll)
                await self._wait(self._poll)

    async def _dispatch_once(self, *, drain: bool, deadline: float) -> bool:
        """Claim what the free workers can take, then wait for a reason to look again.

        False (draining only) when nothing is in flight and nothing comes due before ``deadline``.
        """
        self._wake.clear()  # before claiming: a kick during the claim is not lost
        free = self.settings.delivery.workers - len(self._in_flight)
        claimed = await self._claim(free, drain=drain) if free > 0 else 0
        if drain and not self._in_flight:
            delay = await self._next_due_in(deadline - time.monotonic())
            if delay is None:
                return False
            await self._wait(delay)
        elif claimed and claimed == free:
            await self._wait(None)  # more may be due: claim again as soon as a worker is free
        else:
            await self._wait(self._poll)
        return True

    async def _wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _claim(self, limit: int, *, drain: bool) -> int:
        connections = await self._claimable()
        if not connections:
            return 0
        self._claims += 1
        worker = f"{self.worker_id}:{self._claims}"  # one per claim: a re-claim of our own is another owner
        try:
            messages = await self._store.claim_due(worker, limit=limit,
                                                   lease_seconds=self.settings.delivery.lease_seconds,
                                                   connections=connections)
        except StoreError as exc:
            if drain:
                raise
            log.error("cannot claim due messages: %s", exc)
            return 0
        for message in messages:
            flight = _InFlight(message, worker, self.settings.connection(message.connection))
            flight.task = asyncio.create_task(self._deliver(flight), name=f"relay365-delivery-{message.id}")
            self._in_flight.add(flight)
            flight.task.add_done_callback(functools.partial(self._done, flight))
        return len(messages)

    def _done(self, flight: _InFlight, _: asyncio.Task[None]) -> None:
        self._in_flight.discard(flight)
        self._wake.set()

    async def _claimable(self) -> set[str]:
        """The configured connections whose mail may be claimed: not held for a sign-in."""
        now = _now()
        names = set()
        for conn in self.settings.connections:
            until = self._holds.until(conn.name)
            if until is not None:
                if until > now or not await self._token_back(conn):
                    continue
                self._holds.end(conn.name)
            names.add(conn.name)
        return names

    async def _token_back(self, conn: ConnectionSettings) -> bool:
        """At the end of a hold: whether the connection has a token again (without claiming mail)."""
        tokens = self._outbound.tokens_in_use(conn.name)
        if tokens is None:  # not sent with yet, or a transport from a factory: its first message will tell
            return True
        resource: Resource = "smtp" if conn.transport == "smtp-xoauth2" else "graph"
        try:
            # A fresh token: the cached one may be refused by now (revoked sessions, CAE).
            await tokens.acquire_token(resource, force_refresh=True)
        except NeedsSignIn as exc:
            await self._holds.hold(conn, exc)
            return False
        except Relay365Error:
            return True  # another failure: its messages will be tried and tell what it is
        self._holds.signed_in_again(conn.name)
        return True

    async def _next_due_in(self, seconds: float) -> float | None:
        """Seconds until the next message of ours comes due, if that is within ``seconds``."""
        if seconds <= 0:
            return None
        names = {c.name for c in self.settings.connections}
        waiting = await self._store.list_messages(
            states={MessageState.QUEUED, MessageState.DEFERRED, MessageState.SENDING}, limit=100_000)
        times = []
        for m in waiting:
            if m.connection not in names:
                continue
            if m.state is MessageState.QUEUED:
                times.append(self._holds.until(m.connection) or _now())
            elif m.state is MessageState.DEFERRED and m.next_attempt_at is not None:
                times.append(m.next_attempt_at)
            elif m.state is MessageState.SENDING and m.lease_until is not None:
                times.append(m.lease_until)
        if not times:
            return None
        delay = max((min(times) - _now()).total_seconds(), 0.0)
        return delay if delay <= seconds else None

    # ---- one message ------------------------------------------------------------------

    async def _deliver(self, flight: _InFlight) -> None:
        renewer = asyncio.create_task(self._keep_lease(flight))
        try:
            result = await self._attempt(flight)
        except asyncio.CancelledError:
            if flight.lease_lost:
                return  # another worker owns it now; nothing of ours to write
            if flight.sending:
                log.info("%s: still being sent when delivery stopped; it is tried again after its "
                         "lease ends", flight.message.id, extra=about(flight.message))
            else:
                self._finish(flight, AttemptResult(
                    "deferred", flight.conn.transport, next_attempt_at=_now(),
                    detail="delivery stopped before the message was handed to Microsoft 365"))
            raise
        finally:
            renewer.cancel()
        await asyncio.shield(self._finish(flight, result))

    async def _keep_lease(self, flight: _InFlight) -> None:
        """Renew the lease every third of it while the attempt runs; abandon it if lost."""
        lease = self.settings.delivery.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                held = await self._store.renew_lease(flight.message.id, flight.worker, lease)
            except StoreError as exc:
                log.warning("%s: cannot renew the lease: %s", flight.message.id, exc,
                            extra=about(flight.message))
                continue
            if not held:
                flight.lease_lost = True
                log.warning("%s: lease lost (it expired and another worker took the message, or it "
                            "was deleted): this attempt is abandoned", flight.message.id,
                            extra=about(flight.message))
                if flight.task is not None:
                    flight.task.cancel()
                return

    async def _attempt(self, flight: _InFlight) -> AttemptResult:
        """Pace, read, send; the attempt's result (every failure becomes one)."""
        message, conn = flight.message, flight.conn
        try:
            async with self.pacer.slot(conn, message.sender, len(message.recipients)):
                raw = await self._store.message_body(message.id)
                flight.sending = True
                outcome = await self._outbound.send(Envelope(message.sender, message.recipients, raw),
                                                    connection=conn.name)
        except Relay365Error as exc:
            return await self._failed(flight, exc)
        except Exception as exc:  # a transport let a foreign error out: retry it, and say so loudly
            log.exception("%s: unexpected error while sending", message.id, extra=about(message))
            return await self._failed(flight, Relay365Error(
                f"unexpected {type(exc).__name__} while sending: {str(exc)[:200]}"))
        self._holds.signed_in_again(conn.name)
        return AttemptResult("sent", outcome.transport, request_id=outcome.request_id,
                             detail=f"{outcome.path}, {outcome.size} bytes")

    async def _failed(self, flight: _InFlight, error: Relay365Error) -> AttemptResult:
        message, conn = flight.message, flight.conn
        request_id = error.request_id
        if isinstance(error, NeedsSignIn):
            until = await self._holds.hold(conn, error)
            return AttemptResult("deferred", conn.transport, code=error.code, entry_id=error.entry.id,
                                 detail=error.message, next_attempt_at=until)
        if isinstance(error, TransientError) and error.retry_after is not None:
            # Microsoft said when to come back: the whole mailbox waits, not just this message.
            self.pacer.cool_down(conn, message.sender, error.retry_after)
        now = _now()
        when = decide(error, message.attempts, message.received_at, now, self.settings.delivery, self._rng)
        if when is not None:
            return AttemptResult("deferred", conn.transport, code=error.code, entry_id=error.entry.id,
                                 request_id=request_id, detail=error.message, next_attempt_at=when)
        detail = error.message
        age = (now - message.received_at).total_seconds()
        if age >= self.settings.delivery.maximal_queue_lifetime:
            detail = (f"{detail} (queued for {age:.0f}s, past maximal_queue_lifetime "
                      f"{self.settings.delivery.maximal_queue_lifetime:g}s: given up)")
        return AttemptResult("failed", conn.transport, code=error.code, entry_id=error.entry.id,
                             request_id=request_id, detail=detail)

    def _finish(self, flight: _InFlight, result: AttemptResult) -> asyncio.Task[None]:
        """Write the attempt's outcome in a task of its own: cancelling the worker does not stop it."""
        task = asyncio.create_task(self._record(flight, result),
                                   name=f"relay365-finish-{flight.message.id}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return task

    async def _record(self, flight: _InFlight, result: AttemptResult) -> None:
        message = flight.message
        try:
            finished = await self._store.finish_attempt(message.id, flight.worker, result, flight.started_at)
        except LeaseLost as exc:
            log.warning("%s: %s", message.id, exc.message, extra=about(message))
            return
        except StoreError as exc:
            log.error("%s: the outcome (%s) could not be recorded: %s; the message is tried again "
                      "after its lease ends", message.id, result.outcome, exc, extra=about(message))
            return
        log_outcome(message, result, finished.attempts)
        metrics.attempt_finished(message.connection, result.outcome, result.entry_id)
