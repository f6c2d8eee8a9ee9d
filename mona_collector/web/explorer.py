"""The ARC explorer's queries: ARCs by class, id, time range and field filters, page by page, and one ARC.

The database is read only (the collector may be writing). A page is the newest ARCs first (by their
first export) that pass the filters; the filters are applied to the flattened documents, so a query
with filters reads at most :data:`MAX_SCAN` ARCs per page and says where it stopped (``next_cursor``)
when it read that many without filling the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Generator, List, Optional, Sequence, Tuple

from ..databases import Database, open_reader, open_store
from ..merging.documents import public_document
from ..readers import Reader, text_of
from ..report.fields import flatten_arc
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
    """``first_export:order`` of the last ARC of the page before (its order: SQLite's rowid, PostgreSQL's seq)."""
    first, _, rowid = text.partition(":")
    try:
        return float(first), int(rowid)
    except ValueError:
        raise CursorError(f"{text[:40]!r} is not a page cursor") from None


def _sql(query: ArcQuery, reader: Reader) -> Tuple[str, List[Any]]:
    clauses: List[str] = []
    params: List[Any] = []
    if query.arc_class is not None:
        clauses.append("arc_class = ?")
        params.append(reader.bind_class(query.arc_class))
    if query.context_id is not None:
        clauses.append("context_id = ?")
        params.append(reader.bind_key(query.context_id.split(".", 1)[0]))
    if query.start is not None:
        clauses.append("first_export >= ?")
        params.append(query.start)
    if query.end is not None:
        clauses.append("first_export < ?")
        params.append(query.end)
    if query.cursor is not None:
        first, rowid = parse_cursor(query.cursor)
        clauses.append(f"(first_export < ? OR (first_export = ? AND {reader.order} < ?))")
        params += [first, first, rowid]
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    order = reader.order
    sql = f"SELECT user_id, context_id, first_export, {order} FROM arcs{where} ORDER BY first_export DESC, {order} DESC"
    return sql, params


def _batches(reader: Reader, query: ArcQuery) -> Generator[List[Tuple[str, str, float, int]], None, None]:
    sql, params = _sql(query, reader)
    for rows in reader.batches(sql, params, _BATCH):
        yield [(text_of(user), text_of(context), float(first), int(rowid)) for user, context, first, rowid in rows]


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


def search_arcs(db_path: Database, query: ArcQuery) -> Dict[str, Any]:
    """One page of ARCs: ``arcs`` (summaries with flattened fields), ``next_cursor`` (None: no more),
    ``scanned`` (ARCs read) and ``partial`` (the page stopped at :data:`MAX_SCAN`, not at the end)."""
    reader = open_reader(db_path)
    store = reader.store()
    found: List[Dict[str, Any]] = []
    scanned = 0
    last: Optional[Tuple[float, int]] = None
    more = False
    try:
        batches = _batches(reader, query)
        for batch in batches:
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
        batches.close()  # ends its query before the connection closes
    finally:
        reader.close()
    return {
        "arcs": found,
        "next_cursor": f"{last[0]!r}:{last[1]}" if more and last is not None else None,
        "scanned": scanned,
        "partial": more and len(found) < query.limit,
    }


def find_arc(db_path: Database, context_id: str) -> List[Dict[str, Any]]:
    """The public documents of the ARCs with this context id (one per user that has it; ``root.sub``
    finds ``root``)."""
    store = open_store(db_path, readonly=True)
    try:
        return store.find_arcs(context_id)
    finally:
        store.close()
