"""Names a package exports but imports only when first used (heavy dependencies).

Its users defer weight, not a cycle: the package root defers the client (MSAL and httpx,
which `relay365 sendmail` never needs), alerts defers Apprise and its plugins.  Each names
the deferred modules under TYPE_CHECKING too, so the import contracts (`make imports`) see
those imports and hold them to the layers like any other.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``name`` from ``package + where[name]`` on first use."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        setattr(sys.modules[package], name, value)  # the next lookup finds it directly
        return value

    return __getattr__
