"""Identity platform: being written."""

from __future__ import annotations

from starlette.routing import BaseRoute

from ._state import SimState


def identity_routes(state: SimState) -> list[BaseRoute]:
    return []


def complete_device_code(state: SimState, user_code: str, user: str, *, approve: bool) -> None:
    raise NotImplementedError
