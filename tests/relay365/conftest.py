"""Fixtures shared by relay365's tests.

``db``: one empty database per test, on each backend (SQLite in tmp_path, PostgreSQL in a
fresh schema); defined with its helpers in test_store.py, shared here with the other
modules that need a real store (the outbox, and later delivery).
``browser`` / ``browser_page``: headless chromium for the admin page (browser.py).
"""

from tests.relay365.browser import browser, browser_page
from tests.relay365.test_store import db

__all__ = ["browser", "browser_page", "db"]
