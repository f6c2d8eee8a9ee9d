"""Reading the ARCs a report needs from the collector's database, read-only.

The ``arcs`` table has the class and the first export time as columns, so the ARCs of one class and
period are found by a query of their own; their documents are then loaded through the store's public
API (:meth:`SQLiteStore.load_arcs`, which also assembles ARCs kept as node rows) and flattened into a
:class:`~.table.TableBuilder`. Decoding each document is what costs most (see bench/report.py).
"""

from __future__ import annotations

import sqlite3
from typing import Dict, Iterator, List, Optional, Tuple

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


def read_table(
    store: SQLiteStore, arc_class: str, start: float, end: float, settings: Optional[ClassSettings] = None
) -> ColumnTable:
    """The columns of the ARCs of ``arc_class`` first exported in [start, end)."""
    builder = TableBuilder()
    db = _connect(store)
    try:
        for keys in _keys_in_range(db, arc_class, start, end):
            documents = store.load_arcs(keys)
            for key in keys:
                document = documents.get(key)
                if document is None:  # merged away between the two queries: it is in the next report
                    continue
                public = public_document(document)
                builder.add(float(public["first_export"]), flatten_arc(public))
    except sqlite3.Error as exc:
        raise ReportSourceError(f"cannot read {store.path}: {exc}") from None
    finally:
        db.close()
    return builder.finish(settings)


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
