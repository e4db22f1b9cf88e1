"""Policy: who may send what, and which connection sends it; pure decisions, no I/O.

Every way in (SMTP relay, sendmail command, HTTP API) and the Python ``Client`` ask the same
``Policy``, so a message is routed to the same connection, and refused for the same reason
with the same fix, whichever way it came.  ``prepare`` turns a locally submitted message
into the ``NewMessage`` the outbox queues (what Postfix's cleanup does for mail that did not
come by SMTP); ``replies`` holds every SMTP reply the ways in give of their own.

    policy = Policy(settings)
    route = policy.route("info@contoso.com", client)     # Route(connection, forced) or Refusal
    prepared = prepare(policy, raw, sender=None, recipients=[...], client=client,
                       source="api", client_label="python")
"""

from . import replies
from ._policy import Client, ClientKind, Policy, Refusal, RefusalKind, Route
from ._prepare import dedupe, prepare

__all__ = ["Client", "ClientKind", "Policy", "Refusal", "RefusalKind", "Route", "dedupe", "prepare",
           "replies"]
