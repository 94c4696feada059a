"""bench/run's driver: runs the workloads, prints the table, writes results.md and the chart."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_HOME, REPO, Ctx, Row, log  # noqa: E402
import report  # noqa: E402

# Workload modules, in the order of the table: each has `run(ctx) -> list[Row]`.
# Uploads last: after writing several GiB the machine stays slower for a while (a spawn and
# wait of `true` took 1.37 ms right after them, 0.88 ms on its own), so they would skew what
# follows them.
WORKLOADS = ["http", "tcp", "exec", "load", "idle", "term", "upload"]


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="smoke mode: small sizes, one run each; figures are not meaningful")
    ap.add_argument("--runs", type=int, default=None, help="runs per figure (default 3, quick 1)")
    ap.add_argument("--only", default="", help=f"comma-separated workloads of {','.join(WORKLOADS)}")
    ap.add_argument("--ferry", default=str(REPO / "target" / "release" / "ferry"),
                    help="the ferry binary to measure")
    ap.add_argument("--out", default=str(REPO / "bench"),
                    help="where results.md and results.png go (quick mode: nowhere unless given)")
    args = ap.parse_args()
    only = {w for w in args.only.split(",") if w}
    unknown = only - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    work = BENCH_HOME / "work"
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(quick=args.quick, runs=args.runs or (1 if args.quick else 3), work=work,
              ferry_bin=Path(args.ferry), only=only)
    started = time.time()
    rows: list[Row] = []
    failed: list[str] = []
    for name in WORKLOADS:
        if only and name not in only:
            continue
        log(f"workload {name}")
        try:
            mod = importlib.import_module(f"w_{name}")
            rows += mod.run(ctx)
        except Exception:  # one broken workload must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        # The files a workload wrote go to disk now, not during the next one's measurements.
        os.sync()
    minutes = (time.time() - started) / 60
    print(report.table(rows))
    machine = report.machine()
    if not args.quick or "--out" in sys.argv:
        out = Path(args.out)
        report.write_markdown(rows, out / "results.md", machine, ctx, minutes)
        report.chart(rows, out / "results.png", machine)
        log(f"wrote {out / 'results.md'} and {out / 'results.png'}")
    if failed:
        log(f"workloads that failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
