"""``python3 -m bench.report [--arcs 1000000] [--quick] [--db PATH]``: how long ``mona report`` takes.

Generates ARCs with 10 KAPIs and 3 dimensions (the window a day of them, the baseline the 7 days
before) into a collector database through the collector's own path (raw log, then its merger), then
times ``mona report --arc-class BENCH`` as a user runs it (a process of its own: wall time and peak
memory) against the goals (3 s, 500 MB), and the steps of the same report in this process, to show
where the time goes. Last, what keeping the report's side table costs the merger: the merged-records
rate of the same raw log merged in this process with and without the side table's rows, interleaved.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

from bench.merge_breakdown import StoreWithoutSideTable, WriterWithoutSideTable
from bench.report_data import Record, append_records, merge, record, wide_scenario
from mona_collector.merging.process import MergeLoop
from mona_collector.merging.writer import WriterProcess
from mona_collector.readers import SQLiteReader
from mona_collector.report.engine import build_report
from mona_collector.report.periods import parse_periods
from mona_collector.report.source import _Columns
from mona_collector.store import SQLiteRawLog, SQLiteStore, WriteSet, raw_log_path

ARC_CLASS = "BENCH"
GOAL_SECONDS = 3.0
GOAL_MIB = 500.0


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
    names = ["select rows (SQL)", "cut into columns (numpy)", "type the columns", "statistics, drift, segments"]
    steps = dict.fromkeys(names, 0.0)
    periods = parse_periods()
    db = SQLiteReader(path)
    columns = _Columns()
    try:
        clock = time.perf_counter()
        for blobs in db.row_batches(ARC_CLASS, periods.baseline_start, periods.window_end, 100_000):
            marks = [clock, time.perf_counter()]
            columns.add(b"".join(blobs))
            clock = time.perf_counter()
            steps[names[0]] += marks[1] - marks[0]
            steps[names[1]] += clock - marks[1]
        clock = time.perf_counter()
        table = columns.table(db, None)
        steps[names[2]] += time.perf_counter() - clock
        clock = time.perf_counter()
        build_report(table, periods, arc_class=ARC_CLASS)
        steps[names[3]] += time.perf_counter() - clock
    finally:
        db.close()
    return steps


def _merge_seconds(raw: Path, folder: Path, side_table: bool) -> float:
    """Seconds to merge a copy of the raw log ``raw`` into a new database, in this process, written by
    a writer process as the collector's merger does."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    db_path = folder / "arcs.db"
    shutil.copy(raw, raw_log_path(db_path))
    store = (SQLiteStore if side_table else StoreWithoutSideTable)(db_path, synchronous="OFF")
    raw_log = SQLiteRawLog(raw_log_path(db_path), synchronous="OFF")
    try:
        writer = (WriterProcess if side_table else WriterWithoutSideTable)(store, "OFF")  # as `mona collect`
        writer.commit(WriteSet()).result(timeout=60)  # started, its database open: not part of the time
        started = time.perf_counter()
        loop = MergeLoop(store, raw_log, committer=writer)
        loop.merge_available()
        loop.close()
        return time.perf_counter() - started
    finally:
        raw_log.close()
        store.close()


def _collector_records(count: int, exports_per_arc: int = 8) -> Iterable[Record]:
    """Records as bench_collector.py sends them: a root export and sub-context exports per ARC."""
    base = 1_700_000_000
    for seq in range(count):
        arc, step = divmod(seq, exports_per_arc)
        message: Dict[str, Any] = {"loss": seq * 0.001, "accuracy": 0.5, "model": "m-3", "rows": seq}
        if step == 0:
            message["MONA_ARC_CLASS"] = "training"
        yield record(f"run-{arc}" if step == 0 else f"run-{arc}.step-{step}", message, base + seq // 1000)


def merge_rates(folder: Path, records: int, rounds: int = 2) -> None:
    """Print the merged-records rate with and without the side table's rows, for two workloads."""
    workloads = {
        "8 exports per ARC (bench_collector's)": list(_collector_records(records)),
        "1 export per ARC, 13 fields (this bench's)": list(wide_scenario(records, time.time())),
    }
    for name, items in workloads.items():
        source = folder / "source.db"
        append_records(source, items)
        raw = folder / "source.raw.db"
        seconds: Dict[bool, List[float]] = {False: [], True: []}
        for _ in range(rounds):  # interleaved, so both see the same machine
            for side_table in (False, True):
                seconds[side_table].append(_merge_seconds(raw, folder / "merge", side_table))
        before, after = records / min(seconds[False]), records / min(seconds[True])
        print(
            f"merged records/s, {name}: {before:,.0f} without the side table, {after:,.0f} with it "
            f"({after / before - 1:+.1%}; best of {rounds}, interleaved)"
        )
        for leftover in folder.glob("source*"):
            leftover.unlink()


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--arcs", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 ARCs: a check that it runs")
    parser.add_argument("--db", help="reuse (or create) this database instead of a temporary one")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the in-process breakdown")
    parser.add_argument("--merge-records", type=int, default=200_000, help="records of the merge-rate comparison")
    parser.add_argument("--no-merge-rate", action="store_true", help="skip the merge-rate comparison")
    args = parser.parse_args(argv)
    arcs = 20_000 if args.quick else args.arcs
    merge_records = 20_000 if args.quick else args.merge_records
    folder = tempfile.mkdtemp(prefix="mona-bench-report-")
    path = Path(args.db) if args.db else Path(folder) / "arcs.db"
    if not path.exists():
        appended, merged = _database(path, arcs)
        print(f"generated {arcs:,} ARCs: raw log {appended:.1f} s, merge {merged:.1f} s ({arcs / merged:,.0f} ARCs/s)")
    size = os.path.getsize(path) / 2**20
    wall, peak = _cli_run(path)
    print(f"mona report --arc-class {ARC_CLASS} over {arcs:,} ARCs (database {size:.0f} MiB):")
    met = {True: "met", False: "NOT met"}
    print(f"  wall time   {wall:6.2f} s    goal {GOAL_SECONDS:.0f} s    {met[wall <= GOAL_SECONDS]}")
    print(f"  peak memory {peak:6.0f} MiB  goal {GOAL_MIB:.0f} MB  {met[peak * 2**20 <= GOAL_MIB * 1e6]}")
    if not args.no_breakdown:
        steps = _breakdown(path)
        total = sum(steps.values())
        for name, seconds in steps.items():
            print(f"  {name:40s} {seconds:7.2f} s  {seconds / total:6.1%}  {seconds / arcs * 1e6:6.2f} µs/ARC")
    if not args.no_merge_rate:
        merge_rates(Path(folder) / "rates", merge_records)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
