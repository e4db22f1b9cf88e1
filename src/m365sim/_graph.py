"""Microsoft Graph (/v1.0): being written."""

from __future__ import annotations

from starlette.routing import BaseRoute

from ._state import SimState


def graph_routes(state: SimState) -> list[BaseRoute]:
    return []
