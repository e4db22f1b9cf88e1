"""relay365: send every application's email through Microsoft 365 with OAuth 2.0.

    async with relay365.Client() as client:
        result = await client.send(message)     # an email.message.EmailMessage

Errors are ``relay365.Relay365Error`` subclasses carrying the cause and the fix.
"""

import typing as _typing

from ._lazy import lazy_attributes as _lazy_attributes
from ._version import __version__
from .config import ConnectionSettings, Settings, load_settings
from .errors import (
    AuthError,
    AuthUnavailable,
    ConfigError,
    DeliveryError,
    NeedsSignIn,
    PermanentError,
    Relay365Error,
    StoreError,
    TransientError,
)

if _typing.TYPE_CHECKING:
    from ._client import Client, SendResult


# The client pulls in MSAL and httpx; `relay365 sendmail`, which PHP runs for every
# mail(), needs neither, so they load only when the client is asked for.
__getattr__ = _lazy_attributes(__name__, {"Client": "._client", "SendResult": "._client"})


__all__ = [
    "AuthError",
    "AuthUnavailable",
    "Client",
    "ConfigError",
    "ConnectionSettings",
    "DeliveryError",
    "NeedsSignIn",
    "PermanentError",
    "Relay365Error",
    "SendResult",
    "Settings",
    "StoreError",
    "TransientError",
    "__version__",
    "load_settings",
]
