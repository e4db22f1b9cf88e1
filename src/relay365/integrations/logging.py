"""``Relay365Handler``: log records by email through relay365, the counterpart of
``logging.handlers.SMTPHandler`` that neither blocks the caller nor floods a mailbox.

    import logging
    from relay365.integrations.logging import Relay365Handler

    handler = Relay365Handler("ops@example.org", sender="alerts@contoso.com",
                              max_mails=10, per=600)       # the local outbox (RELAY365_CONFIG)
    # or relay="smtp://127.0.0.1:2525", or relay="http://relay:8025" with api_key=...
    logging.getLogger().addHandler(handler)                 # level ERROR by default

    # dictConfig: {"class": "relay365.integrations.logging.Relay365Handler", "to": "ops@example.org"}

``emit`` only formats the record (in the caller's thread, so its arguments and traceback
are what they were) and puts it on a bounded queue; a background thread mails it.  At most
``max_mails`` mails leave in any ``per`` seconds: records past that are held and go out
together in one summary mail (counts by level and logger, the first ``summary_records`` of
them in full) as soon as the period allows another mail, and at ``close()`` (logging's
shutdown), so an error storm costs a handful of mails and loses nothing but repetition.
When the queue is full (``queue_size``), records are dropped and the summary counts them.
Records logged while the handler itself is mailing (the relay client's own logs) are never
mailed: no feedback loop.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import email.policy
import email.utils
import logging
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from ..errors import Relay365Error
from ._submitters import Submitter, submitter_for

__all__ = ["HandlerStats", "Relay365Handler"]

DEFAULT_FORMAT = ("%(asctime)s %(levelname)s %(name)s [pid %(process)d, %(threadName)s] "
                  "%(pathname)s:%(lineno)d\n\n%(message)s")
DEFAULT_SUBJECT = "{levelname} {name}: {message}"
_OWN_THREADS = ("relay365-mailer", "relay365-outbox", "relay365-store")
_SUBJECT_LENGTH = 150


@dataclass(frozen=True)
class _Item:
    """A record as it was when logged: what the mail needs, formatted in the caller's thread."""

    created: float
    levelname: str
    name: str
    subject: str
    text: str


@dataclass
class HandlerStats:
    """What the handler did with the records it was given."""

    mails: int = 0  # mails relay365 queued: single records and summaries
    summaries: int = 0  # of which summary mails
    held: int = 0  # records that went into a summary rather than a mail of their own
    dropped: int = 0  # records lost because the queue was full (counted in the next summary)
    failed: int = 0  # mails relay365 did not queue (the relay down or refusing)


@dataclass
class _Held:
    """Records waiting for the next summary mail."""

    first: float = 0.0
    last: float = 0.0
    count: int = 0
    dropped: int = 0
    by_level: collections.Counter[str] = field(default_factory=collections.Counter)
    by_logger: collections.Counter[str] = field(default_factory=collections.Counter)
    items: list[_Item] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.count or self.dropped)


class Relay365Handler(logging.Handler):
    """Mail log records through relay365, in the background, at most ``max_mails`` per ``per`` s."""

    def __init__(self, to: str | Sequence[str], *, sender: str | None = None, relay: str | None = None,
                 api_key: str | None = None, config: str | Path | None = None,
                 subject: str = DEFAULT_SUBJECT, level: int = logging.ERROR, max_mails: int = 10,
                 per: float = 600.0, summary_records: int = 20, queue_size: int = 1000,
                 submitter: Submitter | None = None) -> None:
        super().__init__(level)
        self.to = [to] if isinstance(to, str) else list(to)
        if not self.to:
            raise ValueError("Relay365Handler needs at least one recipient")
        if max_mails < 1 or per <= 0:
            raise ValueError("max_mails must be at least 1 and per more than 0 seconds")
        if relay is not None and relay.startswith("smtp") and not sender:
            raise ValueError("mailing through the SMTP relay needs sender= (an address relay365 sends as)")
        self.sender = sender
        self.subject = subject
        self.max_mails = max_mails
        self.per = per
        self.summary_records = summary_records
        self.stats = HandlerStats()
        self.setFormatter(logging.Formatter(DEFAULT_FORMAT))
        self._connect: Callable[[], Submitter] = (
            (lambda: submitter) if submitter is not None
            else (lambda: submitter_for(relay, api_key=api_key, config=config, client_label="logging")))
        self._submitter: Submitter | None = None
        self._queue: queue.Queue[_Item | None] = queue.Queue(queue_size)
        self._sent_at: collections.deque[float] = collections.deque()
        self._held = _Held()
        self._dropped = 0
        self._counts = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="relay365-mailer", daemon=True)
        self._worker.start()

    def __repr__(self) -> str:
        return f"<Relay365Handler to {', '.join(self.to)} ({logging.getLevelName(self.level)})>"

    # -- the caller's side: never blocks on the relay --------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName is not None and record.threadName.startswith(_OWN_THREADS):
            return  # the relay client logging while this handler mails: never mailed
        try:
            text = self.format(record)
            message = record.getMessage().strip()
            first = message.splitlines()[0] if message else ""
            subject = self.subject.format_map({**record.__dict__, "message": first})
            item = _Item(record.created, record.levelname, record.name, _one_line(subject), text)
        except Exception:
            self.handleError(record)
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._counts:
                self._dropped += 1

    def flush(self, timeout: float = 30.0) -> None:
        """Wait (at most ``timeout`` s) until every record handed in so far is mailed or held."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self, timeout: float = 30.0) -> None:
        """Mail what is queued and the summary of what was held, then stop the thread."""
        with self._counts:
            closed, self._closed = self._closed, True
        if not closed:
            self._queue.put(None)
            self._worker.join(timeout)
        super().close()

    # -- the mailer thread -------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self._until_next_slot())
                except queue.Empty:  # the period allows a mail again: the summary goes
                    self._send_summary(force=False)
                    continue
                try:
                    if item is None:
                        self._send_summary(force=True)
                        return
                    self._take(item)
                    self._send_summary(force=False)
                finally:
                    self._queue.task_done()
        finally:
            if self._submitter is not None:
                with contextlib.suppress(Relay365Error):
                    self._submitter.close()

    def _until_next_slot(self) -> float | None:
        """How long to wait for a record before a held summary may go out (None: no summary)."""
        with self._counts:
            waiting = bool(self._held) or self._dropped > 0
        if not waiting:
            return None
        self._forget_old(time.monotonic())
        if len(self._sent_at) < self.max_mails:
            return 0.0
        return max(0.0, self._sent_at[0] + self.per - time.monotonic()) + 0.001

    def _forget_old(self, now: float) -> None:
        while self._sent_at and self._sent_at[0] <= now - self.per:
            self._sent_at.popleft()

    def _slot(self) -> bool:
        now = time.monotonic()
        self._forget_old(now)
        return len(self._sent_at) < self.max_mails

    def _take(self, item: _Item) -> None:
        if not self._held and self._slot():
            self._mail(item.subject, item.text, records=1)
            return
        held = self._held
        held.first = held.first or item.created
        held.last = item.created
        held.count += 1
        held.by_level[item.levelname] += 1
        held.by_logger[item.name] += 1
        if len(held.items) < self.summary_records:
            held.items.append(item)
        self.stats.held += 1

    def _send_summary(self, *, force: bool) -> None:
        with self._counts:
            dropped, self._dropped = self._dropped, 0
        held = self._held
        held.dropped += dropped
        self.stats.dropped += dropped
        if not held or not (force or self._slot()):
            return
        self._held = _Held()
        self._mail(*_summary(held, self.max_mails, self.per), records=held.count)
        self.stats.summaries += 1

    def _mail(self, subject: str, text: str, *, records: int) -> None:
        message = EmailMessage()
        if self.sender:
            message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message["Subject"] = subject
        message["Date"] = email.utils.formatdate(localtime=True)
        message["Message-ID"] = email.utils.make_msgid(domain=(self.sender or "").rpartition("@")[2] or None)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to it
        message["X-Relay365-Records"] = str(records)
        message.set_content(text)
        self._sent_at.append(time.monotonic())  # an attempt uses the budget, even if it fails
        try:
            if self._submitter is None:
                self._submitter = self._connect()
            self._submitter.submit(message.as_bytes(policy=email.policy.SMTP), sender=self.sender,
                                   recipients=self.to)
        except Relay365Error as exc:
            self.stats.failed += 1
            sys.stderr.write(f"relay365 logging handler: a mail about {records} record(s) was not "
                             f"queued: {exc}\n")
            return
        self.stats.mails += 1


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _SUBJECT_LENGTH else line[:_SUBJECT_LENGTH - 1] + "…"


def _summary(held: _Held, max_mails: int, per: float) -> tuple[str, str]:
    def when(t: float) -> str:
        return dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")

    levels = ", ".join(f"{n} {level}" for level, n in held.by_level.most_common())
    subject = (f"{held.count} more log record(s) ({levels})" if held.count
               else f"{held.dropped} log record(s) dropped")
    lines = [f"Mail is limited to {max_mails} per {per:g} s on {socket.gethostname()}, so these "
             f"{held.count} record(s) come together in this summary."]
    if held.count:
        lines.append(f"First at {when(held.first)}, last at {when(held.last)}.")
    if held.dropped:
        lines.append(f"{held.dropped} more record(s) were dropped: the handler's queue was full.")
    if held.count:
        lines += ["", "By logger:"] + [f"  {n:6d}  {name}" for name, n in held.by_logger.most_common()]
        shown = len(held.items)
        lines += ["", f"The first {shown} in full:" if shown < held.count else "In full:"]
        for item in held.items:
            lines += ["", "-" * 72, item.text]
    return _one_line(subject), "\n".join(lines) + "\n"
