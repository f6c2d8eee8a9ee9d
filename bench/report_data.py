"""Generated ARCs with known distributions, written into a collector database the way the collector
writes them: records appended to the raw log as received Forward entries, then merged by a real
collector (its merger process) into ARC documents.

``fraud_scenario`` is the data the report's tests check: in the window, one segment (``country=BR``)
has its ``MODEL.fraud_score`` shifted and one KAPI (``latency_ms``) drifts for every ARC; nothing else
changes. ``wide_scenario`` is the benchmark's: 10 KAPIs and 3 dimensions per ARC, one export each.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Union

import msgpack
import numpy as np

from mona_client.record import TAG
from mona_collector.service import Collector
from mona_collector.store import RawChunk, SQLiteRawLog, SQLiteStore, raw_log_path

DAY = 86400.0
#: Entries per raw-log row, as a client's chunk would carry them.
CHUNK_EVENTS = 2000

Record = Dict[str, Any]
PathLike = Union[str, Path]


def record(context: str, message: Dict[str, Any], when: float, user: str = "gen") -> Record:
    return {"user_id": user, "context": context, "message": message, "export_timestamp": when}


def append_records(db_path: PathLike, records: Iterable[Record]) -> int:
    """Append the records to the database's raw log as received messages; returns how many."""
    SQLiteStore(db_path, synchronous="OFF").close()  # creates the database if needed
    log = SQLiteRawLog(raw_log_path(db_path), synchronous="OFF")
    packer = msgpack.Packer(use_bin_type=True)
    total = 0
    try:
        batch: List[bytes] = []
        times: List[float] = []
        for item in records:
            batch.append(packer.pack([int(item["export_timestamp"]), item]))
            times.append(item["export_timestamp"])
            if len(batch) >= CHUNK_EVENTS:
                total += _append(log, batch, times)
                batch, times = [], []
        if batch:
            total += _append(log, batch, times)
    finally:
        log.close()
    return total


def _append(log: SQLiteRawLog, entries: List[bytes], times: List[float]) -> int:
    chunk = RawChunk(TAG, time.time(), len(entries), min(times), max(times), b"".join(entries))
    log.append([chunk])
    return len(entries)


def unmerged_rows(db_path: PathLike) -> int:
    store = SQLiteStore(db_path, readonly=True)
    try:
        return int(store.stats()["unmerged_rows"])
    finally:
        store.close()


def merge(db_path: PathLike, timeout: float = 600.0) -> float:
    """Run a collector on the database until its merger has merged every raw row; returns the seconds."""
    started = time.perf_counter()
    with Collector(port=0, db_path=db_path, synchronous="OFF"):
        deadline = time.monotonic() + timeout
        while unmerged_rows(db_path):
            if time.monotonic() > deadline:
                raise TimeoutError("the merger did not catch up")
            time.sleep(0.05)
    return time.perf_counter() - started


def _times(rng: np.random.Generator, count: int, start: float, end: float) -> Any:
    return np.sort(rng.uniform(start, end, count))


#: The scenario's periods start this many seconds after the default periods of a report made at ``now``,
#: so that a report made minutes later (a long test run) still finds every ARC in the same period.
EDGE_MARGIN = 900.0
COUNTRIES = ["DE", "FR", "US", "BR"]
COUNTRY_SHARES = [0.32, 0.31, 0.31, 0.06]


def fraud_scenario(
    now: float, window_arcs: int = 3000, baseline_arcs: int = 6000, seed: int = 11, arc_class: str = "FRAUD_SCORER"
) -> Iterator[Record]:
    """ARCs of ``arc_class``: a root export (dimensions ``country`` and ``tier``, KAPIs ``latency_ms`` and
    ``amount``) and a ``MODEL`` sub-context (KAPI ``fraud_score``). The baseline is the 7 days before
    the last 24 h, the window the last 24 h. In the window only: ``country=BR`` has ``fraud_score``
    shifted up by 3 standard deviations, and ``latency_ms`` is 2.5 standard deviations higher for all."""
    rng = np.random.default_rng(seed)
    periods = [
        (False, _times(rng, baseline_arcs, now - 8 * DAY + EDGE_MARGIN, now - DAY)),
        (True, _times(rng, window_arcs, now - DAY + EDGE_MARGIN, now - 1)),
    ]
    index = 0
    for in_window, times in periods:
        count = times.size
        countries = rng.choice(COUNTRIES, size=count, p=COUNTRY_SHARES)
        tiers = rng.choice(["gold", "silver"], size=count, p=[0.3, 0.7])
        latency = rng.normal(75.0 if in_window else 50.0, 10.0, count)
        amount = rng.normal(100.0, 20.0, count)
        score = rng.normal(0.3, 0.05, count)
        if in_window:
            score = np.where(countries == "BR", score + 0.15, score)
        for i in range(count):
            when = float(times[i])
            context = f"txn-{index}"
            index += 1
            root = {
                "MONA_ARC_CLASS": arc_class,
                "country": str(countries[i]),
                "tier": str(tiers[i]),
                "latency_ms": round(float(latency[i]), 3),
                "amount": round(float(amount[i]), 2),
            }
            yield record(context, root, when)
            yield record(f"{context}.model", {"MONA_ARC_CLASS": "MODEL", "fraud_score": float(score[i])}, when)


def wide_scenario(
    arcs: int, now: float, seed: int = 5, arc_class: str = "BENCH", window_share: float = 1 / 8
) -> Iterator[Record]:
    """``arcs`` ARCs of one export each with 10 KAPIs and 3 dimensions, spread over the 8 days before
    ``now`` (the last day, the default window, holds ``window_share`` of them)."""
    rng = np.random.default_rng(seed)
    window = int(arcs * window_share)
    times = np.concatenate([_times(rng, arcs - window, now - 8 * DAY, now - DAY), _times(rng, window, now - DAY, now)])
    kapis = rng.normal(0.0, 1.0, (arcs, 10)).round(4)
    kapis[arcs - window :, 0] += 0.5  # one KAPI drifts in the window
    regions = rng.choice(["eu", "us", "apac", "latam"], size=arcs)
    models = rng.choice(["v1", "v2", "v3"], size=arcs)
    tiers = rng.choice(["free", "pro", "enterprise"], size=arcs)
    names = [f"k{j}" for j in range(10)]
    for i in range(arcs):
        message: Dict[str, Any] = dict(zip(names, kapis[i].tolist()))
        message["MONA_ARC_CLASS"] = arc_class
        message["region"] = str(regions[i])
        message["model"] = str(models[i])
        message["tier"] = str(tiers[i])
        yield record(f"arc-{i}", message, float(times[i]))


def build_database(db_path: PathLike, records: Iterable[Record], merge_timeout: Optional[float] = 600.0) -> float:
    """Append ``records`` and merge them; returns the merge seconds."""
    append_records(db_path, records)
    return merge(db_path, 600.0 if merge_timeout is None else merge_timeout)
