"""The HTTP session MSAL talks through: a timeout, and a CA file that the environment cannot override.

``requests`` merges the environment into every request: when ``REQUESTS_CA_BUNDLE`` or
``CURL_CA_BUNDLE`` is set (it is on many servers and CI machines), it replaces the
session's ``verify=``, so a connection's ``ca_file`` would be silently ignored and every
token request would fail with "certificate verify failed".  The adapter below passes the
connection's CA file to every TLS handshake itself, which settles that, while proxies
(``HTTPS_PROXY``/``NO_PROXY``) still come from the environment, as an administrator
expects (``trust_env=False`` would have dropped them too).

MSAL's own default session has no timeout at all: a token endpoint that stops answering
would hold a worker thread forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

# (connect, read) seconds for one request to the identity platform.
TIMEOUT: tuple[float, float] = (10.0, 30.0)


class _IdentityAdapter(HTTPAdapter):
    def __init__(self, ca_file: Path | None, timeout: tuple[float, float]) -> None:
        # One retry of a dropped connection, as MSAL's own session does.
        super().__init__(max_retries=1)
        self._ca_file = str(ca_file) if ca_file is not None else None
        self._timeout = timeout

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        return super().send(request, stream=stream, timeout=timeout or self._timeout,
                            verify=self._ca_file or verify, cert=cert, proxies=proxies)


def identity_session(ca_file: Path | None, timeout: tuple[float, float] = TIMEOUT) -> requests.Session:
    """A session for MSAL: ``ca_file`` (when given) is the only trust, and requests time out."""
    session = requests.Session()
    if ca_file is not None:
        session.verify = str(ca_file)
    adapter = _IdentityAdapter(ca_file, timeout)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
