"""Outlook upload sessions: being written."""

from __future__ import annotations

from starlette.routing import BaseRoute

from ._state import SimState


def upload_routes(state: SimState) -> list[BaseRoute]:
    return []
