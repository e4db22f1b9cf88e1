"""Shared test set-up: every test is marked with its layer, named by the folder it is in.

- ``tests/unit``: no sockets, no subprocesses, no running m365sim;
- ``tests/integration``: real sockets, m365sim over HTTPS, SQLite and PostgreSQL;
- ``tests/e2e``: the relay365 and m365sim commands as processes, chromium, PHP, swaks.

``pytest -m unit`` (or ``-m "not e2e"``) runs a layer; ``make unit`` is the first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

LAYERS = ("unit", "integration", "e2e")
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    outside = []
    for item in items:
        try:
            folder = item.path.relative_to(TESTS).parts[0]
        except ValueError:  # not under tests/
            continue
        if folder in LAYERS:
            item.add_marker(getattr(pytest.mark, folder))
        else:
            outside.append(item.nodeid)
    if outside:
        raise pytest.UsageError(f"tests outside tests/{{{','.join(LAYERS)}}}/ have no layer: "
                                f"{', '.join(outside[:5])}; move them into the layer they belong to")
