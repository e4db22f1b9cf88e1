"""The admin page in a real browser (headless chromium): log in, set up a connection against
m365sim and sign in through its pages as a person would, send test email, follow a failure
to its fix in the log and resend it; message content never runs as script; screenshots for
the docs and a phone-width check.

Playwright's auto-waiting and ``expect`` synchronise with the page; only m365sim's mailbox
(outside the browser) is polled.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from m365sim import Simulator
from relay365.demo import DEMO_CLIENT_ID, DEMO_SECRET

from .browser import PHONE, new_page, screenshot
from .test_serve import eventually, free_port, relay, sign_in, write_config
from .web_helpers import ADMIN_PASSWORD, empty_config, with_admin_password

# The seed's tenant before anyone consented to the app or gave Send As on info@.
FIRST_SETUP = str(Path(__file__).with_name("first-setup.toml"))
# On one xdist worker (--dist loadgroup), so the module's chromium (the browser fixture) starts once.
pytestmark = pytest.mark.xdist_group("browser")
# The test email page waits for Microsoft's answer (up to 30 s): more than expect's 5 s.
expect.set_options(timeout=45_000)


@contextmanager
def admin_relay_process(config: Path) -> Iterator[dict[str, Any]]:
    """`relay365 serve` on ``config`` with the admin password set; its READY information."""
    with_admin_password(config)
    with relay(config) as (_, ready):
        yield ready


def log_in(page: Page, base: str, path: str = "/") -> None:
    """Open ``path``, get sent to the login form, log in, and land on ``path``."""
    page.goto(base + path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("Admin password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(base + path)


def test_log_in_through_the_form(browser: Browser, m365sim: Simulator, tmp_path: Path) -> None:
    with admin_relay_process(write_config(m365sim, tmp_path, free_port())) as ready, \
            new_page(browser) as page:
        base = ready["http_url"]
        page.goto(base + "/setup")
        expect(page).to_have_url(re.compile(r"/login\?next=(/|%2F)setup$"))
        page.get_by_label("Admin password").fill("not the password")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_contain_text("Wrong password")
        page.get_by_label("Admin password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(base + "/setup")
        expect(page.get_by_role("heading", name="Setup", exact=True)).to_be_visible()
        cookie = next(c for c in page.context.cookies() if c["name"] == "relay365_admin")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(base + "/login")
        page.goto(base + "/setup")
        expect(page).to_have_url(re.compile(r"/login\?next=(/|%2F)setup$"))


def add_connection(page: Page, sim: Simulator) -> None:
    """Setup → Add a connection, filled in as an admin would for m365sim."""
    page.get_by_role("link", name="Setup").click()
    page.get_by_role("link", name="Add a connection").click()
    page.get_by_label("Name", exact=True).fill("contoso")
    page.get_by_label("Tenant", exact=True).fill(sim.tenant_id)
    page.get_by_label("Application (client) ID", exact=True).fill(DEMO_CLIENT_ID)
    page.get_by_label("Mode", exact=True).select_option("delegated")
    page.get_by_label("Client secret (Value)", exact=True).fill(DEMO_SECRET)
    page.get_by_label("Secret expires", exact=True).fill("2028-06-01")
    page.get_by_label("Account that signs in", exact=True).fill("admin@contoso.com")
    page.get_by_label("Send as (comma-separated)", exact=True).fill("admin@contoso.com, info@contoso.com")
    page.get_by_label("Default sender", exact=True).fill("info@contoso.com")
    page.get_by_text("Advanced: endpoints").click()
    page.get_by_label("Identity platform", exact=True).fill(sim.base_url)
    page.get_by_label("Microsoft Graph", exact=True).fill(sim.graph_url)
    page.get_by_label("SMTP host", exact=True).fill(sim.host)
    page.get_by_label("SMTP port", exact=True).fill(str(sim.smtp_port))
    page.get_by_label("CA bundle to trust", exact=True).fill(str(sim.ca_file))
    page.get_by_role("button", name="Save connection").click()


def register_callback(sim: Simulator, callback: str) -> None:
    """What the checklist's redirect URI step does in Microsoft Entra."""
    from dataclasses import replace

    def change(scenario: Any) -> Any:
        app = scenario.app(DEMO_CLIENT_ID)
        return scenario.replace_app(replace(app, redirect_uris=(*app.redirect_uris, callback)))

    sim.edit_scenario(change)


def send_test_email(page: Page, sender: str, to: str, subject: str) -> None:
    page.get_by_role("link", name="Test email").click()
    page.get_by_label("From", exact=True).select_option(sender)
    page.get_by_label("To", exact=True).fill(to)
    page.get_by_label("Subject", exact=True).fill(subject)
    page.get_by_label("Body", exact=True).fill(f"{subject}, sent from the admin page.")
    page.get_by_label("Plain text").check()
    page.get_by_role("button", name="Send test email").click()


@pytest.mark.m365sim(FIRST_SETUP)
def test_setup_sign_in_test_email_and_a_failure_fixed_from_the_log(
        browser: Browser, m365sim: Simulator, tmp_path: Path) -> None:
    with admin_relay_process(empty_config(tmp_path)) as ready, new_page(browser) as page:
        base = ready["http_url"]
        log_in(page, base)
        expect(page.locator("#no-connection")).to_contain_text("No Microsoft 365 connection")

        # Setup: a connection to m365sim, its callback URL and the Entra checklist.
        add_connection(page, m365sim)
        expect(page).to_have_url(base + "/setup/contoso")
        callback = page.locator("#callback-url")
        expect(callback).to_have_value(re.compile(r"^http://localhost:\d+/auth/callback$"))
        expect(page.locator("ol.checklist > li").first).to_be_visible()
        expect(page.locator("#secret-status")).to_contain_text("expiring 2028-06-01")
        expect(page.locator("#client_secret")).to_have_value("")
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page.get_by_role("button", name="Copy").click()
        expect(page.get_by_role("button", name="Copied")).to_be_visible()
        assert page.evaluate("navigator.clipboard.readText()") == callback.input_value()
        register_callback(m365sim, callback.input_value())

        # Sign in with Microsoft 365: m365sim's account picker, then its consent page.
        page.get_by_role("button", name="Sign in with Microsoft 365").click()
        expect(page.get_by_role("heading", name="Pick an account")).to_be_visible()
        page.get_by_role("radio", name=re.compile("admin@contoso.com")).check()
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Permissions requested")).to_be_visible()
        expect(page.locator("li[data-permission='Mail.Send']")).to_be_visible()
        page.get_by_label("Consent on behalf of your organization").check()
        page.get_by_role("button", name="Accept").click()
        expect(page).to_have_url(re.compile(re.escape(base) + r"/setup/contoso/signed-in/"))
        expect(page.get_by_role("heading", level=1)).to_have_text("Signed in as admin@contoso.com")
        expect(page.locator("#granted-scopes")).to_contain_text("Mail.Send.Shared")
        assert m365sim.scenario.app(DEMO_CLIENT_ID).admin_consent  # for the whole organization
        page.get_by_role("link", name="contoso").first.click()
        expect(page.locator("text=signed in").first).to_be_visible()
        screenshot(page, "setup.png")

        # A test email from the licensed user is delivered.
        send_test_email(page, "admin@contoso.com", "browser@example.org", "Hello from the page")
        result = page.locator("#test-result")
        expect(result).to_contain_text("Delivered")
        expect(result.get_by_role("link")).to_have_attribute("href", re.compile(r"^/log/"))
        delivered = m365sim.mailbox("browser@example.org").messages
        assert [m.parsed()["Subject"] for m in delivered] == ["Hello from the page"]

        # From the shared mailbox it fails: no Send As yet; the page says why and what to do.
        send_test_email(page, "info@contoso.com", "shared@example.org", "From the shared mailbox")
        expect(result).to_contain_text("Failed")
        expect(result).to_contain_text("Fix:")
        expect(result).to_contain_text("Send As")
        screenshot(page, "test-email.png")

        # The log finds it, with the same fix.
        page.get_by_role("link", name="Log", exact=True).click()
        page.get_by_label("Recipient", exact=True).fill("shared@example.org")
        page.get_by_role("button", name="Search").click()
        rows = page.locator("#log-results tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-state", "failed")
        page.get_by_label("Recipient", exact=True).fill("")
        page.get_by_role("button", name="Search").click()
        expect(rows).to_have_count(2)
        screenshot(page, "log.png")
        page.get_by_label("Recipient", exact=True).fill("shared@example.org")
        page.get_by_role("button", name="Search").click()
        expect(rows).to_have_count(1)
        rows.first.get_by_role("link").click()
        expect(page).to_have_url(re.compile(r"/log/[^/]+$"))
        expect(page.locator("#message-state")).to_have_text("failed")
        expect(page.locator("#last-failure")).to_contain_text("Fix:")
        expect(page.locator("#last-failure")).to_contain_text("Send As")
        screenshot(page, "message.png")

        # The admin grants Send As in Exchange; the copy resent from the log is delivered.
        m365sim.grant_send_as("info@contoso.com", "admin@contoso.com")
        page.get_by_role("button", name="Resend").click()
        expect(page.get_by_role("status")).to_contain_text("Queued a copy")
        eventually(lambda: len(m365sim.mailbox("shared@example.org").messages) == 1)
        page.reload()
        expect(page.locator("#message-state")).to_have_text("sent")
        got = m365sim.mailbox("shared@example.org").messages[0].parsed()
        assert got["Subject"] == "From the shared mailbox" and "info@contoso.com" in got["From"]

        # Status: the connection is healthy; the docs' screenshot, and no overflow on a phone.
        page.get_by_role("link", name="Status").click()
        expect(page.locator("#connection-contoso")).to_be_visible()
        screenshot(page, "status.png")
        message_page = page.locator("#failures a[href^='/log/']").first.get_attribute("href")
        assert message_page
        with new_page(browser, viewport=PHONE, is_mobile=True) as phone:
            log_in(phone, base)
            expect(phone.locator("#connection-contoso")).to_be_visible()
            for path in ("/", "/setup", "/setup/contoso", "/test", "/log", message_page):
                phone.goto(base + path)
                width = phone.evaluate("document.documentElement.scrollWidth")
                assert width <= PHONE["width"], f"{path} is {width} px wide on a 390 px phone"


XSS = '<script>window.__xss = 1; alert("xss")</script><img src=x onerror="window.__xss = 2">'


def send_over_smtp(port: int, sender: str, to: str, subject: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content(f"text body {XSS}")
    msg.add_alternative(f"<p>html body</p>{XSS}", subtype="html")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(msg)


@pytest.mark.m365sim("no-send-as")
def test_message_content_is_shown_as_text_and_never_runs(browser: Browser, m365sim: Simulator,
                                                         tmp_path: Path) -> None:
    port = free_port()
    config = write_config(m365sim, tmp_path, port)
    # Playwright's sync API keeps an event loop running on this thread: asyncio.run elsewhere.
    with ThreadPoolExecutor(1) as other_thread:
        other_thread.submit(sign_in, m365sim, config).result()
    with admin_relay_process(config) as ready, new_page(browser) as page:
        base = ready["http_url"]
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        send_over_smtp(port, "admin@contoso.com", "xss@example.org", f"sent {XSS}")
        send_over_smtp(port, "info@contoso.com", "xss@example.org", f"failed {XSS}")  # no Send As
        eventually(lambda: len(m365sim.mailbox("xss@example.org").messages) == 1)
        log_in(page, base, "/log")
        page.goto(base + "/log?recipient=xss%40example.org&status=failed")  # the failure has come
        expect(page.locator("#log-results tbody tr")).to_have_count(1)

        def harmless() -> None:
            assert page.evaluate("typeof window.__xss") == "undefined"
            assert dialogs == []
            assert page.locator("#main script, #main img[src='x']").count() == 0

        page.goto(base + "/")
        expect(page.locator("#failures")).to_contain_text(f"failed {XSS} · from info@contoso.com")
        harmless()
        page.goto(base + "/log")
        rows = page.locator("#log-results tbody tr")
        for subject in (f"sent {XSS}", f"failed {XSS}"):
            expect(rows.filter(has=page.get_by_role("cell", name=subject, exact=True))).to_have_count(1)
        harmless()
        for subject in (f"sent {XSS}", f"failed {XSS}"):
            page.goto(base + "/log")
            rows.filter(has=page.get_by_role("cell", name=subject, exact=True)).get_by_role("link").click()
            expect(page.locator("#message-subject")).to_have_text(subject)
            expect(page.locator("#text-body")).to_contain_text(f"text body {XSS}")
            expect(page.locator("#html-body")).to_contain_text(f"<p>html body</p>{XSS}")
            harmless()


# Every form control must have a name a screen reader can say (a <label>, aria-label or
# aria-labelledby); hidden inputs and buttons (named by their text) aside.
_UNNAMED_CONTROLS = """() => Array.from(document.querySelectorAll('input, select, textarea'))
    .filter(el => el.type !== 'hidden' && el.type !== 'submit' && el.type !== 'button')
    .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                  && !el.getAttribute('aria-labelledby'))
    .map(el => el.name || el.id || el.outerHTML.slice(0, 80))"""


def test_every_page_labels_its_controls_and_works_from_the_keyboard(
        browser: Browser, m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, free_port())
    with ThreadPoolExecutor(1) as pool:  # sign_in runs its own event loop; Playwright's is running here
        pool.submit(sign_in, m365sim, config).result()
    with admin_relay_process(config) as ready, new_page(browser) as page:
        base = ready["http_url"]
        page.goto(base + "/login")
        # Keyboard only: the password field has the focus, Enter submits.
        page.keyboard.type(ADMIN_PASSWORD)
        page.keyboard.press("Enter")
        expect(page).to_have_url(base + "/")
        # The first Tab reaches the skip link, which moves past the navigation.
        page.keyboard.press("Tab")
        expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
        for path in ("/", "/setup", "/setup/new", "/setup/demo", "/test", "/log", "/alerts", "/doctor"):
            page.goto(base + path)
            assert page.evaluate(_UNNAMED_CONTROLS) == [], path
            expect(page.locator("h1")).to_have_count(1)
            assert page.evaluate("document.documentElement.lang") == "en"
