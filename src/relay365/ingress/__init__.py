"""Ingress: the ways mail comes in (SMTP relay, sendmail command, HTTP API).

Each way in asks ``relay365.policy`` who may send what, turns what arrives into one
``NewMessage`` and hands it to the outbox; it answers "accepted" only after the outbox
committed it.  None of them talks to Microsoft.

    servers = await start_smtp_listeners(settings, store, Policy(settings))
    app = Starlette(routes=[*api_routes(settings, store, Policy(settings)), ...])
    sys.exit(sendmail_main(sys.argv[1:], sys.stdin.buffer, settings))
"""

from ._aiosmtpd import RelaySMTP
from ._credentials import Credentials, hash_password, new_api_key
from ._http import api_routes
from ._openapi import openapi_document
from ._outbox import Outbox
from ._sendmail import main as sendmail_command
from ._sendmail import manual as sendmail_manual
from ._sendmail import sendmail_main
from ._smtp import RelayHandler, start_smtp_listeners

__all__ = [
    "Credentials",
    "Outbox",
    "RelayHandler",
    "RelaySMTP",
    "api_routes",
    "hash_password",
    "new_api_key",
    "openapi_document",
    "sendmail_command",
    "sendmail_main",
    "sendmail_manual",
    "start_smtp_listeners",
]
