"""relay365: send every application's email through Microsoft 365 with OAuth 2.0.

    async with relay365.Client() as client:
        result = await client.send(message)     # an email.message.EmailMessage

Errors are ``relay365.Relay365Error`` subclasses carrying the cause and the fix.
"""

# First: submodules (the Graph transport's User-Agent) read it during this import.
__version__ = "0.1.0"

from ._client import Client, SendResult
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
