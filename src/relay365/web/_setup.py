"""Setup: the connections, their App Callback URL and Entra checklist."""

from __future__ import annotations

ROUTES: list = []  # type: ignore[type-arg]
