"""End-to-end latency: from the SMTP 250 at the client to the message in m365sim's mailbox.

``relay365 serve`` runs signed in (authorization-code flow, as ``relay365 demo``) against
m365sim on the seed tenant with Microsoft's limits raised (messages_per_minute,
concurrent_requests), and the connection's own ``messages_per_minute`` and
``concurrent_requests`` raised to match, so nothing is paced on purpose.  A paced client
(open loop: message i starts at i/rate seconds, a few threads so one slow session does
not delay the next) sends RATE messages/s of 10 KB for SECONDS seconds over SMTP, one
session per message, each with its own Subject.  Latency = the time m365sim stored the
delivered message (``DeliveredMessage.time``, taken as it answers Graph's 202) minus the
time the client read the 250 for its DATA; both clocks are this machine's wall clock.
"""

from __future__ import annotations

import email.policy
import os
import smtplib
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import relay_common as rc

RECIPIENT = "latency@example.net"
MESSAGE_BYTES = 10 * 1024


def message(i: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = rc.SENDER
    msg["To"] = RECIPIENT
    msg["Subject"] = f"relay365 latency {i:06d}"
    msg.set_content(("The quick brown fox jumps over the lazy dog. " * 240)[:MESSAGE_BYTES])
    return msg.as_bytes(policy=email.policy.SMTP)  # CRLF: bare LF is refused (smuggling)


def send_one(port: int, raw: bytes) -> tuple[float, float, str]:
    """(time the session started, time the 250 to DATA was read, the reply)."""
    started = time.time()
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp.ehlo("bench.invalid")
        smtp.mail(rc.SENDER)
        smtp.rcpt(RECIPIENT)
        code, reply = smtp.data(raw)
        accepted = time.time()
    if code != 250:
        raise RuntimeError(f"relay365 answered {code} {reply!r}")
    return started, accepted, reply.decode(errors="replace")


def run(rate: float, seconds: float) -> dict[str, Any]:
    count = int(rate * seconds)
    with tempfile.TemporaryDirectory(prefix="relay365-latency-") as tmp:
        work = Path(tmp)
        with rc.m365sim(work / "m365sim") as sim:
            config = rc.write_relay_config(sim, work / "relay", messages_per_minute=1_000_000,
                                           concurrent_requests=100)
            rc.sign_in(config, sim)
            bodies = [message(i) for i in range(count + 1)]
            with rc.relay_serve(config, work / "relay") as relay, rc.sim_client(sim) as control:
                send_one(relay.smtp_port, bodies[count])  # warm-up: first token use, first connections
                mailbox = f"{sim.control_url}/mailboxes/{RECIPIENT}/messages"
                wait_for(control, mailbox, 1, 30)
                control.delete(mailbox)
                accepted: dict[int, float] = {}
                sessions: list[float] = []
                lock = threading.Lock()

                def send(i: int) -> None:
                    started, at_250, _ = send_one(relay.smtp_port, bodies[i])
                    with lock:
                        accepted[i] = at_250
                        sessions.append(at_250 - started)

                start = time.monotonic() + 0.1
                lag = 0.0
                with ThreadPoolExecutor(max_workers=8) as pool:
                    futures = []
                    for i in range(count):
                        delay = start + i / rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                        else:
                            lag = max(lag, -delay)
                        futures.append(pool.submit(send, i))
                    for f in futures:
                        f.result()
                send_seconds = time.monotonic() - start
                delivered = wait_for(control, mailbox, count, 60)
                relay_status = rc.proc_status(relay.pid)
                queue = relay.queue()
    latencies = []
    for m in delivered:
        i = int(m["subject"].rsplit(" ", 1)[1])
        at = datetime.fromisoformat(m["time"].replace("Z", "+00:00")).timestamp()
        latencies.append(at - accepted[i])
    ms = [x * 1000 for x in latencies]
    session_ms = [x * 1000 for x in sessions]
    return {
        "benchmark": "end-to-end latency, SMTP 250 -> delivered in m365sim (Graph 202), 10 KB messages",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "loadavg_at_end": round(os.getloadavg()[0], 2)},
        "rate_per_s": rate, "seconds": seconds, "sent": count,
        "achieved_rate_per_s": round(count / send_seconds, 1),
        "max_client_lag_ms": round(lag * 1000, 1),
        "delivered": len(delivered),
        "latency_ms": {"p50": round(rc.percentile(ms, 50), 1), "p90": round(rc.percentile(ms, 90), 1),
                       "p99": round(rc.percentile(ms, 99), 1), "max": round(max(ms), 1),
                       "min": round(min(ms), 1)} if ms else None,
        "smtp_session_ms": {"p50": round(rc.percentile(session_ms, 50), 1),
                            "p99": round(rc.percentile(session_ms, 99), 1)},
        "relay365_rss_mib_after": rc.mib(relay_status["VmRSS"]),
        "queue_after": queue,
        "ok": len(delivered) == count,
    }


def wait_for(control: Any, mailbox: str, count: int, timeout: float) -> list[dict[str, Any]]:
    """The mailbox's messages once it holds ``count`` of them (or what it holds at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        messages: list[dict[str, Any]] = control.get(mailbox).json()["messages"]
        if len(messages) >= count or time.monotonic() > deadline:
            return messages
        time.sleep(0.25)
