"""A real browser for the admin page's tests: Debian's chromium, headless, driven by Playwright.

``browser`` is one chromium per test module (starting it is the slow part); ``browser_page``
is a fresh context per test (its own cookies), trusting m365sim's CA by ignoring HTTPS errors
(chromium has no flag for a single extra CA), at a desktop viewport for the screenshots.
Playwright's own browser downloads are not used: ``RELAY365_CHROMIUM`` names the executable,
by default the one ``make tools`` installs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

CHROMIUM = os.environ.get("RELAY365_CHROMIUM", "/usr/bin/chromium")
# No sandbox: tests run as root in containers, where chromium's sandbox cannot start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
DESKTOP: ViewportSize = {"width": 1200, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}
# `make screenshots` points this at docs/screenshots/ (the README shows them); an ordinary
# test run writes them aside, so running the tests leaves the tree as it was.
SCREENSHOTS = Path(os.environ.get("RELAY365_SCREENSHOTS")
                   or Path(tempfile.gettempdir()) / f"relay365-screenshots-{os.getpid()}")


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless chromium, closed on exit."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def new_page(browser: Browser, *, viewport: ViewportSize = DESKTOP,
             is_mobile: bool = False) -> Iterator[Page]:
    """A page in a context of its own (no cookies shared with other pages)."""
    context = browser.new_context(ignore_https_errors=True, viewport=viewport,
                                  is_mobile=is_mobile, has_touch=is_mobile, locale="en-GB",
                                  timezone_id="UTC")
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot into ``SCREENSHOTS`` (docs/screenshots/ under `make screenshots`)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    assert path.stat().st_size > 10_000, f"{path} is too small to show the page"
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium for a test module."""
    with chromium() as b:
        yield b


@pytest.fixture
def browser_page(browser: Browser) -> Iterator[Page]:
    """A fresh page (own cookies) in the module's chromium, 1200 px wide."""
    with new_page(browser) as page:
        yield page
