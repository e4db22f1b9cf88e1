"""Keep MSAL's debug log free of one-time secrets.

MSAL masks tokens, client secrets and refresh tokens in its DEBUG "event=" records, but
not the authorization ``code``, the PKCE ``code_verifier`` or the ``device_code``.  They
are single-use and already redeemed when logged, yet relay365 promises that nothing
secret reaches a log, whatever the level; a filter on MSAL's loggers masks them.
"""

from __future__ import annotations

import logging
import re

_KEYS = ("code", "code_verifier", "device_code", "client_assertion", "assertion", "nonce")
_SECRET_VALUE = re.compile(r"""(["'](?:""" + "|".join(_KEYS) + r""")["']\s*:\s*)(["'])[^"']*\2""")


class RedactMsalSecrets(logging.Filter):
    """Rewrites MSAL records so that the values of ``_KEYS`` read ``********``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        redacted = _SECRET_VALUE.sub(r'\1"********"', message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_FILTER = RedactMsalSecrets()


def install() -> None:
    """Add the filter to MSAL's loggers (a filter on a logger does not reach its children)."""
    import msal  # noqa: F401  (its modules create their loggers on import)

    names = {"msal", *(n for n in logging.root.manager.loggerDict if n.startswith("msal."))}
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
