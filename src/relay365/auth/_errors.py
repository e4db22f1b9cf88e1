"""MSAL's answers and exceptions, translated once into relay365's errors.

MSAL reports a refused token request as a dict (``error``, ``error_description``,
``error_codes``) and a failed transport as an exception (``requests`` errors, or
``MsalServiceError("HTTP Error: 503")`` for a 5xx).  Both become an ``AuthError`` here,
carrying the catalogue entry found from Microsoft's text and the ``AADSTS`` code.
Messages hold our words and the first line of Microsoft's description, never a secret,
a token or MSAL's exception text.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import requests
from msal.exceptions import MsalServiceError

from ..catalogue import find_entry
from ..errors import AuthError, AuthUnavailable, NeedsSignIn

# Answers only an interactive sign-in can fix (the refresh token is gone, revoked,
# expired, or the account must do something: consent, MFA, a Conditional Access step).
_SIGN_IN_ERRORS = frozenset({"invalid_grant", "interaction_required", "consent_required",
                             "login_required"})
_SIGN_IN_CODES = frozenset({50173, 70008, 700082, 65001, 50076, 50079, 50078, 53003, 50058})
_UNAVAILABLE_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_AADSTS = re.compile(r"AADSTS(\d+)")
_HTTP_STATUS = re.compile(r"HTTP Error: (\d{3})")


def first_line(text: str) -> str:
    """Microsoft's description up to its Trace ID / Correlation ID lines."""
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def aadsts(result: Mapping[str, Any]) -> int | None:
    """The AADSTS number of an error answer, from ``error_codes`` or the description."""
    codes = result.get("error_codes")
    if isinstance(codes, list) and codes and str(codes[0]).isdigit():
        return int(codes[0])
    found = _AADSTS.search(str(result.get("error_description") or ""))
    return int(found.group(1)) if found else None


def error_from_result(result: Mapping[str, Any], *, connection: str, credential: str,
                      secret_expires: dt.date | None = None, during: str = "a token request"
                      ) -> AuthError:
    """The ``AuthError`` for an MSAL error dict (``NeedsSignIn`` when only a sign-in helps).

    ``credential`` names what the connection authenticates with ("client secret",
    "certificate" or "no credential"), so a refused credential is named in the message.
    """
    error = str(result.get("error") or "unknown_error")
    description = str(result.get("error_description") or "")
    number = aadsts(result)
    code = f"AADSTS{number}" if number is not None else error
    entry = find_entry(description, code, error)
    detail = first_line(description) or error

    if error == "invalid_client":
        if number == 7000222:
            when = f" on {secret_expires.isoformat()}" if secret_expires else ""
            message = f"the client secret of connection {connection!r} expired{when}"
        elif number == 7000215:
            message = f"the client secret of connection {connection!r} is not a valid secret of its app"
        elif credential == "no credential":
            message = (f"connection {connection!r} has no client secret or certificate, and its app "
                       f"was refused without one: {detail}")
        else:
            message = f"the {credential} of connection {connection!r} was not accepted: {detail}"
        return AuthError(message, entry=entry or "R365-AUTH", code=code)
    if error in _UNAVAILABLE_ERRORS:
        return AuthUnavailable(f"{during} for connection {connection!r} failed for now: {detail}",
                               entry=entry or "R365-TRANSIENT", code=code)
    if error in _SIGN_IN_ERRORS or number in _SIGN_IN_CODES:
        return NeedsSignIn(f"connection {connection!r} needs to sign in again: {detail}",
                           entry=entry or "R365-NEEDS-SIGN-IN", code=code)
    return AuthError(f"{during} for connection {connection!r} was refused: {detail}",
                     entry=entry or "R365-AUTH", code=code)


@contextmanager
def translate_exceptions(connection: str, host: str) -> Iterator[None]:
    """Map what MSAL and ``requests`` raise on the way to ``host`` to ``AuthError``s."""
    try:
        yield
    except requests.exceptions.SSLError as exc:
        raise AuthError(
            f"connection {connection!r}: the TLS certificate of {host} is not trusted; set the "
            "connection's ca_file to the CA that issued it (a TLS-inspecting proxy's CA, or "
            "m365sim's ca.pem)", entry="R365-CONFIG", code="TLS") from exc
    except requests.RequestException as exc:
        raise AuthUnavailable(
            f"connection {connection!r}: the identity platform at {host} could not be reached "
            f"({type(exc).__name__})", code=type(exc).__name__) from exc
    except MsalServiceError as exc:
        status = _HTTP_STATUS.search(str(exc))
        code = f"HTTP {status.group(1)}" if status else None
        raise AuthUnavailable(
            f"connection {connection!r}: the identity platform at {host} answered "
            f"{code or 'an error'}", code=code) from exc
    except ValueError as exc:
        # MSAL raises ValueError for an authority it cannot discover (4xx on the
        # openid-configuration: a wrong tenant) and for answers that are not JSON.
        if "authority configuration" in str(exc):
            raise AuthError(
                f"connection {connection!r}: the tenant's sign-in configuration could not be read "
                f"from {host}; check the connection's tenant", entry="AAD-TENANT-NOT-FOUND",
                code="AADSTS90002") from exc
        raise AuthUnavailable(
            f"connection {connection!r}: the identity platform at {host} gave an answer MSAL "
            "could not read", code=type(exc).__name__) from exc
