"""``python3 -m bench.ml [--rows 100000] [--repeat 5] [--quick]``: how fast prediction logging takes rows.

``mona_client.ml.log_predictions`` is timed on the caller's thread, from the user's batch to every row
queued in the client (one ARC per row: the arc class when the ARC opens, and the row's message), for a
pandas DataFrame of 10 float features and for the same rows as a list of dicts, each with a prediction
column. The client sends to a Forward sink in another process that acks every chunk, so its background
sender does its real work meanwhile; each run waits until the sink has every record before the next.
``log_prediction`` (one row per call, a dict of 10 features) is timed too. The figure is the median of
the runs; the spread is printed beside it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pandas as pd

from bench.sinks import Sink, start_sink
from mona_client import client, ml

FEATURES = 10
ARC_CLASS = "BENCH_MODEL"


def _frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(rows, FEATURES)), columns=[f"f{i}" for i in range(FEATURES)])


def _timed_runs(sink: Sink, repeat: int, rows: int, records_per_row: int, run: Callable[[], object]) -> List[float]:
    """Rows per second of each run; every record is acked by the sink before the next run starts."""
    rates = []
    for _ in range(repeat):
        expected = sink.records + rows * records_per_row
        started = time.perf_counter()
        run()
        elapsed = time.perf_counter() - started
        if not sink.wait_for(expected, timeout=120):
            raise RuntimeError(f"the sink has {sink.records} of {expected} records: {client.stats()}")
        rates.append(rows / elapsed)
    return rates


def _line(label: str, rates: List[float]) -> str:
    return f"| {label} | {statistics.median(rates):,.0f} | {min(rates):,.0f} – {max(rates):,.0f} |"


def measure(rows: int, repeat: int) -> Dict[str, List[float]]:
    """Rows per second for each input kind, against a sink in another process."""
    frame = _frame(rows)
    predictions = np.random.default_rng(1).integers(0, 2, size=rows)
    records: List[Dict[str, Any]] = frame.to_dict(orient="records")
    singles = records[: max(1, rows // 10)]
    sink = start_sink()
    try:
        with tempfile.TemporaryDirectory(prefix="mona-bench-ml-") as spool:
            client.init_client(port=sink.port, user_id="bench", spool_dir=spool, print_logs=False)
            ml.log_predictions(frame.head(1000), predictions[:1000], arc_class=ARC_CLASS)  # warm up
            assert client.flush(60), client.stats()

            def log_singles() -> None:
                for features, prediction in zip(singles, predictions.tolist()):
                    ml.log_prediction(features, prediction, arc_class=ARC_CLASS)

            results = {
                "DataFrame": _timed_runs(
                    sink, repeat, rows, 2, lambda: ml.log_predictions(frame, predictions, arc_class=ARC_CLASS)
                ),
                "list of dicts": _timed_runs(
                    sink, repeat, rows, 2, lambda: ml.log_predictions(records, predictions, arc_class=ARC_CLASS)
                ),
                "log_prediction(dict), one per call": _timed_runs(sink, repeat, len(singles), 2, log_singles),
            }
            client.close(timeout=30)
    finally:
        sink.stop()
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.ml", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="rows per batch (default: 100,000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per input kind (default: 5)")
    parser.add_argument("--quick", action="store_true", help="10,000 rows, 2 runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeat = 10_000, 2
    results = measure(args.rows, args.repeat)
    print(f"### log_predictions: {args.rows:,} rows of {FEATURES} float features and a prediction, into the queue")
    print()
    print("| input | rows/s (median) | min – max |")
    print("| --- | ---: | ---: |")
    for label, rates in results.items():
        print(_line(label, rates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
