"""Real PHP through relay365 to m365sim: mail() with sendmail_path, PHPMailer over SMTP, and the
WordPress must-use plugin driving PHPMailer the way wp_mail() does.

Needs Debian's php-cli and libphp-phpmailer (`make tools` installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.relay365.integrations_helpers import SHARED, RunningRelay, running_relay

PHP = shutil.which("php")
PHPMAILER = Path("/usr/share/php/libphp-phpmailer/autoload.php")
PLUGIN = Path(__file__).parents[3] / "integrations" / "wordpress" / "relay365-smtp.php"
RELAY365 = Path(sys.executable).with_name("relay365")
pytestmark = [
    pytest.mark.skipif(PHP is None or not PHPMAILER.exists(),
                       reason="needs php-cli and libphp-phpmailer: apt-get install php-cli libphp-phpmailer"),
    # On one xdist worker (--dist loadgroup), so the module's relay starts once.
    pytest.mark.xdist_group("php"),
]
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 64 + b"\n%%EOF\n"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, m365sim_state_dir: Path) -> Iterator[RunningRelay]:
    with running_relay(tmp_path_factory.mktemp("php"), m365sim_state_dir) as running:
        yield running


def php(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY365_")}
    return subprocess.run([str(PHP), "-n", "-d", "display_errors=stderr", *_ini(env), "-r", code],
                          capture_output=True, text=True, timeout=120, env={**clean, **env})


def _ini(env: dict[str, str]) -> list[str]:
    path = env.pop("SENDMAIL_PATH", None)
    return ["-d", f'sendmail_path="{path}"'] if path else []  # quoted, as in php.ini


def test_mail_with_sendmail_path_sends_from_the_shared_mailbox(running: RunningRelay) -> None:
    sendmail = f"{RELAY365} sendmail -t -i"
    plain = php("var_dump(mail('guest@example.org', 'Welcome', \"Hello from PHP.\\nSecond line.\"));",
                SENDMAIL_PATH=sendmail, RELAY365_CONFIG=str(running.config))
    assert plain.stdout.strip() == "bool(true)", plain.stderr
    # docs/wordpress.md's line: the environment in sendmail_path, the message handed to the relay by SMTP.
    documented = (f"RELAY365_CONFIG={running.config} RELAY365_SENDMAIL_SMTP=127.0.0.1:{running.smtp_port} "
                  f"{RELAY365} sendmail -t -i")
    named = php("var_dump(mail('guest@example.org', 'Password reset', 'Click the link.', "
                "\"From: Contoso <info@contoso.com>\\r\\nReply-To: help@contoso.com\"));",
                SENDMAIL_PATH=documented)
    assert named.stdout.strip() == "bool(true)", named.stderr

    got = running.delivered("guest@example.org", "Welcome")
    parsed = got.parsed()
    assert parsed["From"].addresses[0].addr_spec == SHARED  # no From: relay365 gave the default sender
    assert parsed.get_content().replace("\r\n", "\n").strip() == "Hello from PHP.\nSecond line."
    assert got.sender == SHARED
    reset = running.delivered("guest@example.org", "Password reset").parsed()
    assert str(reset["From"]) == "Contoso <info@contoso.com>"
    assert reset["Reply-To"] == "help@contoso.com"


def test_force_from_sends_wordpress_default_from_as_the_shared_mailbox(
        tmp_path: Path, m365sim_state_dir: Path) -> None:
    with running_relay(tmp_path, m365sim_state_dir, force_from=True) as forced:
        sent = php("var_dump(mail('guest@example.org', 'Forced', 'From WordPress.', "
                   "'From: WordPress <wordpress@shop.example>'));",
                   SENDMAIL_PATH=f"{RELAY365} sendmail -t -i", RELAY365_CONFIG=str(forced.config))
        assert sent.stdout.strip() == "bool(true)", sent.stderr
        got = forced.delivered("guest@example.org", "Forced").parsed()
    assert got["From"].addresses[0].addr_spec == SHARED


def test_mail_returns_false_with_the_reason_when_relay365_refuses(running: RunningRelay) -> None:
    refused = php("var_dump(mail('guest@example.org', 'Spoof', 'no', 'From: boss@example.org'));",
                  SENDMAIL_PATH=f"{RELAY365} sendmail -t -i", RELAY365_CONFIG=str(running.config))
    assert refused.stdout.strip() == "bool(false)"
    assert "relay365 sendmail:" in refused.stderr and "fix:" in refused.stderr


PHPMAILER_SCRIPT = f"""
require '{PHPMAILER}';
$mail = new PHPMailer\\PHPMailer\\PHPMailer(true);
$mail->isSMTP();
$mail->Host = '127.0.0.1';
$mail->Port = (int) getenv('RELAY_PORT');
$mail->SMTPAuth = false;
$mail->SMTPAutoTLS = false;
$mail->setFrom('info@contoso.com', 'Contoso Shop');
$mail->addAddress('buyer@example.org', 'A Buyer');
$mail->addBCC('accounts@example.org');
$mail->Subject = 'Invoice 1001';
$mail->isHTML(true);
$mail->Body = '<p>Your invoice is attached.</p>';
$mail->AltBody = 'Your invoice is attached.';
$mail->addAttachment(getenv('ATTACHMENT'), 'invoice-1001.pdf', 'base64', 'application/pdf');
$mail->send();
echo "sent\\n";
"""


def test_phpmailer_over_smtp_keeps_the_attachment_intact(running: RunningRelay, tmp_path: Path) -> None:
    attachment = tmp_path / "invoice.pdf"
    attachment.write_bytes(PDF)
    result = php(PHPMAILER_SCRIPT, RELAY_PORT=str(running.smtp_port), ATTACHMENT=str(attachment))
    assert result.stdout == "sent\n", result.stdout + result.stderr
    got = running.delivered("buyer@example.org", "Invoice 1001").parsed()
    assert got["From"].addresses[0].addr_spec == SHARED
    assert got.get_body(("html",)).get_content().strip() == "<p>Your invoice is attached.</p>"
    [pdf] = list(got.iter_attachments())
    assert pdf.get_filename() == "invoice-1001.pdf" and pdf.get_content_type() == "application/pdf"
    assert pdf.get_content() == PDF
    bcc = running.delivered("accounts@example.org", "Invoice 1001")
    assert "accounts@example.org" not in str(bcc.parsed().get("To", ""))


# What wp_mail() does around PHPMailer, with just enough of WordPress's hook API.
WORDPRESS_SHIM = """
define('ABSPATH', sys_get_temp_dir() . '/');
$GLOBALS['hooks'] = [];
function add_filter($tag, $cb, $priority = 10, $args = 1) { $GLOBALS['hooks'][$tag][] = $cb; return true; }
function add_action($tag, $cb, $priority = 10, $args = 1) { return add_filter($tag, $cb, $priority, $args); }
function apply_filters($tag, $value) {
  foreach ($GLOBALS['hooks'][$tag] ?? [] as $cb) { $value = $cb($value); }
  return $value;
}
function do_action_ref_array($tag, $args) {
  foreach ($GLOBALS['hooks'][$tag] ?? [] as $cb) { $cb(...$args); }
}
define('RELAY365_SMTP_PORT', (int) getenv('RELAY_PORT'));
define('RELAY365_FROM', 'info@contoso.com');
define('RELAY365_FROM_NAME', 'Contoso');
require getenv('PLUGIN');
require '{autoload}';
$phpmailer = new PHPMailer\\PHPMailer\\PHPMailer(true);
$phpmailer->setFrom(apply_filters('wp_mail_from', 'wordpress@shop.example'),
                    apply_filters('wp_mail_from_name', 'WordPress'), false);
$phpmailer->addAddress('customer@example.org');
$phpmailer->Subject = '[Shop] Your order #42 has been received';
$phpmailer->Body = "Thanks for your order.";
$phpmailer->addAttachment(getenv('ATTACHMENT'), 'order-42.pdf');
do_action_ref_array('phpmailer_init', [&$phpmailer]);
$phpmailer->send();
echo $phpmailer->Mailer . " " . $phpmailer->Host . ":" . $phpmailer->Port . "\\n";
""".replace("{autoload}", str(PHPMAILER))


def test_the_wordpress_mu_plugin_points_phpmailer_at_the_relay(running: RunningRelay, tmp_path: Path) -> None:
    attachment = tmp_path / "order.pdf"
    attachment.write_bytes(PDF)
    result = php(WORDPRESS_SHIM, RELAY_PORT=str(running.smtp_port), PLUGIN=str(PLUGIN),
                 ATTACHMENT=str(attachment))
    assert result.stdout == f"smtp 127.0.0.1:{running.smtp_port}\n", result.stdout + result.stderr
    got = running.delivered("customer@example.org", "[Shop] Your order #42 has been received")
    parsed = got.parsed()
    assert str(parsed["From"]) == "Contoso <info@contoso.com>"  # not wordpress@shop.example
    assert got.sender == SHARED
    [pdf] = list(parsed.iter_attachments())
    assert pdf.get_filename() == "order-42.pdf" and pdf.get_content() == PDF


def test_the_plugin_is_valid_php() -> None:
    result = subprocess.run([str(PHP), "-n", "-l", str(PLUGIN)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
