"""Accept rate: 10 KB messages over SMTP into relay365's outbox, against Postfix in the same run.

Postfix's ``smtp-source`` sends COUNT messages of 10 KB over 1 or 10 concurrent SMTP
sessions (a new session per message, as applications send: connect, EHLO, MAIL, RCPT,
DATA, QUIT) to

* ``relay365 serve``: SQLite outbox in a temp dir (WAL, synchronous=FULL, group commit,
  250 only after the commit), configured for m365sim's seed tenant but **not signed
  in**: its delivery engine meets "needs sign-in" once and holds the connection's mail,
  so the figure is the accept path alone (SMTP, policy, commit), not Graph deliveries
  competing for the same CPUs; and
* the reference, **Postfix** on the same machine in the same run: a private instance
  (``postfix -c DIR start``, its own config and queue in a temp dir) relaying for
  127.0.0.1 to any recipient, with ``defer_transports = smtp`` and an unreachable relay
  host, so it queues and does not deliver.  Its cleanup daemon fsyncs each queue file
  before smtpd answers 250: the same promise as relay365's commit.

Both run side by side, relay365 first then Postfix for each session count, each after a
short warm-up.  After every run the queue must hold exactly the messages sent
(relay365: ``/readyz``; Postfix: files in its queue directories, cross-checked with
``postqueue -p``), otherwise the run is marked failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import relay_common as rc

RECIPIENT = "bench@example.net"
MESSAGE_BYTES = 10 * 1024
WARM_UP = 20


def smtp_source(port: int, sessions: int, count: int, size: int = MESSAGE_BYTES) -> float:
    """Send ``count`` messages of ``size`` bytes over ``sessions`` parallel sessions; seconds taken."""
    cmd = [rc.tool("smtp-source"), "-s", str(sessions), "-m", str(count), "-l", str(size),
           "-f", rc.SENDER, "-t", RECIPIENT, "-S", "relay365 accept benchmark", f"127.0.0.1:{port}"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({done.returncode}): {done.stdout}{done.stderr}")
    return seconds


def settle(read: Any, expected: int, timeout: float = 30) -> int:
    """Read a queue count until it reaches ``expected`` and holds still; the last reading."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = read()
        if now == last and now >= expected:
            return int(now)
        last = now
    return int(last)


def timed(port: int, sessions: int, count: int, cpu: Any, queued: Any) -> dict[str, Any]:
    """One smtp-source run against a server: rate, CPU per message, and the queue check."""
    before, cpu_before = queued(), cpu()
    seconds = smtp_source(port, sessions, count)
    cpu_used = cpu() - cpu_before
    grew = settle(queued, before + count) - before
    return {"seconds": round(seconds, 3), "per_s": round(count / seconds, 1),
            "cpu_ms_per_message": round(cpu_used * 1000 / count, 3), "queued": grew}


def run(sessions: list[int], messages: dict[int, int], rounds: int = 3) -> dict[str, Any]:
    rc.tool("smtp-source")
    rc.tool("postfix")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="relay365-accept-") as tmp:
        work = Path(tmp)
        with rc.m365sim(work / "m365sim") as sim, rc.postfix_instance(work / "postfix") as pf:
            config = rc.write_relay_config(sim, work / "relay")
            master = pf.master_pid()
            assert master is not None, "Postfix's master wrote no pid file"
            with rc.relay_serve(config, work / "relay") as relay:
                # Warm-up: imports, first connections; relay365's engine meets "needs sign-in"
                # and holds the connection's mail from then on.
                smtp_source(relay.smtp_port, 1, WARM_UP)
                smtp_source(pf.port, 1, WARM_UP)
                settle(relay.waiting, WARM_UP)
                settle(pf.queued, WARM_UP)
                for n in sessions:
                    count = messages[n]
                    runs: dict[str, list[dict[str, Any]]] = {"relay365": [], "postfix": []}
                    # Rounds alternate relay365 and Postfix, so a busy moment of the machine
                    # falls on both; the median round is reported.
                    relay_cpu = lambda: rc.cpu_seconds(relay.pid)  # noqa: E731
                    postfix_cpu = lambda: rc.cpu_seconds(master, children=True)  # noqa: E731
                    for _ in range(rounds):
                        runs["relay365"].append(timed(relay.smtp_port, n, count, relay_cpu, relay.waiting))
                        runs["postfix"].append(timed(pf.port, n, count, postfix_cpu, pf.queued))
                    row: dict[str, Any] = {"sessions": n, "messages": count, "rounds": rounds,
                                           "message_bytes": MESSAGE_BYTES}
                    for name, results in runs.items():
                        rates = sorted(r["per_s"] for r in results)
                        cpu = sorted(r["cpu_ms_per_message"] for r in results)
                        row[name] = {"per_s": rates[len(rates) // 2],
                                     "per_s_rounds": [r["per_s"] for r in results],
                                     "cpu_ms_per_message": cpu[len(cpu) // 2],
                                     "queued_rounds": [r["queued"] for r in results]}
                    status = rc.proc_status(relay.pid)
                    row["relay365"].update(queue=relay.queue(), rss_mib=rc.mib(status["VmRSS"]),
                                           hwm_mib=rc.mib(status["VmHWM"]))
                    row["postfix"].update(queue_files=pf.queued(), postqueue_p=pf.postqueue_count())
                    row["ratio_to_postfix"] = round(row["relay365"]["per_s"] / row["postfix"]["per_s"], 3)
                    every = [x["queued"] for results in runs.values() for x in results]
                    row["queue_ok"] = (all(q == count for q in every)
                                       and row["postfix"]["queue_files"] == row["postfix"]["postqueue_p"])
                    rows.append(row)
                held = "needs sign-in" in relay.log_text()
    return {
        "benchmark": "SMTP accept rate, 10 KB messages, smtp-source, relay365 serve vs Postfix (same run)",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "loadavg_at_end": round(os.getloadavg()[0], 2)},
        "relay365": "SQLite outbox (WAL, synchronous=FULL, group commit); connection not signed in, "
                    "so delivery holds the mail" + ("" if held else " (NOT confirmed from its log)"),
        "postfix": "private instance, defer_transports = smtp, fsync before 250",
        "rows": rows,
    }
