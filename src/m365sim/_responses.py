"""Microsoft's response shapes: identity-platform error JSON and Graph error JSON.

Handlers say *which* error (a key in ``data/*.toml``) and this module renders it the
way Microsoft does, headers included.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ._knowledge import graph_error, identity_error
from ._limits import retry_after_header

IDENTITY_HEADERS = {
    "Cache-Control": "no-store, no-cache",
    "Pragma": "no-cache",
    "Expires": "-1",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "x-ms-ests-server": "m365sim",
}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type="application/json; charset=utf-8",
        headers=headers,
    )


def aadsts_description(code: int, message: str, trace_id: str, correlation_id: str, now: datetime) -> str:
    stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
    return (f"AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}")


def identity_error_body(
    key: int | str, request: Request | None, now: datetime, **fmt: Any
) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of an AADSTS error at the token or devicecode endpoint."""
    e = identity_error(key)
    trace_id = str(uuid.uuid4())
    correlation_id = (request.headers.get("client-request-id") if request else None) or str(uuid.uuid4())
    body: dict[str, Any] = {
        "error": e.error,
        "error_description": aadsts_description(e.code, e.message.format(**fmt), trace_id,
                                                correlation_id, now),
        "error_codes": [e.code],
        "timestamp": now.strftime("%Y-%m-%d %H:%M:%SZ"),
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={e.code}",
    }
    if e.suberror:
        body["suberror"] = e.suberror
    return e.status, body


def identity_error_response(key: int | str, request: Request | None, now: datetime, **fmt: Any) -> Response:
    status, body = identity_error_body(key, request, now, **fmt)
    headers = dict(IDENTITY_HEADERS)
    headers["x-ms-request-id"] = body["trace_id"]
    return json_response(body, status, headers)


def graph_headers(request: Request | None) -> dict[str, str]:
    request_id = str(uuid.uuid4())
    client_request_id = (request.headers.get("client-request-id") if request else None) or request_id
    return {
        "request-id": request_id,
        "client-request-id": client_request_id,
        "x-ms-ags-diagnostic": '{"ServerInfo":{"DataCenter":"m365sim","Slice":"E","Ring":"1",'
                               '"ScaleUnit":"000","RoleInstance":"m365sim"}}',
        "Strict-Transport-Security": "max-age=31536000",
    }


def graph_error_response(
    key: str, request: Request | None, *, retry_after: float | None = None,
    fractional_retry_after: bool = False, **fmt: Any,
) -> Response:
    """A Graph error as Microsoft renders it (reference §4.4)."""
    e = graph_error(key)
    headers = graph_headers(request)
    inner: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": headers["request-id"],
        "client-request-id": headers["client-request-id"],
    }
    if e.status == 429:
        inner.update({"code": "429", "status": "429", "message": "Please retry after"})
    if retry_after is not None:
        headers["Retry-After"] = retry_after_header(retry_after, fractional_retry_after)
    if e.status == 401:
        headers["WWW-Authenticate"] = (
            'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
            'authorize", client_id="00000003-0000-0000-c000-000000000000"'
        )
    body = {"error": {"code": e.code, "message": e.message.format(**fmt), "innerError": inner}}
    return json_response(body, e.status, headers)
