"""Reading the ARCs a report needs from the collector's database, read-only.

The ``arcs`` table has the class and the first export time as columns, so the ARCs of one class and
period are found by a query of their own; their documents are then loaded through the store's public
API (:meth:`SQLiteStore.load_arcs`, which also assembles ARCs kept as node rows) and flattened into a
:class:`~.table.TableBuilder`. Decoding each document is what costs most (see bench/report.py).
"""

from __future__ import annotations

import sqlite3
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..merging.documents import public_document
from ..store import SQLiteStore, StoreError
from .fields import flatten_arc
from .monitoring_config import ClassSettings
from .table import ColumnTable, TableBuilder

#: ARCs loaded per call of load_arcs: big enough to amortise the query, small enough to bound memory.
_BATCH = 2000


class ReportSourceError(StoreError):
    """The database cannot give the ARCs asked for."""


def _keys_in_range(db: sqlite3.Connection, arc_class: str, start: float, end: float) -> Iterator[List[Tuple[str, str]]]:
    """The keys of the class's ARCs first exported in [start, end), in batches, oldest first."""
    cursor = db.execute(
        "SELECT user_id, context_id FROM arcs WHERE arc_class = ? AND first_export >= ? AND first_export < ?"
        " ORDER BY first_export, rowid",
        (arc_class, start, end),
    )
    while True:
        rows = cursor.fetchmany(_BATCH)
        if not rows:
            return
        yield [(_text(user), _text(context)) for user, context in rows]


def _text(value: object) -> str:
    # keys that were not valid UTF-8 are stored as blobs (see store.db_text); load_arcs binds them back
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _connect(store: SQLiteStore) -> sqlite3.Connection:
    return sqlite3.connect(f"{store.path.resolve().as_uri()}?mode=ro", uri=True)


def merged_ranges(ranges: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """The half-open ranges with overlapping or touching ones joined, so no ARC is read twice."""
    merged: List[Tuple[float, float]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def read_table(
    store: SQLiteStore,
    arc_class: str,
    ranges: Sequence[Tuple[float, float]],
    settings: Optional[ClassSettings] = None,
) -> ColumnTable:
    """The columns of the ARCs of ``arc_class`` first exported in any of the half-open ``ranges``."""
    builder = TableBuilder()
    db = _connect(store)
    try:
        for start, end in merged_ranges(ranges):
            for keys in _keys_in_range(db, arc_class, start, end):
                _add_documents(builder, store, keys)
    except sqlite3.Error as exc:
        raise ReportSourceError(f"cannot read {store.path}: {exc}") from None
    finally:
        db.close()
    return builder.finish(settings)


def _add_documents(builder: TableBuilder, store: SQLiteStore, keys: List[Tuple[str, str]]) -> None:
    documents = store.load_arcs(keys)
    for key in keys:
        document = documents.get(key)
        if document is None:  # gone between the two queries (a database replaced under us)
            continue
        public = public_document(document)
        builder.add(float(public["first_export"]), flatten_arc(public))


def class_span(store: SQLiteStore, arc_class: str) -> Tuple[Optional[float], Optional[float]]:
    """The first and the last first-export time of the class's ARCs (None, None: it has none)."""
    db = _connect(store)
    try:
        first, last = db.execute(
            "SELECT min(first_export), max(first_export) FROM arcs WHERE arc_class = ?", (arc_class,)
        ).fetchone()
        return first, last
    except sqlite3.Error as exc:
        raise ReportSourceError(f"cannot read {store.path}: {exc}") from None
    finally:
        db.close()


def class_counts(store: SQLiteStore) -> Dict[str, int]:
    """How many ARCs each class has (the ARCs without a class are not reported)."""
    db = _connect(store)
    try:
        rows = db.execute("SELECT arc_class, count(*) FROM arcs WHERE arc_class IS NOT NULL GROUP BY arc_class")
        return {_text(arc_class): count for arc_class, count in rows}
    except sqlite3.Error as exc:
        raise ReportSourceError(f"cannot read {store.path}: {exc}") from None
    finally:
        db.close()
