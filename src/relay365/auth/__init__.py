"""Auth: MSAL flows, the token cache in the store, encryption of secrets at rest."""

from ._connection import Connection, SignInFlow
from ._credentials import client_secret
from ._crypto import KEY_ENV, SEALED_PREFIX, SecretBox
from ._loopback import sign_in_with_browser
from ._scopes import SignInResult
from ._types import AccessToken, Resource, TokenSource

__all__ = [
    "KEY_ENV",
    "SEALED_PREFIX",
    "AccessToken",
    "Connection",
    "Resource",
    "SecretBox",
    "SignInFlow",
    "SignInResult",
    "TokenSource",
    "client_secret",
    "sign_in_with_browser",
]
