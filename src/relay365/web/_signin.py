"""Sign in with Microsoft 365 from the page: the authorization-code flow with this page as
the callback, and the result page."""

from __future__ import annotations

ROUTES: list = []  # type: ignore[type-arg]


class SignIns:
    """Sign-ins started from the page and not yet come back."""
