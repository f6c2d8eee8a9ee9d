"""``python3 -m bench.alerts [--arcs 100000] [--records 1000000] [--quick]``: does evaluating alert rules
inside the collector slow ingest?

A database is filled with ``--arcs`` ARCs of 10 KAPIs and 3 dimensions (the report bench's data) so
that each evaluation has real work: the default rules (PSI of every KAPI, the last 24 h against the 7
days before) read and compute the whole class. Then the same ``--records`` records are sent twice to a
collector on a copy of that database, keeping chunks in flight and waiting for every ack: once without
evaluation, once evaluating every ``--every`` seconds (far more often than the 5 minutes one would
use). It prints the acked records per second of both runs and how many evaluations ran meanwhile.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

from bench.bench_collector import make_frames, send_all
from bench.report_data import append_records, merge, wide_scenario
from mona_collector.alerts.rules import load_alert_config
from mona_collector.alerts.runner import check
from mona_collector.service import Collector


def _copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.parent.iterdir():
        if path.name.startswith(source.name):
            shutil.copy(path, target / path.name)
    return target / source.name


def _ingest(db_path: Path, records: int, repeat: int, every: Optional[float]) -> Dict[str, float]:
    """Send the records ``repeat`` times (the repeats are resends the merger drops: ingest is what is timed)."""
    frames = make_frames(records, 1000, 3)
    with Collector(port=0, db_path=db_path, synchronous="NORMAL", evaluate_every=every) as collector:
        seconds = sum(send_all(collector.port, frames, 8) for _ in range(repeat))
        evaluations = collector.alerts.evaluations if collector.alerts is not None else 0
    return {"rate": records * repeat / seconds, "seconds": seconds, "evaluations": float(evaluations)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.alerts", description=__doc__)
    parser.add_argument("--arcs", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=4, help="send the records this many times (default: 4)")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between evaluations (default: 1)")
    parser.add_argument("--quick", action="store_true", help="10,000 ARCs and 30,000 records")
    args = parser.parse_args(argv)
    logging.getLogger("mona_collector").setLevel(logging.ERROR)  # the alerts that open are not the point
    if args.quick:
        args.arcs, args.records, args.repeat = 10_000, 30_000, 1
    with tempfile.TemporaryDirectory(prefix="mona-bench-alerts-") as folder:
        base = Path(folder) / "base" / "arcs.db"
        base.parent.mkdir()
        append_records(base, wide_scenario(args.arcs, time.time()))
        merge(base)
        started = time.perf_counter()
        check(base, load_alert_config(None))
        one = time.perf_counter() - started
        quiet = _ingest(_copy(base, Path(folder) / "off"), args.records, args.repeat, None)
        busy = _ingest(_copy(base, Path(folder) / "on"), args.records, args.repeat, args.every)
    print(f"one evaluation of the default rules over {args.arcs:,} ARCs: {one:.2f} s")
    print(f"{'ingest':<34} {'records/s':>10} {'seconds':>8} {'evaluations':>12}")
    print(f"{'without alert evaluation':<34} {quiet['rate']:>10,.0f} {quiet['seconds']:>8.2f} {0:>12}")
    label = f"evaluating every {args.every:g} s"
    print(f"{label:<34} {busy['rate']:>10,.0f} {busy['seconds']:>8.2f} {busy['evaluations']:>12.0f}")
    print(f"ratio: {busy['rate'] / quiet['rate']:.2f} of the rate without evaluation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
