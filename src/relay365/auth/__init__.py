"""Auth: MSAL flows, the token cache in the store, encryption of secrets at rest."""

from ._crypto import KEY_ENV, SecretBox
from ._types import AccessToken, Resource, TokenSource

__all__ = ["KEY_ENV", "AccessToken", "Resource", "SecretBox", "TokenSource"]
