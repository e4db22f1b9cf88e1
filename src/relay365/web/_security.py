"""The admin page's secrets: its password (an argon2id hash) and the CSRF tokens.

Every POST carries the session's CSRF token in a form field; ``action`` (in ``_site``)
refuses one without it before the handler runs.
"""

from __future__ import annotations

import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.datastructures import FormData
from starlette.requests import Request

CSRF_FIELD = "csrf"
_hasher = PasswordHasher()


def password_matches(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use."""
    token = request.session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session[CSRF_FIELD] = token
    return token


def csrf_valid(request: Request, form: FormData) -> bool:
    expected = request.session.get(CSRF_FIELD)
    given = form.get(CSRF_FIELD)
    return isinstance(expected, str) and isinstance(given, str) and hmac.compare_digest(expected, given)
