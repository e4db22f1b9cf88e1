"""Fixtures shared by relay365's end-to-end tests.

``browser`` / ``browser_page``: headless chromium for the admin page (browser.py).
"""

from tests.e2e.relay365.browser import browser, browser_page

__all__ = ["browser", "browser_page"]
