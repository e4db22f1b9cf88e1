"""Every SMTP reply relay365's ways in give of their own, and the fix that goes with a refusal.

The SMTP listener sends these lines as they are; the HTTP API and the sendmail command
show the text after the codes, with the ``*_FIX`` beside it.  Placeholders are filled
with ``str.format``.  Enhanced status codes follow RFC 3463 and Postfix's wording.
"""

from __future__ import annotations

# -- accepted ------------------------------------------------------------------------------
SENDER_OK = "250 2.1.0 Ok"
RECIPIENT_OK = "250 2.1.5 Ok"
QUEUED = "250 2.0.0 Ok: queued as {queue_id}"

# -- temporary: the client keeps the message and tries again -------------------------------
STORE_UNAVAILABLE = "451 4.3.0 Temporary failure: the queue is unavailable, try again later"
STORE_UNAVAILABLE_FIX = ("relay365 could not commit the message to its outbox; check the disk and "
                         "the database (`relay365 doctor`), the client may retry")
INTERNAL_ERROR = "451 4.3.0 Internal error: the message was not queued, try again later"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_MANY_RECIPIENTS_FIX = ("send to at most {limit} recipients per message (relay.max_recipients; "
                           "Exchange Online refuses more than 500)")
TOO_MANY_RECIPIENTS_CONNECTION_FIX = ("send to at most {limit} recipients per message through connection "
                                      "{connection} (its recipients_per_message, the mailbox's limit in "
                                      "Exchange Online), or split the message")

# -- who may send ----------------------------------------------------------------------------
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_REQUIRED_FIX = "this listener has require_auth = true: log in with AUTH (a user of relay.users)"
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
# RFC 4954's temporary failure: too many wrong passwords from this address, for now.
AUTH_TOO_MANY = "454 4.7.0 Too many failed logins from your address: try again in {seconds} seconds"
AUTH_NOT_ENABLED = "503 5.5.1 Error: authentication not enabled"
CLIENT_NOT_ALLOWED = ("550 5.7.1 Client host [{client}] is not in relay.allowed_networks: "
                      "authenticate first (not an open relay)")
CLIENT_NOT_ALLOWED_FIX = ("log in (SMTP AUTH with a user of relay.users, or an API key), or add the "
                          "client's network to relay.allowed_networks")
SENDER_NOT_OWNED = "550 5.7.1 <{sender}>: sender not owned by any connection (not an open relay)"
SENDER_NOT_OWNED_FIX = ("send as an address listed in a connection's senders (relay365.toml), add "
                        "{sender} there (its mailbox needs Send As), or set force_from on a connection")
SENDER_NOT_OWNED_BY = "550 5.7.1 <{sender}>: connection {connection} does not send as this address"
SENDER_NOT_OWNED_BY_FIX = ("connection {connection} sends as: {senders}; add {sender} to its senders "
                           "(its mailbox needs Send As), or set force_from on it")
SENDER_NOT_PERMITTED = "550 5.7.1 <{sender}>: {client} may not send as this address"
SENDER_NOT_PERMITTED_FIX = ("{client} may send as: {senders}; use one of them, or add {sender} to its "
                            "senders in relay365.toml")
FROM_NOT_OWNED = "550 5.7.1 <{address}>: header From is not a sender of connection {connection}"
FROM_NOT_OWNED_FIX = ("make the From header an address of connection {connection} (the envelope "
                      "sender's), or set force_from on that connection to rewrite it")

# -- the message itself --------------------------------------------------------------------
MESSAGE_TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
MESSAGE_TOO_BIG_FIX = ("the limit is {limit} bytes (relay.max_message_size; Exchange Online's default "
                       "is 35 MB): send smaller attachments or a link")
BARE_NEWLINE = "554 5.5.2 Bare <LF> or <CR> in message data (SMTP smuggling is refused)"
BARE_NEWLINE_FIX = ("end every line of the message with <CR><LF>; a lone <LF> or <CR> is how SMTP "
                    "smuggling hides a second message")
BAD_RECIPIENT = "501 5.1.3 <{recipient}>: Bad recipient address syntax"
BAD_RECIPIENT_FIX = ("give a full address (user@domain): Microsoft 365 cannot deliver to a local name "
                     "such as `root` (for cron, set MAILTO=you@example.com)")
NO_RECIPIENTS = "554 5.5.1 No valid recipients"
NO_RECIPIENTS_FIX = "name at least one recipient (To, Cc or Bcc, or the command's arguments)"
NO_SENDER = "554 5.5.1 No sender: the message has no From and no connection has a default sender"
NO_SENDER_FIX = "give a From header (or -f / \"from\"), or set default_sender on a connection"


def text_of(reply: str) -> str:
    """The words of a reply without its codes: ``550 5.7.1 <a>: ...`` gives ``<a>: ...``."""
    parts = reply.split(" ", 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1][:1].isdigit():
        return parts[2]
    return reply
