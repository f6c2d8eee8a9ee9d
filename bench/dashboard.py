"""``python3 -m bench.dashboard [--arcs 1000000] [--quick] [--db PATH]``: how fast the class page answers.

Generates ARCs with 10 KAPIs and 3 dimensions (bench/report_data.py's wide scenario) into a collector
database through the collector's own path, serves the dashboard on loopback, and times the class
page's API call (``/api/classes/BENCH/report``) as a browser makes it: the first load (computed by
the ``mona report`` engine) and the loads after it (served from the cache until the merge watermark
moves), and the overview.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import List, Optional

from bench.report_data import append_records, merge, wide_scenario
from mona_collector.web import DashboardSettings, load_server

ARC_CLASS = "BENCH"


def _timed_get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=3600) as response:
        response.read()
    return time.perf_counter() - started


def run(db_path: Path, repeats: int = 5) -> None:
    with load_server()(db_path, DashboardSettings(port=0)) as server:
        report = f"{server.url}api/classes/{ARC_CLASS}/report?since=24h&baseline=7d"
        first = _timed_get(report)
        again: List[float] = [_timed_get(report) for _ in range(repeats)]
        overview = _timed_get(f"{server.url}api/classes?since=24h&baseline=7d")
    print(f"class page, first load:        {first * 1000:10.1f} ms")
    print(f"class page, loads after it:    {max(again) * 1000:10.1f} ms (worst of {repeats})")
    print(f"overview (cached class report): {overview * 1000:9.1f} ms")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arcs", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 ARCs")
    parser.add_argument("--db", help="an existing database of the wide scenario (default: generate one)")
    args = parser.parse_args(argv)
    if args.db:
        run(Path(args.db))
        return 0
    arcs = 100_000 if args.quick else args.arcs
    with tempfile.TemporaryDirectory(prefix="mona-bench-dashboard-") as folder:
        path = Path(folder) / "arcs.db"
        started = time.perf_counter()
        append_records(path, wide_scenario(arcs, time.time()))
        merge(path, timeout=3600)
        print(f"{arcs:,} ARCs generated and merged in {time.perf_counter() - started:.0f} s")
        run(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
