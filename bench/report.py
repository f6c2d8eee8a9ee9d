"""``python3 -m bench.report [--arcs 1000000] [--quick] [--db PATH]``: how long ``mona report`` takes.

Generates ARCs with 10 KAPIs and 3 dimensions (the window a day of them, the baseline the 7 days
before) into a collector database through the collector's own path (raw log, then its merger), then
times ``mona report --arc-class BENCH`` as a user runs it (a process of its own: wall time and peak
memory), and the steps of the same report in this process, to show where the time goes.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from bench.report_data import append_records, merge, wide_scenario
from mona_collector.merging.documents import public_document
from mona_collector.report.engine import build_report
from mona_collector.report.fields import flatten_arc
from mona_collector.report.periods import parse_periods
from mona_collector.report.source import _connect, _keys_in_range
from mona_collector.report.table import TableBuilder
from mona_collector.store import SQLiteStore

ARC_CLASS = "BENCH"


def _database(path: Path, arcs: int) -> Tuple[float, float]:
    """Generate and merge ``arcs`` ARCs; returns the append seconds and the merge seconds."""
    started = time.perf_counter()
    append_records(path, wide_scenario(arcs, time.time()))
    appended = time.perf_counter() - started
    return appended, merge(path, timeout=3600)


def _cli_run(path: Path) -> Tuple[float, float]:
    """Wall seconds and peak resident MiB of ``mona report --arc-class BENCH --json`` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mona_collector.cli", "report", "--db", str(path), "--arc-class", ARC_CLASS, "--json"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024


def _breakdown(path: Path) -> Dict[str, float]:
    """The seconds of each step of the report, measured in this process (batch by batch)."""
    steps = dict.fromkeys(
        [
            "select keys (SQL)",
            "load documents (SQL + msgpack)",
            "public form",
            "flatten",
            "add to columns",
            "type and build numpy columns",
            "statistics, drift, segments (numpy)",
        ],
        0.0,
    )
    names = list(steps)
    periods = parse_periods()
    store = SQLiteStore(path, readonly=True)
    db = _connect(store)
    builder = TableBuilder()
    try:
        clock = time.perf_counter()
        batches = list(_keys_in_range(db, ARC_CLASS, periods.baseline_start, periods.window_end))
        marks = [clock, time.perf_counter()]
        steps[names[0]] += marks[1] - marks[0]
        for keys in batches:
            marks = [time.perf_counter()]
            documents = store.load_arcs(keys)
            marks.append(time.perf_counter())
            publics = [public_document(documents[key]) for key in keys]
            marks.append(time.perf_counter())
            flats = [flatten_arc(public) for public in publics]
            marks.append(time.perf_counter())
            for public, flat in zip(publics, flats):
                builder.add(public["first_export"], flat)
            marks.append(time.perf_counter())
            for index in range(4):
                steps[names[1 + index]] += marks[index + 1] - marks[index]
        clock = time.perf_counter()
        table = builder.finish()
        steps[names[5]] += time.perf_counter() - clock
        clock = time.perf_counter()
        build_report(table, periods, arc_class=ARC_CLASS)
        steps[names[6]] += time.perf_counter() - clock
    finally:
        db.close()
        store.close()
    return steps


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--arcs", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 ARCs: a check that it runs")
    parser.add_argument("--db", help="reuse (or create) this database instead of a temporary one")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the in-process breakdown")
    args = parser.parse_args(argv)
    arcs = 20_000 if args.quick else args.arcs
    folder = tempfile.mkdtemp(prefix="mona-bench-report-")
    path = Path(args.db) if args.db else Path(folder) / "arcs.db"
    if not path.exists():
        appended, merged = _database(path, arcs)
        print(f"generated {arcs:,} ARCs: raw log {appended:.1f} s, merge {merged:.1f} s ({arcs / merged:,.0f} ARCs/s)")
    size = os.path.getsize(path) / 2**20
    wall, peak = _cli_run(path)
    print(
        f"mona report --arc-class {ARC_CLASS}: {wall:.2f} s wall, peak memory {peak:.0f} MiB (database {size:.0f} MiB)"
    )
    print(f"target 3 s: {wall / 3:.1f}x of it")
    if not args.no_breakdown:
        steps = _breakdown(path)
        total = sum(steps.values())
        for name, seconds in steps.items():
            print(f"  {name:40s} {seconds:7.2f} s  {seconds / total:6.1%}  {seconds / arcs * 1e6:6.2f} µs/ARC")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
