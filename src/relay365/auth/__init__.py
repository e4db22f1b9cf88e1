"""Auth: MSAL flows, the token cache in the store, encryption of secrets at rest."""

from ._connection import Connection, SignInFlow
from ._credentials import client_secret, credential_kind, read_credential
from ._crypto import KEY_ENV, SEALED_PREFIX, SecretBox
from ._loopback import sign_in_with_browser
from ._scopes import (
    SignInResult,
    needed_scopes,
    request_scopes,
    token_account,
    token_claims,
    transport_resource,
)
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
    "credential_kind",
    "needed_scopes",
    "read_credential",
    "request_scopes",
    "sign_in_with_browser",
    "token_account",
    "token_claims",
    "transport_resource",
]
