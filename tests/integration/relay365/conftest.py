"""Fixtures shared by relay365's integration tests.

``db``: one empty database per test, on each backend (SQLite in tmp_path, PostgreSQL in a
fresh schema); defined with its helpers in test_store.py, shared here with the other
modules that need a real store (the outbox, and later delivery).
"""

from tests.integration.relay365.test_store import db

__all__ = ["db"]
