"""`make bench`: run the benchmarks, print a table, write bench/results/*.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import m365sim_throughput

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--connections", default="1,10,50", help="concurrent connections to try")
    args = parser.parse_args()
    result = m365sim_throughput.run([int(c) for c in args.connections.split(",")], args.seconds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "m365sim_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print(result["benchmark"])
    header = f"{'conns':>5} {'m365sim/s':>10} {'p50':>9} {'reference/s':>12} {'ratio':>6} {'delivered':>9}"
    print(header)
    for r in result["rows"]:
        print(f"{r['connections']:>5} {r['m365sim_sendmail_per_s']:>10} {r['m365sim_p50']:>9} "
              f"{r['reference_per_s']:>12} {r['ratio_to_reference']:>6} {r['delivered']:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
