<?php
/**
 * Plugin Name: relay365 SMTP
 * Description: Sends every wp_mail() (password resets, comment notices, WooCommerce, WPForms...) through the local relay365 relay, which delivers it through Microsoft 365 with OAuth 2.0. No password, no app password, no other mail plugin.
 * Version: 0.1.0
 * License: MIT
 *
 * A must-use plugin: copy this file to wp-content/mu-plugins/ (create the folder if needed).
 * WordPress loads it on every request and it cannot be switched off from the admin pages.
 *
 * Settings, in wp-config.php (all optional):
 *
 *   define('RELAY365_SMTP_HOST', '127.0.0.1');       // where `relay365 serve` listens (relay.smtp)
 *   define('RELAY365_SMTP_PORT', 2525);
 *   define('RELAY365_SMTP_USER', '');                // a `relay365 user add` login, if the relay wants one
 *   define('RELAY365_SMTP_PASSWORD', '');
 *   define('RELAY365_SMTP_SECURE', '');              // '' (loopback), 'tls' (STARTTLS) or 'ssl'
 *   define('RELAY365_FROM', 'info@contoso.com');     // the shared mailbox every mail is sent as
 *   define('RELAY365_FROM_NAME', 'Contoso');
 *
 * Without RELAY365_FROM, WordPress's own From (wordpress@your-site) is kept, and relay365
 * refuses it unless a connection owns that address or has force_from set.
 */

defined('ABSPATH') || exit;

function relay365_setting($name, $default)
{
    return defined($name) ? constant($name) : $default;
}

add_filter('wp_mail_from', function ($from) {
    $forced = relay365_setting('RELAY365_FROM', '');
    return $forced !== '' ? $forced : $from;
}, 99);

add_filter('wp_mail_from_name', function ($name) {
    $forced = relay365_setting('RELAY365_FROM_NAME', '');
    return $forced !== '' ? $forced : $name;
}, 99);

add_action('phpmailer_init', function ($phpmailer) {
    $phpmailer->isSMTP();
    $phpmailer->Host = relay365_setting('RELAY365_SMTP_HOST', '127.0.0.1');
    $phpmailer->Port = (int) relay365_setting('RELAY365_SMTP_PORT', 2525);
    $user = relay365_setting('RELAY365_SMTP_USER', '');
    $phpmailer->SMTPAuth = $user !== '';
    if ($user !== '') {
        $phpmailer->Username = $user;
        $phpmailer->Password = relay365_setting('RELAY365_SMTP_PASSWORD', '');
    }
    $secure = relay365_setting('RELAY365_SMTP_SECURE', '');
    $phpmailer->SMTPSecure = $secure;
    // On loopback the relay offers no TLS; never let PHPMailer guess.
    $phpmailer->SMTPAutoTLS = $secure === 'tls';
    $phpmailer->Timeout = 30;
    // The envelope sender is the From: relay365 sends as the address that owns the mail.
    $phpmailer->Sender = $phpmailer->From;
}, 99);

add_action('wp_mail_failed', function ($error) {
    // The relay's reply says why (e.g. "550 5.7.1 ... not a sender of any connection") and how to fix it.
    error_log('relay365-smtp: wp_mail failed: ' . $error->get_error_message());
});
