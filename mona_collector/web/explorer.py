"""The ARC explorer's queries: ARCs by class, id, time range and field filters, page by page, and one ARC.

The database is read only (the collector may be writing). A page is the newest ARCs first (by their
first export) that pass the filters; the filters are applied to the flattened documents, so a query
with filters reads at most :data:`MAX_SCAN` ARCs per page and says where it stopped (``next_cursor``)
when it read that many without filling the page.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..merging.documents import public_document
from ..report.fields import flatten_arc
from ..store import SQLiteStore, db_text
from .filters import FieldFilter

#: ARCs per page by default, and at most.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: ARCs read (decoded and filtered) at most to fill one page.
MAX_SCAN = 20000
_BATCH = 500


class CursorError(ValueError):
    """A page cursor that this server did not make."""


@dataclass
class ArcQuery:
    """What the explorer asks for: every part optional."""

    arc_class: Optional[str] = None
    context_id: Optional[str] = None
    start: Optional[float] = None
    end: Optional[float] = None
    filters: Sequence[FieldFilter] = field(default_factory=list)
    limit: int = DEFAULT_LIMIT
    cursor: Optional[str] = None


def parse_cursor(text: str) -> Tuple[float, int]:
    """``first_export:rowid`` of the last ARC of the page before."""
    first, _, rowid = text.partition(":")
    try:
        return float(first), int(rowid)
    except ValueError:
        raise CursorError(f"{text[:40]!r} is not a page cursor") from None


def _sql(query: ArcQuery) -> Tuple[str, List[Any]]:
    clauses: List[str] = []
    params: List[Any] = []
    if query.arc_class is not None:
        clauses.append("arc_class = ?")
        params.append(db_text(query.arc_class))
    if query.context_id is not None:
        clauses.append("context_id = ?")
        params.append(db_text(query.context_id.split(".", 1)[0]))
    if query.start is not None:
        clauses.append("first_export >= ?")
        params.append(query.start)
    if query.end is not None:
        clauses.append("first_export < ?")
        params.append(query.end)
    if query.cursor is not None:
        first, rowid = parse_cursor(query.cursor)
        clauses.append("(first_export < ? OR (first_export = ? AND rowid < ?))")
        params += [first, first, rowid]
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT user_id, context_id, first_export, rowid FROM arcs{where} ORDER BY first_export DESC, rowid DESC"
    return sql, params


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _batches(db: sqlite3.Connection, query: ArcQuery) -> Iterator[List[Tuple[str, str, float, int]]]:
    sql, params = _sql(query)
    cursor = db.execute(sql, params)
    while True:
        rows = cursor.fetchmany(_BATCH)
        if not rows:
            return
        yield [(_text(user), _text(context), float(first), int(rowid)) for user, context, first, rowid in rows]


def _summary(document: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "user_id": document["user_id"],
        "context_id": document["context_id"],
        "arc_class": document["arc_class"],
        "first_export": document["first_export"],
        "last_export": document["last_export"],
        "export_count": document["export_count"],
        "fields": flatten_arc(document),
    }


def search_arcs(db_path: Path, query: ArcQuery) -> Dict[str, Any]:
    """One page of ARCs: ``arcs`` (summaries with flattened fields), ``next_cursor`` (None: no more),
    ``scanned`` (ARCs read) and ``partial`` (the page stopped at :data:`MAX_SCAN`, not at the end)."""
    store = SQLiteStore(db_path, readonly=True)
    db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    found: List[Dict[str, Any]] = []
    scanned = 0
    last: Optional[Tuple[float, int]] = None
    more = False
    try:
        db.execute("PRAGMA busy_timeout=5000")
        for batch in _batches(db, query):
            documents = store.load_arcs([(user, context) for user, context, _, _ in batch])
            for user, context, first, rowid in batch:
                if len(found) >= query.limit or scanned >= MAX_SCAN:
                    more = True
                    break
                scanned += 1
                last = (first, rowid)
                document = documents.get((user, context))
                if document is None:
                    continue
                summary = _summary(public_document(document))
                if all(item.matches(summary["fields"]) for item in query.filters):
                    found.append(summary)
            if more:
                break
    finally:
        db.close()
        store.close()
    return {
        "arcs": found,
        "next_cursor": f"{last[0]!r}:{last[1]}" if more and last is not None else None,
        "scanned": scanned,
        "partial": more and len(found) < query.limit,
    }


def find_arc(db_path: Path, context_id: str) -> List[Dict[str, Any]]:
    """The public documents of the ARCs with this context id (one per user that has it; ``root.sub``
    finds ``root``)."""
    store = SQLiteStore(db_path, readonly=True)
    try:
        return store.find_arcs(context_id)
    finally:
        store.close()
