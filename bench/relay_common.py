"""What the relay365 benchmarks share: tools, m365sim, a relay365 config, `relay365 serve`,
a private Postfix instance, RSS readings and percentiles.

Everything runs in temporary directories and on ports chosen by the OS; every process
started here is stopped by the code that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

SENDER = "info@contoso.com"  # the seed's shared mailbox: the demo connection owns it
# Postfix ships these; Debian puts them in /usr/sbin, which a user's PATH may lack.
SBIN = ("/usr/sbin", "/usr/lib/postfix/sbin", "/sbin")
INSTALL_HINT = "apt-get install -y postfix wrk"


def env_without_ca_overrides() -> dict[str, str]:
    """The environment for child processes, without CA bundle overrides that would
    make httpx distrust m365sim's own CA."""
    return {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}


def find_tool(name: str) -> str | None:
    """The path of a command, looked up in PATH and in the sbin directories."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def tool(name: str) -> str:
    """The path of a command; exit with the package to install when it is missing."""
    found = find_tool(name)
    if found is None:
        sys.exit(f"bench: `{name}` is missing; the relay benchmarks need Postfix's tools: {INSTALL_HINT}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(rank) - 1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes (from /proc/PID/status)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The fields after "(comm)": comm may hold spaces and parentheses.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """CPU time (user + system) of a process; with ``children``, also of the children it
    reaped and of its live children (Postfix's master and its daemons)."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: children already reaped
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                child = _stat_fields(int(entry.name))
            except OSError:
                continue
            if int(child[1]) == pid:  # ppid
                ticks += sum(int(x) for x in child[11:15])
    return ticks / _TICK


def mib(n: float) -> float:
    return round(n / 2**20, 1)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- m365sim ---------------------------------------------------------------------------------

def scenario_toml(messages_per_minute: int = 100_000_000, concurrent_requests: int = 100_000) -> str:
    """The seed tenant with Microsoft's sending limits raised out of the way."""
    return f"""
extends = "seed"
name = "relay-bench"
[limits]
messages_per_minute = {messages_per_minute}
recipients_per_day = 100000000
concurrent_requests = {concurrent_requests}
messages_kept_per_mailbox = 100000
"""


@contextlib.contextmanager
def m365sim(workdir: Path) -> Iterator[SimpleNamespace]:
    """m365sim in a process of its own (so it does not share the benchmark's GIL), on the
    seed tenant with raised limits; yields what ``relay365.demo.demo_settings`` reads."""
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = workdir / "bench.toml"
    scenario.write_text(scenario_toml())
    proc = subprocess.Popen(
        [sys.executable, "-m", "m365sim.cli", "serve", "--scenario", str(scenario), "--state-dir",
         str(workdir / "state")], stdout=subprocess.PIPE, text=True, env=env_without_ca_overrides())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("m365sim did not start")
        ready = json.loads(line)
        yield SimpleNamespace(tenant_id=ready["tenant"], base_url=ready["authority_host"],
                              graph_url=ready["graph"], host=ready["smtp_host"],
                              smtp_port=ready["smtp_port"], ca_file=Path(ready["ca"]),
                              control_url=ready["control"], pid=proc.pid)
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def sim_client(sim: SimpleNamespace) -> httpx.Client:
    return httpx.Client(verify=ssl.create_default_context(cafile=str(sim.ca_file)), timeout=60)


# ---- relay365 ----------------------------------------------------------------------------------

def write_relay_config(sim: SimpleNamespace, workdir: Path, *, max_message_size: int | None = None,
                       messages_per_minute: int | None = None,
                       concurrent_requests: int | None = None) -> Path:
    """The demo's configuration (connection "demo", senders admin@ and info@contoso.com)
    against ``sim``, with SMTP and HTTP on ports the OS picks and the store in ``workdir``."""
    from relay365.config import settings_from_dict, write_settings
    from relay365.demo import demo_settings

    data = demo_settings(sim, workdir)
    data["relay"] = {"smtp": [{"host": "127.0.0.1", "port": 0}], "http_port": 0}
    if max_message_size is not None:
        data["relay"]["max_message_size"] = max_message_size
    conn = data["connections"][0]
    if messages_per_minute is not None:
        conn["messages_per_minute"] = messages_per_minute
    if concurrent_requests is not None:
        conn["concurrent_requests"] = concurrent_requests
    path = workdir / "relay365.toml"
    write_settings(settings_from_dict(data, env={}), path)
    return path


def sign_in(config: Path, sim: SimpleNamespace) -> None:
    """Sign the demo connection in through the authorization-code flow (m365sim's browser
    user consents by itself), as ``relay365 demo`` does."""
    from relay365 import Client
    from relay365.auth import sign_in_with_browser
    from relay365.demo import signed_in_browser

    async def main() -> None:
        async with Client(config) as client:
            await sign_in_with_browser(await client.connection("demo"),
                                       on_url=signed_in_browser(sim.ca_file), open_browser=False,
                                       timeout=60)

    asyncio.run(main())


@dataclass
class Relay:
    """A running ``relay365 serve``."""

    proc: subprocess.Popen[str]
    smtp_port: int
    http_url: str
    log: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def queue(self) -> dict[str, int]:
        """The outbox's counts per state, from ``/readyz``."""
        body = httpx.get(f"{self.http_url}/readyz", timeout=60).json()
        return {k: int(v) for k, v in body["queue"].items()}

    def waiting(self) -> int:
        """Messages kept and not yet sent (every state but sent and failed)."""
        q = self.queue()
        return sum(v for k, v in q.items() if k not in ("sent", "failed"))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def relay_serve(config: Path, workdir: Path) -> Iterator[Relay]:
    """``relay365 serve --config CONFIG`` until the block ends; its log goes to a file."""
    log = workdir / f"serve-{time.monotonic_ns()}.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "relay365", "serve", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                env=env_without_ca_overrides())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            proc.wait(timeout=30)
            raise RuntimeError(f"relay365 serve did not start: {line!r}\n{log.read_text()[-3000:]}")
        info = json.loads(line[len("READY "):])
        yield Relay(proc, int(info["smtp_port"]), info["http_url"], log, info)
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


# ---- Postfix -----------------------------------------------------------------------------------

POSTFIX_MAIN_CF = """\
# A private Postfix relay for the benchmark: its own config, queue and log, loopback only.
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.invalid
mydomain = invalid
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# Relay for 127.0.0.1 only, to any recipient; nothing is local.
mynetworks = 127.0.0.0/8
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject
# Queue, do not deliver: the smtp transport is deferred, and its relay host does not exist.
relayhost = [192.0.2.1]:25
defer_transports = smtp
# No DNS on the accept path (the client is 127.0.0.1).
smtpd_peername_lookup = no
biff = no
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
"""

QUEUE_DIRS = ("maildrop", "incoming", "active", "deferred", "hold")


class Postfix:
    """A private Postfix instance: ``postfix -c DIR start``, smtpd on 127.0.0.1:PORT."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.dir = workdir
        self.port = port
        self.etc = workdir / "etc"
        self.spool = workdir / "spool"
        self.postfix = tool("postfix")

    def start(self) -> None:
        if os.geteuid() != 0:
            sys.exit("bench: the Postfix reference runs `postfix start`, whose master runs as root: "
                     "run `make bench` as root (or pick other benchmarks: bench/run.py --help)")
        try:
            import pwd

            pwd.getpwnam("postfix")
        except KeyError:
            sys.exit(f"bench: there is no `postfix` user: install Postfix with {INSTALL_HINT}")
        self.dir.mkdir(parents=True, exist_ok=True)
        # Postfix's daemons run as the postfix user and must reach the queue: open up the
        # benchmark's own directories (0700 from mkdtemp), and check the ones above them.
        for d in (self.dir, self.dir.parent):
            d.chmod(d.stat().st_mode | 0o055)
        for d in self.dir.parent.parents:
            if d.stat().st_mode & 0o001 == 0:
                sys.exit(f"bench: the postfix user cannot reach {self.dir} ({d} is not searchable by "
                         "others): set TMPDIR to a directory it can reach, such as /tmp")
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        self.spool.mkdir(exist_ok=True)
        shutil.chown(self.dir / "data", "postfix")
        (self.etc / "main.cf").write_text(POSTFIX_MAIN_CF.format(dir=self.dir))
        (self.etc / "master.cf").write_text(self._master_cf())
        self._postfix("start")
        wait_for_port(self.port)

    def _master_cf(self) -> str:
        """Debian's master.cf without chroot (the queue is in a temp dir), its `smtp inet`
        service replaced by smtpd on 127.0.0.1:PORT."""
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if line[:1].isalnum() and len(fields) >= 8:
                if fields[1] == "inet":
                    continue
                fields[4] = "n"
                line = " ".join(fields)
            lines.append(line)
        lines.append(f"127.0.0.1:{self.port} inet n - n - - smtpd")
        return "\n".join(lines) + "\n"

    def _postfix(self, *args: str) -> None:
        # Postfix writes its errors to stderr only when it is a terminal: point at the log.
        done = subprocess.run([self.postfix, "-c", str(self.etc), *args], capture_output=True, text=True)
        if done.returncode != 0:
            log = self.dir / "maillog"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"postfix {' '.join(args)} failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}{tail}")

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._postfix("stop")

    def queued(self) -> int:
        """Messages in the queue: files in its queue directories (what postqueue -p lists)."""
        return sum(1 for d in QUEUE_DIRS for p in (self.spool / d).rglob("*") if p.is_file())

    def postqueue_count(self) -> int | None:
        """The count ``postqueue -c DIR -p`` reports (its last line), as a cross-check."""
        done = subprocess.run([tool("postqueue"), "-c", str(self.etc), "-p"], capture_output=True, text=True)
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        if "Mail queue is empty" in last:
            return 0
        words = last.split()
        return int(words[-2]) if len(words) >= 2 and words[-1].startswith("Request") else None

    def master_pid(self) -> int | None:
        pid_file = self.spool / "pid" / "master.pid"
        return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


@contextlib.contextmanager
def postfix_instance(workdir: Path) -> Iterator[Postfix]:
    pf = Postfix(workdir, free_port())
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()
