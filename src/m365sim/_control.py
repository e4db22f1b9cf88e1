"""The /_sim control API: being written."""

from __future__ import annotations

from starlette.routing import BaseRoute

from ._state import SimState


def control_routes(state: SimState) -> list[BaseRoute]:
    return []
