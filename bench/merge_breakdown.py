"""Where the merger's time goes, per record: each stage of a merge transaction timed on its own.

A raw log is filled with records (the collector bench's, ``make_entries``' form, or with
``--client-form`` the mona client's, as :func:`bench.e2e.client_entries` makes them), then merged into
a fresh ARC database by the merger's own code, one transaction of
:attr:`~mona_collector.store.ArcStore.merge_batch_events` events at a time, with every stage timed apart and
the write done inline (no second thread), so that the stages add up:

* *decode*: ``decode_entries`` of every raw row (msgpack's C decoder, one call per row);
* *dedup + merge*: ``ArcMerger.merge_entries`` (duplicate check by record id, merge into documents);
* *look-up*: ``take_dirty``, the store looked up for the ARCs new to the merger;
* *pack*: ``store.freeze``, the touched documents and the report's side-table rows encoded; *of which
  documents* packs the same documents once more on their own (not counted in the total): the rest
  of *pack* is the side table's;
* *SQLite*: ``store.write`` (upserts and the commit, ``synchronous=FULL``).

``--no-side-table`` merges with a store that leaves the report's side table out: what it costs is
the difference.

The cyclic garbage collector is off while a transaction is merged, as in the merge loop.

    python3 -m bench.merge_breakdown --records 300000 [--client-form]   # a table and one JSON line
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # python3 bench/merge_breakdown.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_collector import make_entries
from mona_client.record import TAG
from mona_collector.merging.process import MergeLoop, decode_entries
from mona_collector.merging.writer import WriterProcess
from mona_collector.merging.writer import main as writer_main
from mona_collector.report_rows import EncodedRows
from mona_collector.store import RawChunk, SQLiteRawLog, SQLiteStore, WriteSet, pack_document, raw_log_path

STAGES = ("decode", "dedup + merge", "look-up", "pack", "SQLite")
#: Measured apart, not a stage of its own: packing the touched documents alone (a part of "pack").
DOCUMENTS = "of which documents"


class StoreWithoutSideTable(SQLiteStore):
    """The SQLite store with the report's side table left out of each transaction: ``freeze`` encodes
    the documents only (as when a writer process encodes the rows) and the write encodes no rows
    either. What merging costs without it; a measurement only, it reaches into the store."""

    report_rows_at_write = True

    def _encode_written(self, db: Any, arcs: List[Tuple[Any, ...]]) -> Optional[EncodedRows]:
        return None


def writer_without_side_table() -> int:
    """The writer process of :class:`WriterWithoutSideTable` (this module loads what the real one
    does, so that both start alike)."""
    return writer_main(store_class=StoreWithoutSideTable)


class WriterWithoutSideTable(WriterProcess):
    """The merger's writer process writing through :class:`StoreWithoutSideTable`."""

    ENTRY_POINT = ("bench.merge_breakdown", "writer_without_side_table")


def measure(blobs: Sequence[Tuple[bytes, int]], side_table: bool = True) -> Dict[str, float]:
    """µs per record of each stage (and their sum), merging the records of ``blobs`` (entries blobs
    and their counts, one raw row each) once; without the report's side table if not ``side_table``."""
    with tempfile.TemporaryDirectory(prefix="mona-merge-breakdown-") as directory:
        db_path = os.path.join(directory, "collector.db")
        raw_log = SQLiteRawLog(raw_log_path(db_path))
        for start in range(0, len(blobs), 50):
            raw_log.append([RawChunk(TAG, 0.0, count, None, None, blob) for blob, count in blobs[start : start + 50]])
        try:
            return measure_log(raw_log, db_path, side_table)
        finally:
            raw_log.close()


def measure_log(raw_log: SQLiteRawLog, db_path: str, side_table: bool = True) -> Dict[str, float]:
    """µs per record of each stage (and their sum), merging all of ``raw_log`` into a new database
    at ``db_path`` (without the report's side table if not ``side_table``)."""
    store = SQLiteStore(db_path) if side_table else StoreWithoutSideTable(db_path)
    loop = MergeLoop(store, raw_log, committer=None)
    merger, dedup = loop._merger, loop._dedup
    spent = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter
    merged = 0
    documents = 0.0
    started = clock()
    while True:
        rows = raw_log.read(loop.watermark, loop.batch_events)
        if not rows:
            break
        gc.disable()  # as the merge loop does while it merges (see MergeLoop._prepare)
        changes = WriteSet(watermark=rows[-1].id, log_id=raw_log.log_id)
        for row in rows:
            at = clock()
            items, _ = decode_entries(row.entries, row.events)
            decoded = clock()
            merger.merge_entries(items, dedup, row.auth_user)
            spent["decode"] += decoded - at
            spent["dedup + merge"] += clock() - decoded
            merged += len(items)
        at = clock()
        changes.arcs = merger.take_dirty()
        changes.changed_nodes = merger.take_changed_nodes()
        changes.id_ranges, changes.record_ids = dedup.take_changes()
        looked_up = clock()
        store.freeze(changes)
        merger.sized(changes.arcs)
        packed = clock()
        for _, document in changes.arcs:  # the documents' share of freeze: packed once more, apart
            pack_document(document)
        documents += clock() - packed
        gc.enable()
        packed = clock()
        store.write(changes)
        spent["look-up"] += looked_up - at
        spent["pack"] += packed - looked_up
        spent["SQLite"] += clock() - packed
        merger.committed()
        dedup.committed()
        loop.watermark = rows[-1].id
    total = clock() - started - documents  # the extra packing is no part of merging
    arcs = store.stats().get("arcs")
    store.close()
    figures = {stage: seconds / merged * 1e6 for stage, seconds in spent.items()}
    figures[DOCUMENTS] = documents / merged * 1e6
    figures["total"] = total / merged * 1e6
    figures["records"] = merged
    figures["arcs"] = arcs if isinstance(arcs, int) else 0
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--exports-per-arc", type=int, default=8)
    parser.add_argument("--client-form", action="store_true", help="the records of bench.e2e (the client's form)")
    parser.add_argument("--no-side-table", action="store_true", help="leave the report's side table out")
    args = parser.parse_args()
    if args.client_form:
        from bench.e2e import RECORDS_PER_ARC, client_entries

        blobs = client_entries(args.records // RECORDS_PER_ARC)
    else:
        blobs = make_entries(args.records, 1000, args.exports_per_arc)
    figures = measure(blobs, side_table=not args.no_side_table)
    for stage in (*STAGES, DOCUMENTS, "total"):
        print(f"{stage:<20}{figures[stage]:>8.2f} µs/record")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
