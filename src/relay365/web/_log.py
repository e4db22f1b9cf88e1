"""The log: search, a message's detail, resend, retry and delete."""

from __future__ import annotations

ROUTES: list = []  # type: ignore[type-arg]
