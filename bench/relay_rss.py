"""Memory: ``relay365 serve``'s resident set idle, with 100 and 100,000 queued messages, and
its peak while accepting one 100 MiB message over SMTP.

Queued messages (10 KB each) are written straight into the store with ``relay365.store``
(``Store.enqueue_many``, 1,000 per transaction) before ``serve`` starts, which is much
faster than SMTP and gives the same rows; each case starts ``serve`` fresh on a copy of
that store.  Each queue length is measured twice:

* **held**: the connection is configured for m365sim but not signed in.  The delivery
  engine claims a first batch, meets "needs sign-in" and holds the whole queue
  (``Store.defer_connection``), then waits: the queue stays the same length.
* **delivering**: signed in, the connection paced at its default 30 messages/minute on
  m365sim, so the engine works the queue off slowly while it is measured.

RSS is VmRSS from /proc/PID/status, sampled every 50 ms for a few seconds once the
engine has met the queue (and after a ``/readyz``, which counts it); the table shows the
largest sample, and VmHWM (the process's peak since it started).  Goal: flat whatever
the queue length.

The 100 MiB message goes to a fresh, held (not signed in) relay with
``relay.max_message_size`` raised to 200 MiB, through ``smtplib``; a small message first
makes the engine hold the connection, so the engine never reads the big body and the
peak (VmHWM after the 250) is the accept path's own.  Goal: under 3x the message size.
"""

from __future__ import annotations

import asyncio
import email.policy
import os
import shutil
import smtplib
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import relay_common as rc

RECIPIENT = "rss@example.net"
MESSAGE_BYTES = 10 * 1024
BIG_BYTES = 100 * 2**20
FILL_BATCH = 1000
SAMPLE_SECONDS = 3.0


def message(subject: str = "relay365 rss benchmark") -> bytes:
    msg = EmailMessage()
    msg["From"] = rc.SENDER
    msg["To"] = RECIPIENT
    msg["Subject"] = subject
    msg.set_content(("The quick brown fox jumps over the lazy dog. " * 240)[:MESSAGE_BYTES])
    return msg.as_bytes(policy=email.policy.SMTP)


def big_message(size: int) -> bytes:
    head = (f"From: {rc.SENDER}\r\nTo: {RECIPIENT}\r\nSubject: relay365 {size} byte message\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"  # 74 bytes
    return head + line * ((size - len(head)) // len(line))


def fill(config: Path, count: int) -> float:
    """Queue ``count`` 10 KB messages straight into the store; seconds taken."""
    from relay365.auth import SecretBox
    from relay365.config import load_settings
    from relay365.store import NewMessage, Store

    settings = load_settings(config)
    raw = message()

    async def main() -> None:
        store = await Store.open(settings.store_url, SecretBox.from_environment(settings.key_file))
        try:
            done = 0
            while done < count:
                n = min(FILL_BATCH, count - done)
                await store.enqueue_many([NewMessage("demo", rc.SENDER, (RECIPIENT,), raw, "smtp",
                                                     "[127.0.0.1]", "relay365 rss benchmark")] * n)
                done += n
        finally:
            await store.close()

    started = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - started


def sample(pid: int, seconds: float) -> int:
    """The largest VmRSS seen over ``seconds``."""
    top = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        top = max(top, rc.proc_status(pid)["VmRSS"])
        time.sleep(0.05)
    return top


def wait_until(check: Any, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def measure_queue(sim: SimpleNamespace, template: Path, work: Path, queued: int, mode: str) -> dict[str, Any]:
    """serve on a copy of ``template`` (a state dir with ``queued`` messages)."""
    case = work / f"{mode}-{queued}"
    shutil.copytree(template, case)
    config = rc.write_relay_config(sim, case)
    if mode == "delivering":
        rc.sign_in(config, sim)
    with rc.relay_serve(config, case) as relay:
        if mode == "held" and queued:
            wait_until(lambda: "needs sign-in" in relay.log_text())
        else:
            time.sleep(1.0)  # the engine's first claims
        rss = sample(relay.pid, SAMPLE_SECONDS / 2)
        queue = relay.queue()
        rss = max(rss, sample(relay.pid, SAMPLE_SECONDS / 2))
        status = rc.proc_status(relay.pid)
        end = relay.queue()
    return {"queued": queued, "mode": mode, "rss_mib": rc.mib(rss), "hwm_mib": rc.mib(status["VmHWM"]),
            "queue": queue, "queue_at_end": end,
            "queue_ok": sum(end.values()) == queued and (mode != "held" or end.get("sent", 0) == 0)}


def measure_big(sim: SimpleNamespace, work: Path, size: int) -> dict[str, Any]:
    case = work / "big"
    config = rc.write_relay_config(sim, case, max_message_size=2 * size)
    raw = big_message(size)
    with rc.relay_serve(config, case) as relay:
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=300) as smtp:
            smtp.sendmail(rc.SENDER, [RECIPIENT], message("hold the connection"))
        wait_until(lambda: "needs sign-in" in relay.log_text())
        before = rc.proc_status(relay.pid)
        peak = [0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rc.proc_status(relay.pid)["VmRSS"])
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=600) as smtp:
            smtp.ehlo("bench.invalid")
            smtp.mail(rc.SENDER)
            smtp.rcpt(RECIPIENT)
            code, reply = smtp.data(raw)
        seconds = time.perf_counter() - started
        after_250 = rc.proc_status(relay.pid)
        time.sleep(2.0)
        stop.set()
        watcher.join()
        settled = rc.proc_status(relay.pid)
        waiting = relay.waiting()
    return {
        "message_bytes": len(raw), "reply": f"{code} {reply.decode(errors='replace')}",
        "accept_seconds": round(seconds, 2),
        "rss_before_mib": rc.mib(before["VmRSS"]), "hwm_before_mib": rc.mib(before["VmHWM"]),
        "peak_mib": rc.mib(after_250["VmHWM"]), "sampled_peak_mib": rc.mib(peak[0]),
        "rss_2s_after_mib": rc.mib(settled["VmRSS"]),
        "peak_over_size": round(after_250["VmHWM"] / len(raw), 2),
        "growth_over_size": round((after_250["VmHWM"] - before["VmRSS"]) / len(raw), 2),
        "goal_peak_under_3x": after_250["VmHWM"] < 3 * len(raw),
        "queued": waiting == 2,
    }


def flatness(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat: RSS and peak (VmHWM) with the longest queue within 10% of the shortest queue's."""
    first = min(rows, key=lambda r: r["queued"])
    last = max(rows, key=lambda r: r["queued"])
    rss, peak = last["rss_mib"] - first["rss_mib"], last["hwm_mib"] - first["hwm_mib"]
    return {"shortest": first["queued"], "longest": last["queued"], "rss_growth_mib": round(rss, 1),
            "peak_growth_mib": round(peak, 1),
            "met": rss <= 0.1 * first["rss_mib"] and peak <= 0.1 * first["hwm_mib"]}


def run(lengths: list[int], big_bytes: int = BIG_BYTES, modes: tuple[str, ...] = ("held", "delivering")
        ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="relay365-rss-") as tmp:
        work = Path(tmp)
        with rc.m365sim(work / "m365sim") as sim:
            templates: dict[int, Path] = {}
            fills: dict[int, float] = {}
            for n in lengths:
                base = work / f"template-{n}"
                config = rc.write_relay_config(sim, base)
                fills[n] = round(fill(config, n), 1)
                templates[n] = base / "state"
                config.unlink()
            rows = []
            for mode in modes:
                for n in lengths:
                    row = measure_queue(sim, templates[n].parent, work, n, mode)
                    row["fill_seconds"] = fills[n]
                    rows.append(row)
            big = measure_big(sim, work, big_bytes) if big_bytes else None
    return {
        "benchmark": "relay365 serve RSS by queue length, and peak while accepting one large message",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "fill": "Store.enqueue_many straight into the store before serve starts, 10 KB messages",
        "queue_rows": rows,
        "flat": {mode: flatness([r for r in rows if r["mode"] == mode]) for mode in modes},
        "big_message": big,
    }
