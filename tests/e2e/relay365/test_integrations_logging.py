"""The logging handler: records mailed in the background, rate limited, summaries of the rest.

The limiter and the queue are tested with a recording submitter; the mail itself end to end,
through a running relay (its SMTP port, and its outbox) to m365sim.
"""

from __future__ import annotations

import email
import email.policy
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from email.message import EmailMessage
from pathlib import Path

import pytest

from relay365.integrations import NotQueued
from relay365.integrations.logging import Relay365Handler
from tests.e2e.relay365.integrations_helpers import SHARED, RunningRelay, running_relay


class Recorder:
    """A submitter that keeps what it was given; ``gate`` holds every submit until set."""

    def __init__(self, *, fail: bool = False) -> None:
        self.mails: list[EmailMessage] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = fail
        self.closed = False

    def submit(self, raw: bytes, *, sender: str | None, recipients: Sequence[str]) -> str:
        self.gate.wait(30)
        if self.fail:
            raise NotQueued("the relay is down", fix="start it", temporary=True)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.mails.append(parsed)
        return f"Q{len(self.mails)}"

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger(f"app.test{time.monotonic_ns()}")
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def test_an_error_record_is_mailed_with_its_traceback(logger: logging.Logger) -> None:
    recorder = Recorder()
    handler = Relay365Handler("ops@example.org", sender=SHARED, submitter=recorder)
    logger.addHandler(handler)
    logger.warning("below the handler's level")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logger.exception("payment %s failed", "P-42")
    handler.close()
    [mail] = recorder.mails
    assert mail["Subject"] == f"ERROR {logger.name}: payment P-42 failed"
    assert mail["From"] == SHARED and mail["To"] == "ops@example.org"
    assert mail["Auto-Submitted"] == "auto-generated" and mail["X-Relay365-Records"] == "1"
    body = mail.get_content()
    assert "payment P-42 failed" in body and "ZeroDivisionError" in body and "Traceback" in body
    assert recorder.closed and handler.stats.mails == 1


def test_emit_does_not_wait_for_the_relay(logger: logging.Logger) -> None:
    recorder = Recorder()
    recorder.gate.clear()  # the relay hangs
    handler = Relay365Handler("ops@example.org", submitter=recorder, max_mails=1000, per=60)
    logger.addHandler(handler)
    for i in range(200):
        logger.error("record %d", i)
    # Every emit returned while the relay hung: none waited for a submit (which holds 30 s),
    # however long the machine took for them.
    assert recorder.mails == []
    recorder.gate.set()
    handler.flush()
    assert len(recorder.mails) == 200


def test_past_the_limit_records_come_in_one_summary(logger: logging.Logger) -> None:
    recorder = Recorder()
    handler = Relay365Handler("ops@example.org", submitter=recorder, max_mails=3, per=3600,
                              summary_records=5)
    logger.addHandler(handler)
    for i in range(50):
        logger.error("storm %d", i)
    logger.critical("the last straw")
    handler.flush()
    assert [m["Subject"] for m in recorder.mails] == [f"ERROR {logger.name}: storm {i}" for i in range(3)]
    assert handler.stats.held == 48
    handler.close()  # the summary goes at close even though the hour's three mails are spent
    assert len(recorder.mails) == 4
    summary = recorder.mails[-1]
    assert summary["Subject"] == "48 more log record(s) (47 ERROR, 1 CRITICAL)"
    assert summary["X-Relay365-Records"] == "48"
    body = summary.get_content()
    assert "limited to 3 per 3600 s" in body and f"    48  {logger.name}" in body
    assert "The first 5 in full:" in body and "storm 3" in body and "storm 7" in body
    assert "storm 8" not in body
    assert handler.stats.mails == 4 and handler.stats.summaries == 1


def test_the_summary_goes_as_soon_as_the_period_allows(logger: logging.Logger) -> None:
    recorder = Recorder()
    handler = Relay365Handler("ops@example.org", submitter=recorder, max_mails=2, per=1.0)
    logger.addHandler(handler)
    started = time.monotonic()
    for i in range(6):
        logger.error("burst %d", i)
    wait_for(lambda: len(recorder.mails) == 3)
    assert recorder.mails[2]["Subject"] == "4 more log record(s) (4 ERROR)"
    assert time.monotonic() - started >= 1.0  # not before the period allowed a third mail
    time.sleep(1.1)  # a whole period later: the budget is back
    logger.error("after the storm")  # nothing held: a mail of its own
    wait_for(lambda: len(recorder.mails) == 4)
    assert recorder.mails[3]["Subject"] == f"ERROR {logger.name}: after the storm"


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_a_full_queue_drops_and_counts(logger: logging.Logger) -> None:
    recorder = Recorder()
    recorder.gate.clear()
    handler = Relay365Handler("ops@example.org", submitter=recorder, queue_size=5, max_mails=100)
    logger.addHandler(handler)
    for i in range(30):
        logger.error("flood %d", i)
    recorder.gate.set()
    handler.close()
    dropped = handler.stats.dropped
    assert dropped >= 20 and len(recorder.mails) == 30 - dropped + 1
    [summary] = [m for m in recorder.mails if m["Subject"] == f"{dropped} log record(s) dropped"]
    assert f"{dropped} more record(s) were dropped: the handler's queue was full" in summary.get_content()


def test_records_logged_while_mailing_are_not_mailed(logger: logging.Logger) -> None:
    class Chatty(Recorder):
        def submit(self, raw: bytes, *, sender: str | None, recipients: Sequence[str]) -> str:
            logger.error("the relay client complains while mailing")  # would loop for ever
            return super().submit(raw, sender=sender, recipients=recipients)

    recorder = Chatty()
    handler = Relay365Handler("ops@example.org", submitter=recorder)
    logger.addHandler(handler)
    logger.error("the one record")
    handler.close()
    assert [m["Subject"] for m in recorder.mails] == [f"ERROR {logger.name}: the one record"]


def test_failures_go_to_stderr_and_are_counted(logger: logging.Logger,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    recorder = Recorder(fail=True)
    handler = Relay365Handler("ops@example.org", submitter=recorder)
    logger.addHandler(handler)
    logger.error("nobody will read this")
    handler.close()
    assert handler.stats.failed == 1 and handler.stats.mails == 0
    assert "was not queued: the relay is down" in capsys.readouterr().err


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="needs sender="):
        Relay365Handler("ops@example.org", relay="smtp://127.0.0.1:2525")
    with pytest.raises(ValueError, match="recipient"):
        Relay365Handler([])


# On one xdist worker (--dist loadgroup), so the module's relay starts once.
pytestmark = pytest.mark.xdist_group("logging")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, m365sim_state_dir: Path) -> Iterator[RunningRelay]:
    with running_relay(tmp_path_factory.mktemp("logging"), m365sim_state_dir) as running:
        yield running


@pytest.mark.parametrize("way", ["smtp", "outbox", "http"])
def test_delivered_through_the_relay_and_limited(running: RunningRelay, logger: logging.Logger,
                                                 way: str) -> None:
    relay = {"smtp": f"smtp://127.0.0.1:{running.smtp_port}", "outbox": None, "http": running.http_url}[way]
    to = f"ops-{way}@example.org"
    handler = Relay365Handler(to, sender=SHARED, relay=relay, config=running.config, max_mails=2,
                              per=3600)
    logger.addHandler(handler)
    try:
        raise RuntimeError("the database went away")
    except RuntimeError:
        logger.exception("checkout failed for order %d", 7)
    for i in range(9):
        logger.error("retry %d failed", i)
    handler.close()
    assert handler.stats.mails == 3 and handler.stats.held == 8 and handler.stats.failed == 0
    first = running.delivered(to, f"ERROR {logger.name}: checkout failed for order 7").parsed()
    assert first["From"] == SHARED
    assert "RuntimeError: the database went away" in first.get_content()
    running.delivered(to, f"ERROR {logger.name}: retry 0 failed")
    summary = running.delivered(to, "8 more log record(s) (8 ERROR)").parsed()
    assert "retry 8 failed" in summary.get_content()
    time.sleep(0.5)
    assert len(running.subjects(to)) == 3  # and nothing more
