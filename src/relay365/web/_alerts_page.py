"""Alerts: channels, thresholds, test alert."""

from __future__ import annotations

ROUTES: list = []  # type: ignore[type-arg]
