"""Prometheus metrics: what the relay accepted, sent, deferred and failed, and how Microsoft answered.

    relay365_messages_accepted_total{source}            committed to the outbox (smtp, sendmail, http, api)
    relay365_messages_sent_total{connection}             delivered to Microsoft 365
    relay365_messages_deferred_total{connection,cause}   an attempt failed and will be retried
    relay365_messages_failed_total{connection,cause}     given up on: in the dead letter
    relay365_queue_messages{state}                       the outbox now (read from the store at each scrape)
    relay365_token_refreshes_total{connection,outcome}   tokens fetched from the identity platform
    relay365_graph_request_seconds{operation,status}     Microsoft Graph latency (histogram)

``cause`` is the failure's catalogue entry id (``M365-SEND-AS-DENIED``, ``R365-TRANSIENT``...),
so ``relay365 explain CAUSE`` says what it means and how to fix it; every label takes few values.

The parts call the functions below at their events (``message_accepted``, ``attempt_finished``,
``token_refreshed``, ``graph_timer``); ``metrics_route`` serves ``GET /metrics`` on the web
listener.  Each function is a dictionary lookup and an addition: safe on every hot path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import Relay365Error

log = logging.getLogger("relay365.metrics")

GRAPH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
QueueCounts = Callable[[], Awaitable[Mapping[Any, int]]]


class Metrics:
    """relay365's metrics in a registry of their own (tests make their own instance)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process:  # CPU, memory, open files of this process
            ProcessCollector(registry=self.registry)
        r = self.registry
        self.accepted = Counter("relay365_messages_accepted", "Messages committed to the outbox.",
                                ["source"], registry=r)
        self.sent = Counter("relay365_messages_sent", "Messages delivered to Microsoft 365.",
                            ["connection"], registry=r)
        self.deferred = Counter("relay365_messages_deferred",
                                "Delivery attempts that failed and will be retried, by catalogue entry.",
                                ["connection", "cause"], registry=r)
        self.failed = Counter("relay365_messages_failed",
                              "Messages given up on (dead letter), by catalogue entry.",
                              ["connection", "cause"], registry=r)
        self.queue = Gauge("relay365_queue_messages", "Messages in the outbox, by state.", ["state"],
                           registry=r)
        self.token_refreshes = Counter("relay365_token_refreshes",
                                       "Tokens fetched from the identity platform, by outcome.",
                                       ["connection", "outcome"], registry=r)
        self.graph_latency = Histogram("relay365_graph_request_seconds",
                                       "Microsoft Graph request latency, by operation and HTTP status.",
                                       ["operation", "status"], buckets=GRAPH_BUCKETS, registry=r)

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)


METRICS = Metrics(process=True)


def message_accepted(source: str, metrics: Metrics = METRICS) -> None:
    """A way in committed a message to the outbox (call after the commit, never before)."""
    metrics.accepted.labels(source).inc()


def attempt_finished(connection: str, outcome: str, cause: str | None = None,
                     metrics: Metrics = METRICS) -> None:
    """A delivery attempt's recorded outcome: ``sent``, ``deferred`` or ``failed`` with its entry id."""
    if outcome == "sent":
        metrics.sent.labels(connection).inc()
    elif outcome == "deferred":
        metrics.deferred.labels(connection, cause or "R365-TRANSIENT").inc()
    elif outcome == "failed":
        metrics.failed.labels(connection, cause or "R365-DELIVERY").inc()


def token_refreshed(connection: str, ok: bool, metrics: Metrics = METRICS) -> None:
    """The identity platform was asked for a token (not a cache hit): ``ok`` if it gave one."""
    metrics.token_refreshes.labels(connection, "ok" if ok else "failed").inc()


def observe_graph(operation: str, status: int | str, seconds: float, metrics: Metrics = METRICS) -> None:
    """One Graph request took ``seconds`` and answered ``status`` (``error``: no answer)."""
    metrics.graph_latency.labels(operation, str(status)).observe(seconds)


class GraphTimer:
    """What ``graph_timer`` yields: set ``status`` once the answer is in."""

    status: int | str = "error"


@contextmanager
def graph_timer(operation: str, metrics: Metrics = METRICS) -> Iterator[GraphTimer]:
    """Time one Graph request.

        with graph_timer("sendMail") as timer:
            response = await client.post(...)
            timer.status = response.status_code
    """
    timer = GraphTimer()
    started = time.perf_counter()
    try:
        yield timer
    finally:
        observe_graph(operation, timer.status, time.perf_counter() - started, metrics)


def metrics_route(queue_counts: QueueCounts | None = None, *, path: str = "/metrics",
                  metrics: Metrics = METRICS) -> Route:
    """``GET /metrics``; ``queue_counts`` (``Store.queue_counts``) refreshes the queue gauge per scrape."""

    async def endpoint(request: Request) -> Response:
        if queue_counts is not None:
            try:
                counts = await queue_counts()
            except Relay365Error as exc:  # the store is down: the rest still tells a story
                log.warning("metrics: the queue could not be counted: %s", exc)
            else:
                for state, count in counts.items():
                    metrics.queue.labels(str(state)).set(count)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return Route(path, endpoint, methods=["GET"])
