"""`make bench`: run the benchmarks, print a table, write bench/results/*.json.

Benchmarks (all by default; pick with --only):
  m365sim  m365sim's own sendMail throughput against a bare uvicorn reference (wrk)
  accept   relay365 serve's SMTP accept rate against Postfix in the same run (smtp-source)
  latency  end-to-end latency, SMTP 250 to delivered in m365sim (Graph 202)
  rss      relay365 serve's RSS by queue length, and its peak accepting a 100 MiB message

Needs `wrk`, and Postfix's `postfix` and `smtp-source`: apt-get install -y postfix wrk.
The Postfix reference starts a private Postfix instance, which needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import relay_common as rc

RESULTS = Path(__file__).parent / "results"
BENCHMARKS = ("m365sim", "accept", "latency", "rss")


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def write(name: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")


def preflight(selected: list[str]) -> None:
    """Fail at once, with what to install, rather than after minutes of other benchmarks."""
    needed = (["wrk"] if "m365sim" in selected else []) + (
        ["postfix", "smtp-source", "postqueue"] if "accept" in selected else [])
    missing = [name for name in needed if rc.find_tool(name) is None]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)}: {rc.INSTALL_HINT}")
    if "accept" in selected and os.geteuid() != 0:
        sys.exit("bench: the accept benchmark starts a private Postfix instance as its reference, and "
                 "Postfix's master runs as root: run `make bench` as root, or leave it out "
                 "(python bench/run.py --only m365sim,latency,rss)")


def run_m365sim(args: argparse.Namespace) -> bool:
    import m365sim_throughput

    result = m365sim_throughput.run(ints(args.connections), args.seconds)
    write("m365sim_throughput", result)
    print(f"\n== {result['benchmark']}")
    print(f"{'conns':>5} {'m365sim/s':>10} {'p50':>9} {'reference/s':>12} {'ratio':>6} {'delivered':>9}")
    for r in result["rows"]:
        print(f"{r['connections']:>5} {r['m365sim_sendmail_per_s']:>10} {r['m365sim_p50']:>9} "
              f"{r['reference_per_s']:>12} {r['ratio_to_reference']:>6} {r['delivered']:>9}")
    return True


def run_accept(args: argparse.Namespace) -> bool:
    import relay_accept

    sessions = ints(args.accept_sessions)
    counts = ints(args.accept_messages)
    if len(counts) == 1:
        counts *= len(sessions)
    if len(counts) != len(sessions):
        sys.exit("bench: --accept-messages needs one count, or one per --accept-sessions value")
    result = relay_accept.run(sessions, dict(zip(sessions, counts, strict=True)), args.accept_rounds)
    write("relay_accept", result)
    print(f"\n== {result['benchmark']}")
    print(f"   relay365: {result['relay365']}\n   Postfix: {result['postfix']}")
    print(f"   median of {args.accept_rounds} alternating rounds; ratio = relay365/Postfix "
          f"(1.0 = as fast as Postfix); CPU = all the server's processes")
    print(f"{'sessions':>8} {'messages':>8} {'relay365/s':>10} {'Postfix/s':>10} {'ratio':>6} "
          f"{'relay365 CPU ms/msg':>19} {'Postfix CPU ms/msg':>18} {'queue check':>11}")
    ok = True
    for r in result["rows"]:
        ok &= r["queue_ok"]
        print(f"{r['sessions']:>8} {r['messages']:>8} {r['relay365']['per_s']:>10} "
              f"{r['postfix']['per_s']:>10} {r['ratio_to_postfix']:>6} "
              f"{r['relay365']['cpu_ms_per_message']:>19} "
              f"{r['postfix']['cpu_ms_per_message']:>18} {'ok' if r['queue_ok'] else 'MISMATCH':>11}")
    return ok


def run_latency(args: argparse.Namespace) -> bool:
    import relay_latency

    result = relay_latency.run(args.latency_rate, args.latency_seconds)
    write("relay_latency", result)
    lat = result["latency_ms"] or {}
    print(f"\n== {result['benchmark']}")
    print(f"   {result['rate_per_s']} msg/s for {result['seconds']} s (achieved "
          f"{result['achieved_rate_per_s']}/s), signed in, limits raised")
    print(f"{'sent':>5} {'delivered':>9} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'SMTP session p50 ms':>19}")
    print(f"{result['sent']:>5} {result['delivered']:>9} {lat.get('p50', '-'):>7} {lat.get('p90', '-'):>7} "
          f"{lat.get('p99', '-'):>7} {lat.get('max', '-'):>7} {result['smtp_session_ms']['p50']:>19}")
    return bool(result["ok"])


def run_rss(args: argparse.Namespace) -> bool:
    import relay_rss

    result = relay_rss.run(ints(args.rss_queues), int(args.rss_big_mib * 2**20))
    write("relay_rss", result)
    print(f"\n== {result['benchmark']}")
    print(f"   queue filled by {result['fill']}; RSS = largest VmRSS sampled, peak = VmHWM")
    by = {(r["mode"], r["queued"]): r for r in result["queue_rows"]}
    lengths = sorted({r["queued"] for r in result["queue_rows"]})
    print(f"{'queued':>8} {'held RSS MiB':>12} {'held peak':>9} {'delivering RSS MiB':>18} "
          f"{'delivering peak':>15}")
    for n in lengths:
        held, deliv = by.get(("held", n)), by.get(("delivering", n))
        print(f"{n:>8} {held['rss_mib'] if held else '-':>12} {held['hwm_mib'] if held else '-':>9} "
              f"{deliv['rss_mib'] if deliv else '-':>18} {deliv['hwm_mib'] if deliv else '-':>15}")
    for mode, flat in result["flat"].items():
        print(f"   goal, flat RSS ({mode}): {'met' if flat['met'] else 'NOT met'}: "
              f"RSS {flat['rss_growth_mib']:+} MiB, peak {flat['peak_growth_mib']:+} MiB "
              f"from {flat['shortest']} to {flat['longest']} queued")
    big = result["big_message"]
    ok = all(r["queue_ok"] for r in result["queue_rows"])
    if big:
        ok &= big["queued"]
        print(f"   {big['message_bytes']:,} byte message: {big['reply'][:40]}, "
              f"accepted in {big['accept_seconds']} s; RSS {big['rss_before_mib']} MiB before, "
              f"peak {big['peak_mib']} MiB = {big['peak_over_size']}x the size "
              f"(+{big['growth_over_size']}x over the RSS before); goal under 3x: "
              f"{'met' if big['goal_peak_under_3x'] else 'NOT met'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated benchmarks to run, of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--seconds", type=int, default=10, help="m365sim: length of each wrk run")
    parser.add_argument("--connections", default="1,10,50", help="m365sim: concurrent connections to try")
    parser.add_argument("--accept-sessions", default="1,10", help="accept: concurrent SMTP sessions to try")
    parser.add_argument("--accept-messages", default="1000,2000",
                        help="accept: messages per run, one for all or one per session count")
    parser.add_argument("--accept-rounds", type=int, default=3, help="accept: alternating rounds (median)")
    parser.add_argument("--latency-rate", type=float, default=20, help="latency: messages per second")
    parser.add_argument("--latency-seconds", type=float, default=15, help="latency: seconds of sending")
    parser.add_argument("--rss-queues", default="0,100,100000", help="rss: queue lengths to measure")
    parser.add_argument("--rss-big-mib", type=float, default=100,
                        help="rss: size of the large message in MiB (0: skip it)")
    args = parser.parse_args()
    selected = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(selected) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; "
                     f"choose from {', '.join(BENCHMARKS)}")
    if args.accept_rounds < 1:
        parser.error("--accept-rounds must be 1 or more")
    preflight(selected)
    runners = {"m365sim": run_m365sim, "accept": run_accept, "latency": run_latency, "rss": run_rss}
    failed = [name for name in BENCHMARKS if name in selected and not runners[name](args)]
    if failed:
        print(f"\nbench: checks failed in {', '.join(failed)} (see above and bench/results/)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
