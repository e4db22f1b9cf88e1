"""Status: every connection's health, the queue, sent and failed over time."""

from __future__ import annotations

ROUTES: list = []  # type: ignore[type-arg]
