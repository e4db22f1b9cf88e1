"""Auth: MSAL flows, the token cache in the store, encryption of secrets at rest."""

from ._connection import Connection, SignInFlow
from ._crypto import KEY_ENV, SecretBox
from ._loopback import sign_in_with_browser
from ._scopes import SignInResult
from ._types import AccessToken, Resource, TokenSource

__all__ = [
    "KEY_ENV",
    "AccessToken",
    "Connection",
    "Resource",
    "SecretBox",
    "SignInFlow",
    "SignInResult",
    "TokenSource",
    "sign_in_with_browser",
]
