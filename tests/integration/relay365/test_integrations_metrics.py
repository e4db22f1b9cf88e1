"""`/metrics`: Prometheus's text format, read back with prometheus_client's own parser, with
counters that move as messages go through a real store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from relay365 import metrics
from relay365.errors import StoreError
from relay365.metrics import Metrics, metrics_route
from relay365.store import AttemptResult, NewMessage, Store


class _Plain:
    def encrypt(self, plaintext: str) -> bytes:
        return plaintext.encode()

    def decrypt(self, ciphertext: bytes) -> str:
        return ciphertext.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def raw(subject: str) -> bytes:
    return f"From: info@contoso.com\r\nTo: a@example.org\r\nSubject: {subject}\r\n\r\nhi\r\n".encode()


def test_metrics_parse_and_move_as_messages_flow(tmp_path: Path) -> None:
    registry = Metrics()

    async def flow() -> list[str]:
        store = await Store.open(f"sqlite:///{tmp_path / 'relay365.db'}", _Plain())
        app = Starlette(routes=[metrics_route(store.queue_counts, metrics=registry)])
        transport = httpx.ASGITransport(app=app)
        scrapes: list[str] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
            async def scrape() -> None:
                response = await client.get("/metrics")
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain; version=")
                scrapes.append(response.text)

            try:
                await scrape()
                for subject in ("one", "two", "three"):
                    await store.enqueue(NewMessage("demo", "info@contoso.com", ("a@example.org",),
                                                   raw(subject), "smtp", "127.0.0.1"))
                    metrics.message_accepted("smtp", registry)
                await scrape()
                claimed = await store.claim_due("w1", limit=3, lease_seconds=60)
                await scrape()
                started = datetime.now(UTC)
                results = [AttemptResult("sent", "graph"),
                           AttemptResult("deferred", "graph", code="429", entry_id="M365-THROTTLED",
                                         next_attempt_at=started + timedelta(minutes=5)),
                           AttemptResult("failed", "graph", code="ErrorSendAsDenied",
                                         entry_id="M365-SEND-AS-DENIED")]
                for message, result in zip(claimed, results, strict=True):
                    await store.finish_attempt(message.id, "w1", result, started)
                    metrics.attempt_finished("demo", result.outcome, result.entry_id, registry)
                metrics.token_refreshed("demo", True, registry)
                metrics.token_refreshed("demo", False, registry)
                with metrics.graph_timer("sendMail", registry) as timer:
                    timer.status = 202
                metrics.observe_graph("sendMail", 429, 0.3, registry)
                with metrics.graph_timer("createUploadSession", registry):
                    pass  # no answer: counted as an error
                await scrape()
            finally:
                await store.close()
        return scrapes

    before, queued, claimed, after = asyncio.run(flow())
    assert value(before, "relay365_messages_accepted_total", source="smtp") == 0
    assert value(before, "relay365_queue_messages", state="queued") == 0
    assert value(queued, "relay365_messages_accepted_total", source="smtp") == 3
    assert value(queued, "relay365_queue_messages", state="queued") == 3
    assert value(claimed, "relay365_queue_messages", state="sending") == 3
    assert value(after, "relay365_queue_messages", state="sending") == 0
    for state in ("sent", "deferred", "failed"):
        assert value(after, "relay365_queue_messages", state=state) == 1
    assert value(after, "relay365_messages_sent_total", connection="demo") == 1
    assert value(after, "relay365_messages_deferred_total", connection="demo", cause="M365-THROTTLED") == 1
    assert value(after, "relay365_messages_failed_total", connection="demo", cause="M365-SEND-AS-DENIED") == 1
    assert value(after, "relay365_token_refreshes_total", connection="demo", outcome="ok") == 1
    assert value(after, "relay365_token_refreshes_total", connection="demo", outcome="failed") == 1
    assert value(after, "relay365_graph_request_seconds_count", operation="sendMail", status="202") == 1
    assert value(after, "relay365_graph_request_seconds_bucket", operation="sendMail", status="429",
                 le="0.5") == 1
    assert value(after, "relay365_graph_request_seconds_bucket", operation="sendMail", status="429",
                 le="0.25") == 0
    assert value(after, "relay365_graph_request_seconds_count", operation="createUploadSession",
                 status="error") == 1
    families = {f.name: f.type for f in text_string_to_metric_families(after)}
    assert families["relay365_messages_accepted"] == "counter"
    assert families["relay365_queue_messages"] == "gauge"
    assert families["relay365_graph_request_seconds"] == "histogram"


def test_a_store_that_fails_does_not_take_the_metrics_down() -> None:
    registry = Metrics()

    async def broken() -> dict[Any, int]:
        raise StoreError("the database is locked")

    app = Starlette(routes=[metrics_route(broken, metrics=registry)])
    metrics.message_accepted("http", registry)

    async def scrape() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
            return await client.get("/metrics")

    response = asyncio.run(scrape())
    assert response.status_code == 200
    assert value(response.text, "relay365_messages_accepted_total", source="http") == 1


def test_the_default_registry_has_the_process_metrics() -> None:
    names = {f.name for f in text_string_to_metric_families(metrics.METRICS.exposition().decode())}
    assert {"relay365_messages_accepted", "relay365_messages_failed", "relay365_graph_request_seconds",
            "process_cpu_seconds"} <= names
