"""Test email and doctor pages."""

from __future__ import annotations

ROUTES: list = []  # type: ignore[type-arg]
