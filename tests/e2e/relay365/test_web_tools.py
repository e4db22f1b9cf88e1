"""The admin page's tools, on a real `relay365 serve` and m365sim: test email, doctor, alerts.

Each test runs the relay as a process and uses the page as a browser would (``AdminClient``
posts the page's own CSRF token), then checks what reached m365sim's mailboxes, the HTML
the page answered, relay365.toml, or a local webhook.
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from m365sim import Simulator
from relay365.web._alerts_page import MASK, masked_url, resolve_urls

from .test_serve import free_port, sign_in, write_config
from .web_helpers import AdminClient, admin_relay

_RESULT = re.compile(r'<div id="test-result"[^>]*>(.*?)<section', re.S)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def result_text(page: str) -> str:
    """The text of the page's <div id="test-result">."""
    found = _RESULT.search(page)
    assert found, "no test result on the page"
    return html.unescape(found.group(1))


def send_test_email(client: AdminClient, **fields: str) -> Any:
    data = {"from": "admin@contoso.com", "to": "web@example.org", "subject": "relay365 test email",
            "body": "hello from the admin page", "format": "plain", **fields}
    return client.post("/test", data, form_page="/test")


# ---- test email -----------------------------------------------------------------------------------

def test_the_test_email_is_delivered_as_plain_text_and_as_html(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, free_port())
    sign_in(m365sim, config)
    with admin_relay(config) as (client, _):
        form = client.get("/test")
        assert form.status_code == 200
        for sender in ("admin@contoso.com", "info@contoso.com"):
            assert f'<option value="{sender}"' in form.text
        assert 'name="subject"' in form.text and 'value="relay365 test email"' in form.text

        plain = send_test_email(client)
        assert plain.status_code == 200, plain.text
        result = result_text(plain.text)
        assert "Delivered" in result
        queue_id = re.search(r'href="/log/([0-9A-F]{16})"', plain.text)
        assert queue_id, result
        assert _UUID.search(result), "no Microsoft request id in the result"
        got = m365sim.mailbox("web@example.org").messages
        assert len(got) == 1
        message = got[0].parsed()
        assert message["Subject"] == "relay365 test email"
        assert message.get_content_type() == "text/plain"
        assert "hello from the admin page" in message.get_content()

        rich = send_test_email(client, to="html@example.org", subject="html test",
                               body="<p>Hello <b>HTML</b></p>", format="html")
        assert "Delivered" in result_text(rich.text)
        message = m365sim.mailbox("html@example.org").messages[0].parsed()
        assert message.get_content_type() == "text/html"
        assert "<b>HTML</b>" in message.get_content()


@pytest.mark.m365sim("no-send-as")
def test_a_refused_test_email_shows_the_diagnosis_and_bad_input_is_refused(
        m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, free_port())
    sign_in(m365sim, config)
    with admin_relay(config) as (client, _):
        refused = send_test_email(client, **{"from": "info@contoso.com"})
        assert refused.status_code == 200
        result = result_text(refused.text)
        assert "Failed" in result and "ErrorSendAsDenied" in result
        assert "M365-SEND-AS-DENIED" in result
        assert "Send As permissions" in result  # the catalogue's fix
        assert re.search(r'href="/log/[0-9A-F]{16}"', refused.text)

        for fields, error in [({"to": ""}, "Give a recipient in To"),
                              ({"to": "not an address"}, "is not an email address"),
                              ({"from": "someone@elsewhere.example"}, "is not a sender of any configured"),
                              ({"format": "rtf"}, "choose plain text or HTML")]:
            bad = send_test_email(client, **fields)
            assert bad.status_code == 400, fields
            assert error in html.unescape(bad.text), fields
            assert 'id="test-result"' not in bad.text
    assert m365sim.mailbox("web@example.org").messages == []


# ---- doctor ---------------------------------------------------------------------------------------

def checks(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-check="([^"]+)" data-status="([^"]+)"', page))


@pytest.mark.m365sim("no-send-as")
def test_the_doctor_page_shows_each_check_and_the_fix_of_a_failure(
        m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, free_port())
    sign_in(m365sim, config)
    with admin_relay(config) as (client, _):
        form = client.get("/doctor")
        assert form.status_code == 200 and "Run checks" in form.text
        report = client.post("/doctor", {}, form_page="/doctor")
        assert report.status_code == 200
        found = checks(report.text)
        assert found["config"] == "pass" and found["token"] == "pass"
        assert found["sender:admin@contoso.com"] == "pass"
        assert found["sender:info@contoso.com"] == "fail"
        assert "Some checks failed" in report.text
        assert '<span class="badge bad">fail</span>' in report.text
        failing_row = report.text[report.text.index('data-check="sender:info@contoso.com"'):]
        failing_row = html.unescape(failing_row[:failing_row.index("</tr>")])
        assert "M365-SEND-AS-DENIED" in failing_row and "Send As permissions" in failing_row
        # The relay still sends after the doctor refreshed the stored sign-in.
        assert "Delivered" in result_text(send_test_email(client).text)


def test_with_two_connections_the_doctor_checks_the_chosen_one(m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, free_port())
    data = tomllib.loads(config.read_text(encoding="utf-8"))
    spare = {**data["connections"][0], "name": "spare", "senders": ["spare@contoso.com"],
             "default_sender": "spare@contoso.com"}
    data["connections"].append(spare)
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    with admin_relay(config) as (client, _):
        form = client.get("/doctor").text
        assert '<select id="connection" name="connection">' in form
        assert '<option value="spare">spare</option>' in form
        report = client.post("/doctor", {"connection": "spare"}, form_page="/doctor")
        assert report.status_code == 200
        assert 'id="doctor-spare"' in report.text and 'id="doctor-demo"' not in report.text
        assert checks(report.text)["token"] == "fail"  # nobody signed in to it
        unknown = client.post("/doctor", {"connection": "nosuch"}, form_page="/doctor")
        assert unknown.status_code == 400 and "no connection named &#39;nosuch&#39;" in unknown.text


# ---- alerts ---------------------------------------------------------------------------------------

class Webhook:
    """A JSON webhook on a free loopback port: what Apprise's json:// posted to it, in order."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                hook.received.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]


@contextmanager
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    thread = threading.Thread(target=hook.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()
        thread.join()


def alerts_in(config: Path) -> dict[str, Any]:
    alerts: dict[str, Any] = tomllib.loads(config.read_text(encoding="utf-8")).get("alerts", {})
    return alerts


def alerts_form(**fields: str) -> dict[str, str]:
    return {"urls": "", "email_to": "", "backlog_threshold": "100", "expiry_days": "60, 30, 7",
            "failure_interval": "900", "summary": "daily", **fields}


def test_alert_settings_round_trip_and_a_bad_value_changes_nothing(
        m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, free_port())
    with admin_relay(config) as (client, _):
        assert client.get("/alerts").status_code == 200
        nowhere = client.post("/alerts/test", {}, form_page="/alerts")
        assert nowhere.status_code == 400 and "No alert channel is configured" in nowhere.text
        saved = client.post("/alerts", alerts_form(
            urls="json://alerts.example.com/hook", email_to="it@contoso.com, ops@contoso.com",
            backlog_threshold="250", expiry_days="30, 7, 1", failure_interval="600", summary="weekly"),
            form_page="/alerts")
        assert saved.status_code == 303 and saved.headers["location"] == "/alerts"
        assert alerts_in(config) == {"urls": ["json://alerts.example.com/hook"],
                                     "email_to": ["it@contoso.com", "ops@contoso.com"],
                                     "backlog_threshold": 250, "expiry_days": [30, 7, 1],
                                     "failure_interval": 600, "summary": "weekly"}
        shown = client.get("/alerts").text
        assert "Alert settings saved" in shown
        assert 'id="backlog_threshold" name="backlog_threshold"' in shown and 'value="250"' in shown
        assert '<option value="weekly" selected>' in shown
        assert "it@contoso.com, ops@contoso.com" in shown

        before = config.read_bytes()
        for fields, error in [({"backlog_threshold": "-1"}, "alerts.backlog_threshold"),
                              ({"backlog_threshold": "many"}, "'many' is not a whole number"),
                              ({"email_to": "not-an-address"}, "is not an email address"),
                              ({"summary": "hourly"}, "alerts.summary"),
                              ({"urls": "nosuchscheme://x"}, "is not an Apprise URL"),
                              ({"urls": f"json://{MASK}@example.com/{MASK}"}, "partly masked")]:
            refused = client.post("/alerts", alerts_form(**fields), form_page="/alerts")
            assert refused.status_code == 400, fields
            assert error in html.unescape(refused.text), fields
            assert config.read_bytes() == before, fields


def test_a_test_alert_reaches_the_webhook_and_its_token_never_shows(
        m365sim: Simulator, tmp_path: Path) -> None:
    config = write_config(m365sim, tmp_path, free_port())
    with webhook() as hook, admin_relay(config) as (client, _):
        url = f"json://relay:secrettoken@127.0.0.1:{hook.port}/hook"
        saved = client.post("/alerts", alerts_form(urls=url), form_page="/alerts")
        assert saved.status_code == 303
        shown = client.get("/alerts").text
        assert "secrettoken" not in shown
        assert masked_url(url) in shown

        # Saving the form as shown (the masked line untouched) keeps the stored URL.
        again = client.post("/alerts", alerts_form(urls=masked_url(url), backlog_threshold="5"),
                            form_page="/alerts")
        assert again.status_code == 303
        assert alerts_in(config)["urls"] == [url] and alerts_in(config)["backlog_threshold"] == 5

        tried = client.post("/alerts/test", {}, form_page="/alerts")
        assert tried.status_code == 200
        assert "secrettoken" not in tried.text
        assert 'data-ok="yes"' in tried.text and 'data-ok="no"' not in tried.text
        # The page answers once the channel took the alert; the relay may alert about the sign-in too.
        tests = [(path, headers) for path, headers, body in hook.received
                 if body["title"] == "relay365 test alert"]
    assert len(tests) == 1
    path, headers = tests[0]
    assert path == "/hook"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"relay:secrettoken").decode()


def test_a_masked_line_keeps_its_own_url_when_two_mask_alike() -> None:
    first, second = "json://a:one@example.com/x", "json://b:two@example.com/y"
    assert masked_url(first) == masked_url(second) == f"json://{MASK}@example.com/{MASK}"
    lines = [masked_url(first), masked_url(second), "ntfy://new-topic"]
    assert resolve_urls(lines, [first, second]) == [first, second, "ntfy://new-topic"]
    assert resolve_urls([masked_url(first)], [first, second]) == [first]  # the other one was deleted
    for secret_url in ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnl", "tgram://123456789:AABBCCdd/12345",
                       "discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "mailto://user:pw@gmail.com",
                       "json://alerts.example.com/hook?+X-Token=abc123"):
        masked = masked_url(secret_url)
        for part in ("T1JJ3T3L2", "TIiajkdnl", "AABBCCdd", "JHMHI8qBe7bk2ZwO5U711o3dV_js", "pw", "abc123"):
            assert part not in masked, (secret_url, masked)
