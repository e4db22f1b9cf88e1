"""``m365sim serve``: run the emulator until SIGTERM or SIGINT.

When ready it prints one JSON line with its endpoints (``authority_host``, ``tenant``,
``graph``, ``smtp_host``, ``smtp_port``, ``ca``, ``control``) so that scripts and CI
jobs can start it in the background and read where it listens.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from ._scenario import ScenarioError, load_scenario, shipped_scenarios
from ._server import Simulator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="m365sim", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the emulator")
    serve.add_argument("--scenario", default="seed",
                       help=f"a shipped scenario ({', '.join(shipped_scenarios())}) or a .toml path")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="HTTPS port (default: chosen by the OS)")
    serve.add_argument("--smtp-port", type=int, default=0, help="SMTP port (default: chosen by the OS)")
    serve.add_argument("--state-dir", type=Path, default=None,
                       help="where the CA and signing key live (default: a temporary directory)")
    sub.add_parser("scenarios", help="list the shipped scenarios")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "scenarios":
        for name in shipped_scenarios():
            print(f"{name:26} {load_scenario(name).description}")
        return 0
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"m365sim: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        sim = Simulator(scenario, host=args.host, port=args.port, smtp_port=args.smtp_port,
                        state_dir=args.state_dir).start()
    except OSError as exc:
        print(f"m365sim: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(sim.ready_info()), flush=True)
    stop.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
