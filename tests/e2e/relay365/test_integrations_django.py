"""Django's email API through relay365's backend, delivered by a running relay to m365sim.

Django's own conventions: a settings module (integrations_django_settings), settings changed
per test with ``override_settings``, and mail sent with ``send_mail``, ``EmailMultiAlternatives``,
``mail_admins`` and ``get_connection``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from email.mime.image import MIMEImage
from pathlib import Path

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.core import mail  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from relay365.ingress import hash_password  # noqa: E402
from relay365.integrations import NotQueued  # noqa: E402
from relay365.integrations.django import EmailBackend  # noqa: E402
from tests.e2e.relay365.integrations_helpers import SHARED, RunningRelay, running_relay  # noqa: E402

API_KEY = "r365_django-test-key"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"  # binary, every byte value
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15"
       b"\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")


# On one xdist worker (--dist loadgroup), so the module's relay starts once.
pytestmark = pytest.mark.xdist_group("django")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, m365sim_state_dir: Path) -> Iterator[RunningRelay]:
    if not settings.configured:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.relay365.integrations_django_settings")
        django.setup()
    keys = [{"name": "django", "key_hash": hash_password(API_KEY)}]
    with running_relay(tmp_path_factory.mktemp("django"), m365sim_state_dir,
                       relay_settings={"api_keys": keys}) as running:
        yield running


@pytest.fixture
def outbox(running: RunningRelay) -> Iterator[RunningRelay]:
    """The backend queues into the relay's store (RELAY365_CONFIG as a Django setting)."""
    with override_settings(RELAY365_CONFIG=str(running.config)):
        yield running


def test_send_mail_from_the_shared_mailbox(outbox: RunningRelay) -> None:
    sent = mail.send_mail("Your order", "Thank you for your order.", None, ["customer@example.org"])
    assert sent == 1
    got = outbox.delivered("customer@example.org", "Your order")
    parsed = got.parsed()
    assert parsed["From"].addresses[0].addr_spec == SHARED
    assert parsed.get_content().strip() == "Thank you for your order."
    assert got.sender == SHARED and got.identity == "admin@contoso.com"


def test_alternatives_attachment_bcc_reply_to_and_inline_image_over_one_connection(
        outbox: RunningRelay) -> None:
    report = mail.EmailMultiAlternatives(
        "Monthly report", "The report is attached.", to=["boss@example.org"], cc=["cc@example.org"],
        bcc=["audit@example.org"], reply_to=["sales@contoso.com"], headers={"X-Report": "2026-11"})
    report.attach_alternative("<p>The report is <b>attached</b>.</p>", "text/html")
    report.attach("report.pdf", PDF, "application/pdf")
    newsletter = mail.EmailMultiAlternatives("Newsletter", "See the logo.", to=["reader@example.org"])
    newsletter.attach_alternative('<p><img src="cid:logo"></p>', "text/html")
    newsletter.mixed_subtype = "related"  # an inline image, not an attachment
    logo = MIMEImage(PNG, "png")
    logo.add_header("Content-ID", "<logo>")
    logo.add_header("Content-Disposition", "inline", filename="logo.png")
    newsletter.attach(logo)

    connection = mail.get_connection()
    assert isinstance(connection, EmailBackend)
    with connection:
        opened = connection.submitter
        assert connection.send_messages([report]) == 1
        assert connection.send_messages([newsletter]) == 1
        assert connection.submitter is opened  # one store connection for both calls
    assert connection.submitter is None

    boss = outbox.delivered("boss@example.org", "Monthly report").parsed()
    assert boss["Reply-To"] == "sales@contoso.com" and boss["X-Report"] == "2026-11"
    assert boss["Cc"] == "cc@example.org" and boss["Bcc"] is None  # Bcc never shows
    assert boss.get_body(("html",)).get_content().strip() == "<p>The report is <b>attached</b>.</p>"
    assert boss.get_body(("plain",)).get_content().strip() == "The report is attached."
    [attachment] = list(boss.iter_attachments())
    assert attachment.get_filename() == "report.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == PDF
    audit = outbox.delivered("audit@example.org", "Monthly report")  # the Bcc recipient got it
    assert "audit@example.org" not in audit.parsed().get("To", "")
    outbox.delivered("cc@example.org", "Monthly report")

    reader = outbox.delivered("reader@example.org", "Newsletter").parsed()
    assert reader.get_content_type() == "multipart/related"
    image = next(p for p in reader.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<logo>" and image.get_content() == PNG
    assert 'src="cid:logo"' in reader.get_body(("html",)).get_content()


def test_mail_admins(outbox: RunningRelay) -> None:
    mail.mail_admins("Disk almost full", "/var is at 95%.")
    got = outbox.delivered("ops@example.org", "[Contoso] Disk almost full").parsed()
    assert got["From"].addresses[0].addr_spec == SHARED
    assert "/var is at 95%." in got.get_content()


def test_a_sender_no_connection_owns_is_refused_with_the_fix(outbox: RunningRelay) -> None:
    with pytest.raises(NotQueued) as refused:
        mail.send_mail("Spoof", "no", "someone@example.org", ["victim@example.org"])
    assert not refused.value.temporary
    assert "someone@example.org" in refused.value.message and "senders" in refused.value.hint
    assert mail.send_mail("Spoof", "no", "someone@example.org", ["victim@example.org"],
                          fail_silently=True) == 0


def test_through_the_http_api_of_a_remote_relay(running: RunningRelay) -> None:
    with override_settings(RELAY365_API_URL=running.http_url, RELAY365_API_KEY=API_KEY):
        assert repr(mail.get_connection()) == f"<relay365 EmailBackend to {running.http_url}>"
        message = mail.EmailMessage("Over HTTP", "Queued through the HTTP API.", to=["remote@example.org"],
                                    bcc=["remote-bcc@example.org"])
        message.attach("notes.txt", "line one\nline two\n", "text/plain")
        assert message.send() == 1
    got = running.delivered("remote@example.org", "Over HTTP").parsed()
    assert got["From"].addresses[0].addr_spec == SHARED
    [notes] = list(got.iter_attachments())
    assert notes.get_content().replace("\r\n", "\n") == "line one\nline two\n"
    running.delivered("remote-bcc@example.org", "Over HTTP")

    with override_settings(RELAY365_API_URL=running.http_url, RELAY365_API_KEY="r365_wrong"):
        with pytest.raises(NotQueued) as refused:
            mail.send_mail("Wrong key", "no", None, ["remote@example.org"])
        assert refused.value.code == "unauthorized" and "api-key add" in refused.value.hint
        assert mail.send_mail("Wrong key", "no", None, ["remote@example.org"], fail_silently=True) == 0


def test_an_unreachable_relay_fails_loudly_or_silently(running: RunningRelay) -> None:
    with override_settings(RELAY365_API_URL="http://127.0.0.1:9"):
        with pytest.raises(NotQueued) as unreachable:
            mail.send_mail("Lost?", "no", None, ["remote@example.org"])
        assert unreachable.value.temporary
        assert mail.send_mail("Lost?", "no", None, ["remote@example.org"], fail_silently=True) == 0
    with override_settings(RELAY365_CONFIG=str(running.config.with_name("missing.toml"))):
        assert mail.send_mail("No config", "no", None, ["x@example.org"], fail_silently=True) == 0
