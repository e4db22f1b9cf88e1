"""m365sim's own throughput: MIME sendMail of a 10 KB message over keep-alive HTTPS.

`wrk` (Debian package `wrk`) drives N concurrent keep-alive connections against
m365sim's `/v1.0/users/{mailbox}/sendMail` with an app-only token, then against a
bare uvicorn + TLS server answering 202 (the reference, same stack, same run).  Every
202 from m365sim must be a message delivered: the benchmark checks the count.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
from relay_common import free_port, wait_for_port

APP_ONLY = "22222222-aaaa-4bbb-8ccc-222222222222"
APP_ONLY_SECRET = "seed~AppOnly.Secret-abcdefghij0123456789"
SENDER = "info@contoso.com"
RECIPIENT = "bench@example.net"
SCENARIO = """
extends = "seed"
name = "bench"
[limits]
messages_per_minute = 100000000
recipients_per_day = 100000000
concurrent_requests = 100000
messages_kept_per_mailbox = 1000
"""


def message_10k() -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = RECIPIENT
    msg["Subject"] = "m365sim benchmark"
    msg.set_content(("The quick brown fox jumps over the lazy dog. " * 230)[:10_000])
    return msg.as_bytes()


def wrk(url: str, body_b64: bytes, headers: dict[str, str], connections: int, seconds: int,
        workdir: Path) -> dict[str, Any]:
    lua = workdir / "post.lua"
    body_file = workdir / "body.txt"
    body_file.write_bytes(body_b64)
    lines = ['wrk.method = "POST"', f'local f = io.open("{body_file}", "rb")',
             "wrk.body = f:read('*a')", "f:close()"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lua.write_text("\n".join(lines) + "\n")
    threads = min(2, connections)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(lua), url], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(\w+)", out)
    return {"requests": requests, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "rate": requests / seconds, "p50": f"{p50.group(1)}{p50.group(2)}" if p50 else "?",
            "raw": out}


def run(connections: list[int], seconds: int) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        sys.exit("bench needs wrk: apt-get install wrk")
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    with tempfile.TemporaryDirectory(prefix="m365sim-bench-") as tmp:
        work = Path(tmp)
        (work / "bench.toml").write_text(SCENARIO)
        port, ref_port = free_port(), free_port()
        sim = subprocess.Popen(
            [sys.executable, "-m", "m365sim.cli", "serve", "--scenario", str(work / "bench.toml"),
             "--port", str(port), "--state-dir", str(work / "state")],
            stdout=subprocess.PIPE, text=True, env=env)
        assert sim.stdout is not None
        ready = json.loads(sim.stdout.readline())
        ref = subprocess.Popen([sys.executable, str(Path(__file__).parent / "reference_app.py"),
                                str(ref_port), str(work / "state" / "server.pem"),
                                str(work / "state" / "server-key.pem")], env=env)
        try:
            wait_for_port(ref_port)
            ctx = ssl.create_default_context(cafile=ready["ca"])
            token = httpx.post(f"{ready['authority_host']}/{ready['tenant']}/oauth2/v2.0/token", data={
                "grant_type": "client_credentials", "client_id": APP_ONLY,
                "client_secret": APP_ONLY_SECRET, "scope": "https://graph.microsoft.com/.default",
            }, verify=ctx).json()["access_token"]
            body = base64.b64encode(message_10k())
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
            url = f"{ready['graph']}/users/{SENDER}/sendMail"
            rows = []
            for n in connections:
                before = httpx.get(ready["control"], verify=ctx).json()["delivered"]
                sim_result = wrk(url, body, headers, n, seconds, work)
                delivered = httpx.get(ready["control"], verify=ctx).json()["delivered"] - before
                ref_result = wrk(f"https://127.0.0.1:{ref_port}/v1.0/users/{SENDER}/sendMail", body,
                                 headers, n, seconds, work)
                accepted = sim_result["requests"] - sim_result["non_2xx"]
                rows.append({
                    "connections": n,
                    "m365sim_sendmail_per_s": round(sim_result["rate"], 1),
                    "m365sim_p50": sim_result["p50"],
                    "m365sim_non_2xx": sim_result["non_2xx"],
                    "delivered": delivered,
                    "accepted_202": accepted,
                    "reference_per_s": round(ref_result["rate"], 1),
                    "ratio_to_reference": round(sim_result["rate"] / ref_result["rate"], 3),
                })
                # wrk counts requests cut off at the deadline; allow those few.
                if not accepted - n <= delivered <= accepted + n:
                    raise RuntimeError(f"{accepted} answered 202 but {delivered} were delivered")
        finally:
            for proc in (sim, ref):
                proc.terminate()
                proc.wait(timeout=30)
            sim.stdout.close()
    return {"benchmark": "m365sim MIME sendMail, 10 KB, keep-alive HTTPS",
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "seconds_per_run": seconds, "rows": rows}
