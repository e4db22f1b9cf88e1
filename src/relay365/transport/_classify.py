"""Microsoft's answers, and the network's failures, as relay365 errors: once, at the edge.

Which class an answer gets is a small table of HTTP statuses and SMTP reply classes
(retry 408/429/5xx and SMTP 4xx; anything else is permanent), widened by the catalogue:
an entry of kind ``transient`` (a daily quota, an expired token) is retried whatever
its status.  Which diagnosis it gets is data: ``find_entry`` looks the Graph error code,
the inner codes, the message or the SMTP reply up in ``catalogue/catalogue.toml``.

Messages say what was being sent (step, size, sender) and what Microsoft answered;
they never contain a token or an upload URL (whose query string is a credential).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ..catalogue import Entry, find_entry, lookup_entry
from ..errors import DeliveryError, PermanentError, TransientError

# Retried whatever the body says (reference §4.5, §6.2); every 5xx is retried too.
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
# The diagnosis when the body names nothing the catalogue knows.
_STATUS_ENTRIES = {401: "M365-TOKEN-INVALID", 413: "M365-TOO-LARGE", 429: "M365-THROTTLED"}
_ENHANCED_STATUS = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?!\S)")
_SECRETS = re.compile(r"(authtoken=|Bearer\s+)[^\s&'\"]+", re.IGNORECASE)
_MAX_DETAIL = 500


@dataclass(frozen=True)
class Attempt:
    """What was being done when a failure happened, for the error's message."""

    service: str  # "Microsoft Graph" or "Exchange Online SMTP"
    sender: str
    size: int
    step: str = "send"

    def at(self, step: str) -> Attempt:
        return replace(self, step=step)

    def describe(self) -> str:
        return f"{self.step} of a {self.size}-byte message from {self.sender}"


def scrub(text: str) -> str:
    """``text`` without credentials that might have slipped into it, shortened."""
    text = _SECRETS.sub(lambda m: m.group(1) + "[redacted]", text)
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _graph_error_body(response: httpx.Response) -> tuple[str | None, str, list[str], str | None]:
    """(code, message, inner codes, inner request-id) of a Graph error body."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        # A gateway's HTML page or an empty body: the status says it all.
        return None, response.reason_phrase, [], None
    code = error.get("code") if isinstance(error.get("code"), str) else None
    message = str(error.get("message") or response.reason_phrase)
    inner_codes: list[str] = []
    request_id: str | None = None
    inner = error.get("innerError") or error.get("innererror")
    while isinstance(inner, dict):  # "match the innermost code you know" (reference §4.4)
        request_id = request_id or inner.get("request-id")
        if isinstance(inner.get("code"), str):
            inner_codes.append(inner["code"])
        inner = inner.get("innerError") or inner.get("innererror")
    return code, message, inner_codes, request_id


def _decide(transient: bool, entry: Entry | None) -> bool:
    return transient or (entry is not None and entry.kind == "transient")


def graph_failure(response: httpx.Response, attempt: Attempt, *, now: float | None = None
                  ) -> DeliveryError:
    """The relay365 error for a Graph (or upload URL) answer that is not a success."""
    status = response.status_code
    code, message, inner_codes, inner_request_id = _graph_error_body(response)
    request_id = response.headers.get("request-id") or inner_request_id
    entry = find_entry(code, *inner_codes, message)
    fallback = _STATUS_ENTRIES.get(status)
    if entry is None and fallback is not None:
        entry = lookup_entry(fallback)
    text = (f"{attempt.service} answered {status} {code or response.reason_phrase} to the "
            f"{attempt.describe()}: {scrub(message)}")
    kwargs: dict[str, Any] = {"entry": entry, "code": code, "status": status,
                              "request_id": request_id}
    if _decide(status >= 500 or status in _TRANSIENT_STATUSES, entry):
        retry_after = parse_retry_after(response.headers.get("retry-after"), now)
        return TransientError(text, retry_after=retry_after, **kwargs)
    return PermanentError(text, **kwargs)


def smtp_failure(code: int, message: str, attempt: Attempt) -> DeliveryError:
    """The relay365 error for an SMTP reply that is not a success (``code`` and its text)."""
    text = " ".join(message.split())
    enhanced = _ENHANCED_STATUS.match(text)
    reply = f"{code} {enhanced.group(1)}" if enhanced else str(code)
    entry = find_entry(reply, f"{code} {text}")
    detail = f"{attempt.service} answered to the {attempt.describe()}: {scrub(f'{code} {text}')}"
    transient = not 500 <= code < 600  # 4xx, and odd codes from a broken dialogue
    if _decide(transient, entry):
        return TransientError(detail, entry=entry, code=reply)
    return PermanentError(detail, entry=entry, code=reply)


def unreachable(exc: BaseException, attempt: Attempt) -> TransientError:
    """A network failure (refused, reset, timed out, TLS) while talking to ``attempt.service``."""
    timed_out = isinstance(exc, httpx.TimeoutException | TimeoutError)
    what = "did not answer in time" if timed_out else "could not be reached"
    detail = scrub(str(exc)) or "no detail"
    return TransientError(f"{attempt.service} {what} during the {attempt.describe()}: "
                          f"{type(exc).__name__}: {detail}", entry="R365-TRANSIENT")
