"""Test email and doctor: send a real message through the outbox and watch it, run the doctor.

The test email goes the way an application's mail goes: the same policy as every way in
(``policy.prepare``), the outbox, the delivery engine.  So it shows in the log and
can be retried from there, and its result is what an application's message would get.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from ..catalogue import Entry, find_entry, lookup_entry
from ..diagnose import DoctorReport, config_failure, run_doctor
from ..errors import Relay365Error, StoreError
from ..policy import Client, Policy, Refusal
from ..policy import prepare as prepare_submission
from ..store import Attempt, MessageState, QueuedMessage
from ._site import Admin, action, page

# The result is shown on the page that sent the message: wait this long for an outcome.
POLL_EVERY = 0.2
WAIT_AT_MOST = 30.0
CLIENT_LABEL = "admin page"
DEFAULT_SUBJECT = "relay365 test email"
DEFAULT_BODY = ("This is a test email sent from relay365's admin page.\n\n"
                "If you can read this, applications on this machine can send through Microsoft 365.\n")
_DONE: dict[MessageState, Literal["sent", "failed", "deferred"]] = {
    MessageState.SENT: "sent", MessageState.FAILED: "failed", MessageState.DEFERRED: "deferred"}


@dataclass(frozen=True)
class TestEmailForm:
    """What the test email form holds (as typed, so a refused form comes back as it was)."""

    sender: str
    to: str
    subject: str
    body: str
    format: str

    @classmethod
    def initial(cls, admin: Admin) -> TestEmailForm:
        first = admin.settings.connections[0].sender if admin.settings.connections else None
        return cls(sender=first or "", to="", subject=DEFAULT_SUBJECT, body=DEFAULT_BODY, format="plain")

    @classmethod
    def from_form(cls, form: FormData) -> TestEmailForm:
        def text(name: str) -> str:
            value = form.get(name)
            return value if isinstance(value, str) else ""

        return cls(sender=text("from").strip(), to=text("to").strip(), subject=text("subject"),
                   body=text("body"), format=text("format") or "plain")


class _Invalid(Exception):
    """The form cannot be sent as it is: ``field`` is the input to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class TestEmailOutcome:
    """Where the test email stands when the page stops waiting."""

    queue_id: str
    state: Literal["sent", "failed", "deferred", "waiting"]
    message: QueuedMessage | None
    attempt: Attempt | None  # the last finished attempt
    entry: Entry | None  # the diagnosis of a failed or deferred attempt


def _recipients(text: str, policy: Policy) -> list[str]:
    if not text:
        raise _Invalid("to", "Give a recipient in To (one address, or several separated by commas).")
    pairs = email.utils.getaddresses([text])
    found = [addr for _, addr in pairs]
    if not found or any(not addr or policy.check_recipient(addr) is not None or " " in addr
                        for addr in found):
        raise _Invalid("to", f"To: {text!r} is not an email address (give name@domain, or several "
                             "separated by commas).")
    return found


def _build(admin: Admin, wanted: TestEmailForm) -> tuple[bytes, list[str]]:
    """The raw message (CRLF) and its recipients, or ``_Invalid``."""
    if not wanted.sender or admin.settings.connection_for_sender(wanted.sender) is None:
        raise _Invalid("from", f"From: {wanted.sender or '(none)'} is not a sender of any configured "
                               "connection; add it to a connection's senders on the Setup page.")
    policy = Policy(admin.settings)
    rcpts = _recipients(wanted.to, policy)
    if wanted.format not in ("plain", "html"):
        raise _Invalid("format", "Format: choose plain text or HTML.")
    msg = EmailMessage()
    try:
        msg["From"] = wanted.sender
        msg["To"] = ", ".join(rcpts)
        msg["Subject"] = wanted.subject
        msg.set_content(wanted.body, subtype="html" if wanted.format == "html" else "plain")
        raw = msg.as_bytes(policy=email.policy.SMTP)
    except (ValueError, TypeError) as exc:  # a CR or LF in a header: a crafted form, not a browser's
        raise _Invalid("subject", f"The message cannot be built: {exc}") from exc
    return raw, rcpts


async def _wait_for_outcome(admin: Admin, queue_id: str) -> TestEmailOutcome:
    """Poll the outbox until the message is sent, failed or deferred, or the wait is over."""
    deadline = time.monotonic() + WAIT_AT_MOST
    message: QueuedMessage | None = None
    try:
        while True:
            message = await admin.store.get_message(queue_id)
            if (message is not None and message.state in _DONE) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_EVERY)
        attempts = await admin.store.attempts(queue_id)
    except StoreError:  # the message is queued: only the look at it failed
        return TestEmailOutcome(queue_id, "waiting", message, None, None)
    last = attempts[-1] if attempts else None
    if message is None or message.state not in _DONE:
        return TestEmailOutcome(queue_id, "waiting", message, last, None)
    state = _DONE[message.state]
    entry = None
    if state != "sent":
        entry_id = (last.entry_id if last else None) or message.last_entry_id
        code = (last.code if last else None) or message.last_code
        detail = (last.detail if last else None) or message.last_detail
        entry = lookup_entry(entry_id) if entry_id else find_entry(code, detail)
        if entry is None:
            entry = lookup_entry("R365-DELIVERY")
    return TestEmailOutcome(queue_id, state, message, last, entry)


def _test_page(admin: Admin, request: Request, wanted: TestEmailForm, status_code: int = 200, *,
               error: str | None = None, error_field: str | None = None,
               outcome: TestEmailOutcome | None = None) -> Response:
    connections = [c for c in admin.settings.connections if c.senders]
    return admin.render(request, "test.html", status_code, form=wanted, connections=connections,
                        error=error, error_field=error_field, outcome=outcome)


async def test_email_page(admin: Admin, request: Request) -> Response:
    return _test_page(admin, request, TestEmailForm.initial(admin))


async def _send_test_email(admin: Admin, request: Request, form: FormData) -> Response:
    wanted = TestEmailForm.from_form(form)
    try:
        raw, rcpts = _build(admin, wanted)
    except _Invalid as invalid:
        return _test_page(admin, request, wanted, 400, error=invalid.message, error_field=invalid.field)
    decision = prepare_submission(Policy(admin.settings), raw, sender=wanted.sender, recipients=rcpts,
                       client=Client("local", CLIENT_LABEL), source="http", client_label=CLIENT_LABEL)
    if isinstance(decision, Refusal):
        return _test_page(admin, request, wanted, 400, error=f"{decision.message} {decision.fix}",
                          error_field="to" if decision.kind == "recipients" else "from")
    try:
        queue_id = await admin.enqueue(decision)
    except StoreError as exc:
        return _test_page(admin, request, wanted, 503,
                          error=f"The message was not queued: {exc.message}. Try again in a moment.")
    outcome = await _wait_for_outcome(admin, queue_id)
    return _test_page(admin, request, wanted, outcome=outcome)


send_test_email = action(_send_test_email)


# ---- doctor ---------------------------------------------------------------------------------------

async def doctor_page(admin: Admin, request: Request) -> Response:
    return admin.render(request, "doctor.html", connections=[c.name for c in admin.settings.connections],
                        chosen="", reports=[], error=None)


async def _run_doctor(admin: Admin, request: Request, form: FormData) -> Response:
    names = [c.name for c in admin.settings.connections]
    chosen = form.get("connection")
    chosen = chosen if isinstance(chosen, str) else ""
    if chosen and chosen not in names:
        return admin.render(request, "doctor.html", 400, connections=names, chosen="", reports=[],
                            error=f"There is no connection named {chosen!r}.")
    targets: list[str | None] = [chosen] if chosen else [*names] or [None]
    reports: list[DoctorReport] = []
    for name in targets:
        try:
            reports.append(await run_doctor(admin.settings, name))
        except Relay365Error as exc:  # the store or the secret key: the report says so
            reports.append(config_failure(exc, name))
    return admin.render(request, "doctor.html", connections=names, chosen=chosen, reports=reports,
                        error=None)


run_doctor_checks = action(_run_doctor)

ROUTES = [
    ("/test", page(test_email_page), ["GET"]),
    ("/test", send_test_email, ["POST"]),
    ("/doctor", page(doctor_page), ["GET"]),
    ("/doctor", run_doctor_checks, ["POST"]),
]
