"""Where the collector keeps raw events, ARC documents and what it needs to drop duplicates.

Two small interfaces, so that a server database can replace SQLite later:

* :class:`RawLog`, the ingest log: the network side appends one row per received message (its events
  as a PackedForward entries blob, records not decoded) in group-committed transactions and acks once
  :meth:`RawLog.append` returned; the merger reads the rows back in order of their ids.
* :class:`ArcStore`, the merged state: ARC documents, the duplicate-detection state, per-tag counters
  and the watermark ("raw rows up to id N are merged"), all written by the merger in one transaction
  per :class:`WriteSet`, so that a crash never merges a row twice nor skips one; and the queries.
  :class:`SQLiteStore` also keeps the report's side table of flattened ARCs in that transaction
  (see :mod:`.report_rows`).

:class:`SQLiteRawLog` and :class:`SQLiteStore` are the embedded implementations, in two SQLite files in
WAL mode so that the network process and the merger never wait for each other's write lock: the ARC
database (``--db``, e.g. ``collector.db``) and the raw log beside it (``collector.raw.db``, see
:func:`raw_log_path`).
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

import msgpack

from .event_time import is_undecoded_extension, pack_undecoded_extension
from .forward_codec import Event, iter_entries
from .merging.documents import CLASS, FORMAT_VERSION, SIZE_KEY, ArcKey, Document, public_document
from .report_rows import ROWS_COMPLETE, ROWS_VERSION, EncodedRows, RowEncoder, write_rows
from .report_rows import SCHEMA as _REPORT_SCHEMA
from .sql import SQLiteStatements

log = logging.getLogger("mona_collector")

__all__ = [
    "ArcStore",
    "RawChunk",
    "RawLog",
    "RawRow",
    "SQLiteRawLog",
    "SQLiteStore",
    "StoreError",
    "StoreUnavailable",
    "TagCounts",
    "WriteSet",
    "default_db_path",
    "fill_report_rows",
    "raw_log_path",
]

ENV_DB = "MONA_COLLECTOR_DB"
_SCHEMA_VERSION = 2
#: meta keys of the watermark: the id of the last raw log row merged into the ARC tables, and the id
#: of that raw log (a raw log created anew starts again from row 1).
_WATERMARK = "merged_up_to"
_WATERMARK_LOG = "merged_log_id"
_WAL_SIZE_LIMIT = 64 * 1024 * 1024


class StoreError(RuntimeError):
    """The database cannot be opened or is not a collector database."""


class StoreUnavailable(StoreError):  # noqa: N818 - its name is in the merger's error line and `mona stats`
    """The storage cannot take a write now (disk full, I/O error, locked, unreadable), whatever was
    being written: what failed must be written again later, never skipped as if it were bad data."""


def is_storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the storage failed rather than the data written (SQLite's own errors
    other than constraint, size and programming errors, and the operating system's)."""
    if isinstance(exc, (StoreUnavailable, OSError)):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return True
    return type(exc) is sqlite3.DatabaseError  # e.g. "database disk image is malformed"


def raw_log_path(db_path: os.PathLike[str] | str) -> Path:
    """The raw log beside the ARC database: ``collector.db`` -> ``collector.raw.db``."""
    path = Path(db_path)
    return path.with_name(f"{path.stem}.raw{path.suffix}")


def default_db_path() -> Path:
    """``$MONA_COLLECTOR_DB``, else ``$XDG_DATA_HOME/mona/collector.db``, else
    ``~/.local/share/mona/collector.db``."""
    explicit = os.environ.get(ENV_DB)
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "mona" / "collector.db"


@dataclass
class RawChunk:
    """The events of one received message, as a PackedForward entries blob."""

    tag: str
    received: float
    events: int
    first_time: Optional[float]
    last_time: Optional[float]
    entries: bytes
    #: The user name the connection authenticated with (None: no user authentication); the merger
    #: then merges only records whose ``user_id`` is this name.
    auth_user: Optional[str] = None


class RawRow(NamedTuple):
    """One row of the raw log as the merger reads it back."""

    id: int
    tag: str
    events: int
    entries: bytes
    auth_user: Optional[str] = None


def db_text(value: str) -> Any:
    """``value`` as SQLite can bind it: the text itself, or, when it holds surrogates (bytes that were
    not valid UTF-8 on the wire), those exact bytes as a blob, which never equals any text."""
    wire = _wire_bytes(value)
    return value if wire is None else wire


def label_text(value: str) -> str:
    """``value`` as text for a query column or a label, invalid bytes replaced (lossy; display only)."""
    wire = _wire_bytes(value)
    return value if wire is None else wire.decode("utf-8", "replace")


def _wire_bytes(value: str) -> Optional[bytes]:
    """None when ``value`` is valid text, else its bytes (as received, for surrogateescape'd ones)."""
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


@dataclass
class TagCounts:
    """Counters for one tag, added up over a transaction."""

    events: int = 0
    rejected: int = 0
    duplicates: int = 0
    first_time: Optional[float] = None
    last_time: Optional[float] = None

    def add_times(self, first: Optional[float], last: Optional[float]) -> None:
        if first is not None and (self.first_time is None or first < self.first_time):
            self.first_time = first
        if last is not None and (self.last_time is None or last > self.last_time):
            self.last_time = last


@dataclass
class WriteSet:
    """Everything one merger transaction writes."""

    arcs: List[Tuple[ArcKey, Document]] = field(default_factory=list)
    id_ranges: List[Tuple[str, str, List[Tuple[int, int]]]] = field(default_factory=list)
    record_ids: List[Tuple[str, str]] = field(default_factory=list)
    tags: Dict[str, TagCounts] = field(default_factory=dict)
    #: The id of the last raw row this transaction merges (None: the watermark does not move), and
    #: the id of the raw log it belongs to.
    watermark: Optional[int] = None
    log_id: str = ""
    #: Store-specific form of ``arcs`` made by :meth:`ArcStore.freeze`, if the store has one.
    frozen: Any = None
    #: For each ARC of ``arcs``, the dotted paths of the sub-context nodes this transaction changed
    #: or created ("" is the root); a store may write only those (an ARC not in it: every node).
    changed_nodes: Dict[ArcKey, Set[str]] = field(default_factory=dict)


class PreparedWrite(NamedTuple):
    """A merger transaction as the SQLite store writes it: rows of plain values, so that another
    process can write it (see :mod:`mona_collector.merging.writer`)."""

    watermark: Optional[int]
    log_id: str
    arcs: List[Tuple[Any, ...]]
    nodes: List[Tuple[Any, ...]]
    report_rows: Optional[EncodedRows]
    ranges: List[Tuple[Any, ...]]
    ids: List[Tuple[Any, ...]]
    tags: List[Tuple[Any, ...]]


class RawLog(abc.ABC):
    """The append-only ingest log: written by the network side, read in id order by the merger."""

    #: A random id given to the log when it is created (the store keeps it with its watermark).
    log_id: str = ""

    @abc.abstractmethod
    def append(self, chunks: Sequence[RawChunk]) -> int:
        """Store the chunks as new rows in one transaction, durably (acks follow), and return the id
        of the last one; raise and store nothing on failure."""

    @abc.abstractmethod
    def read(self, after: int, max_events: int, max_bytes: Optional[int] = None) -> List[RawRow]:
        """Rows with an id above ``after``, in id order, about ``max_events`` events' worth and, when
        given, about ``max_bytes`` of entries (at least one row when there is one)."""

    @abc.abstractmethod
    def last_id(self) -> int:
        """The id of the newest row (0 when empty)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the log."""


class ArcStore(abc.ABC):
    """The storage interface of the collector: a write side for ingest, a read side for queries."""

    # --- ingest side ---------------------------------------------------------------------------

    @abc.abstractmethod
    def load_arcs(self, keys: Sequence[ArcKey]) -> Dict[ArcKey, Document]:
        """The stored (internal) documents of those keys that exist."""

    @abc.abstractmethod
    def load_id_ranges(self, keys: Sequence[Tuple[str, str]]) -> Dict[Tuple[str, str], List[Tuple[int, int]]]:
        """The stored sequence ranges of those ``(user_id, source)`` pairs that have some."""

    @abc.abstractmethod
    def known_record_ids(self, keys: Sequence[Tuple[str, str]]) -> Set[Tuple[str, str]]:
        """Which of these ``(user_id, record_id)`` pairs (of the non-sequence form) are stored."""

    @abc.abstractmethod
    def write(self, changes: WriteSet) -> None:
        """Store everything in ``changes`` and its watermark atomically and durably, or raise and
        store nothing."""

    @abc.abstractmethod
    def watermark(self, log_id: str) -> int:
        """The id of the last row of raw log ``log_id`` merged (0: none, or another log)."""

    #: True when :meth:`write` may run on another thread while the lookups above are called (they
    #: must then see only committed data) and the documents of the write set change again after
    #: :meth:`freeze`. The ingest side then merges the next transaction while this one is written.
    concurrent_write = False

    #: Events one merge transaction holds at most (a raw row is never split). What a transaction
    #: touches stays in memory until it is committed, twice over while the next one is merged: on
    #: SQLite 5,000 events keep the merger at 57 MiB after 1,000,000 records of 8 per ARC (61 to 63 at
    #: 10,000, 140 at 50,000) at the same rate within noise, a commit costing little there.
    merge_batch_events = 5000

    def freeze(self, changes: WriteSet) -> None:
        """Capture the documents of ``changes`` as they are now (a store that sets
        :attr:`concurrent_write` must, since they go on changing); called just before :meth:`write`."""
        return None  # a store that writes the documents as they are needs no copy

    # --- query side ----------------------------------------------------------------------------

    @abc.abstractmethod
    def list_arcs(
        self, arc_class: Optional[str] = None, since: Optional[float] = None, limit: Optional[int] = None
    ) -> List[Document]:
        """ARC documents, most recently exported first."""

    @abc.abstractmethod
    def find_arcs(self, context_id: str) -> List[Document]:
        """The ARC documents (one per user) of the root of ``context_id`` (``root.sub`` -> ``root``)."""

    @abc.abstractmethod
    def iter_arcs(self, arc_class: Optional[str] = None) -> Iterator[Document]:
        """Every ARC document, oldest first."""

    @abc.abstractmethod
    def iter_raw_events(self, tag: Optional[str] = None) -> Iterator[Tuple[str, Event]]:
        """Every stored raw event as ``(tag, event)``, in arrival order."""

    @abc.abstractmethod
    def stats(self) -> Dict[str, Any]:
        """Counts: events, ARCs per class, events per tag, rejected, duplicates, first/last time, and
        raw rows and events not merged yet (``unmerged_rows``, ``unmerged_events``)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the database."""


def _json_default(value: Any) -> Any:
    """How values msgpack can carry but JSON cannot are kept in ARC documents."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    return repr(value)


def dump_json(value: Any, **options: Any) -> str:
    """JSON text for a document; never fails on msgpack-only values or invalid UTF-8."""
    return json.dumps(value, default=_json_default, **options)


def _pack_default(value: Any) -> Any:
    # The merger leaves msgpack extensions in records undecoded (see .event_time): packed as they came.
    if is_undecoded_extension(value):
        return pack_undecoded_extension(value)
    raise TypeError(f"can not serialize {type(value).__name__!r} object")


# strict_types: an undecoded extension is a tuple, which msgpack would pack as an array otherwise.
# Documents hold only the exact types msgpack decodes and the merger's own numbers, so nothing else
# reaches the default.
_DOCUMENT_PACKER = msgpack.Packer(
    use_bin_type=True, unicode_errors="surrogateescape", default=_pack_default, strict_types=True
)


def pack_document(document: Document) -> bytes:
    """The stored form of an ARC document: msgpack, several times faster to write than JSON (floats
    above all), and able to keep any value a record carried."""
    packed: bytes = _DOCUMENT_PACKER.pack(document)
    return packed


def _unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, unicode_errors="surrogateescape", strict_map_key=False)


#: A document whose whole packed form stays below this many bytes is kept in one blob (rewriting
#: it costs no more than writing a few rows); a larger one has its sub-context nodes as rows of
#: ``arc_nodes``, and a merge then writes the header and only the nodes it changed.
INLINE_DOCUMENT_BYTES = 16 * 1024

_NODES_OF_ARC = "SELECT path, node FROM arc_nodes WHERE user_id = ? AND context_id = ? ORDER BY ord"


def _text_of(value: Any) -> str:
    """A key column read back: text, or the bytes :func:`db_text` bound for text that was not UTF-8."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _assemble(db: sqlite3.Connection, user: Any, context: Any, blob: bytes) -> Document:
    """The internal document of an ``arcs`` row (``user`` and ``context`` as stored), with its node
    rows when it has them, and this store's bookkeeping (see ``_STORED``)."""
    header: Document = _unpack(blob)
    node_bytes = 0
    if header.get("v") == _HEADER_VERSION:
        subs: Dict[str, Any] = {}
        for path, node in db.execute(_NODES_OF_ARC, (user, context)):
            subs[_text_of(path)] = _unpack(node)
            node_bytes += len(node)
        header["v"] = FORMAT_VERSION
        header["subs"] = subs
        document = header
        stored = len(subs)
    else:  # a small document, whole in its row
        document = header
        stored = 0
    document[_STORED] = [stored, node_bytes]
    document[SIZE_KEY] = len(blob) + node_bytes
    return document


def _without_bookkeeping(document: Document) -> Document:
    return {key: value for key, value in document.items() if not key.startswith("_")}


def _pack_header(document: Document) -> bytes:
    header = {key: value for key, value in document.items() if key != "subs" and not key.startswith("_")}
    header["v"] = _HEADER_VERSION
    return pack_document(header)


def _freeze_document(
    key: ArcKey, document: Document, changed: Optional[Set[str]], nodes: List[Tuple[Any, ...]]
) -> Tuple[Any, ...]:
    """The ``arcs`` row of ``document`` and, appended to ``nodes``, the ``arc_nodes`` rows to write:
    the nodes created since the last write and those in ``changed`` (None: all)."""
    user, context = db_text(key[0]), db_text(key[1])
    subs = document["subs"]
    stored, node_bytes = document.get(_STORED) or (0, 0)
    columns = (
        user,
        context,
        _class_column(document["node"][CLASS]),
        document["first_export"],
        document["last_export"],
        document["export_count"],
    )
    if not stored:
        whole = pack_document(_without_bookkeeping(document) if SIZE_KEY in document else document)
        if len(whole) <= INLINE_DOCUMENT_BYTES:
            document[SIZE_KEY] = len(whole)
            return (*columns, whole)
    total = len(subs)
    rows: Dict[str, int] = {}
    if total > stored:  # new nodes are the last ones of the dict (it keeps insertion order)
        created = list(islice(reversed(subs), total - stored))
        for offset, path in enumerate(reversed(created)):
            rows[path] = stored + offset
    for path in subs if changed is None else changed:
        if path and path not in rows:
            rows[path] = -1  # the row exists: only its node is replaced
    for path, order in rows.items():
        blob = _DOCUMENT_PACKER.pack(subs[path])
        node_bytes += len(blob)
        nodes.append((user, context, db_text(path), order, blob))
    header = _pack_header(document)
    document[_STORED] = [total, node_bytes]
    document[SIZE_KEY] = len(header) + node_bytes
    return (*columns, header)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS arcs (
    user_id TEXT NOT NULL,
    context_id TEXT NOT NULL,
    arc_class TEXT,
    first_export REAL NOT NULL,
    last_export REAL NOT NULL,
    export_count INTEGER NOT NULL,
    document BLOB NOT NULL,  -- msgpack, see pack_document: everything but the sub-context nodes
    PRIMARY KEY (user_id, context_id)
);
-- One row per sub-context node of an ARC, so that a merge rewrites only the nodes it changed.
CREATE TABLE IF NOT EXISTS arc_nodes (
    user_id TEXT NOT NULL,
    context_id TEXT NOT NULL,
    path TEXT NOT NULL,       -- the dotted path below the root context
    ord INTEGER NOT NULL,     -- creation order within the ARC (parents before their children)
    node BLOB NOT NULL,       -- msgpack of the internal node, see merging/documents.py
    UNIQUE (user_id, context_id, path)
);
CREATE INDEX IF NOT EXISTS arcs_by_context ON arcs (context_id);
CREATE INDEX IF NOT EXISTS arcs_by_last_export ON arcs (last_export);
CREATE TABLE IF NOT EXISTS tag_stats (
    tag TEXT PRIMARY KEY,
    events INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    first_time REAL,
    last_time REAL
);
CREATE TABLE IF NOT EXISTS seen_ranges (
    user_id TEXT NOT NULL,
    source TEXT NOT NULL,
    ranges TEXT NOT NULL,
    PRIMARY KEY (user_id, source)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen_ids (
    user_id TEXT NOT NULL,
    record_id TEXT NOT NULL,
    PRIMARY KEY (user_id, record_id)
) WITHOUT ROWID;
"""

# The raw log's file.
_RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raw_chunks (
    id INTEGER PRIMARY KEY,
    received REAL NOT NULL,
    tag TEXT NOT NULL,
    events INTEGER NOT NULL,
    first_time REAL,
    last_time REAL,
    entries BLOB NOT NULL,
    auth_user TEXT  -- the user the connection authenticated as (NULL: no user authentication)
);
"""

_UPSERT_ARC = """
INSERT INTO arcs (user_id, context_id, arc_class, first_export, last_export, export_count, document)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (user_id, context_id) DO UPDATE SET
    arc_class = excluded.arc_class, first_export = excluded.first_export,
    last_export = excluded.last_export, export_count = excluded.export_count,
    document = excluded.document
"""

_UPSERT_NODE = """
INSERT INTO arc_nodes (user_id, context_id, path, ord, node) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (user_id, context_id, path) DO UPDATE SET node = excluded.node
"""

#: ``arcs.document`` without the sub-context nodes (which are rows of ``arc_nodes``). A document
#: whose packed form is at most INLINE_DOCUMENT_BYTES is kept whole instead (the internal form,
#: :data:`~.merging.documents.FORMAT_VERSION`); once it grows beyond, its next write moves its nodes to rows.
_HEADER_VERSION = 3
#: Internal bookkeeping of this store kept in a document while it is in memory (never written):
#: ``[sub-context nodes already stored as rows, bytes of those rows]``.
_STORED = "_stored"

#: meta keys of the raw log about the merger process, kept by the network side.
MERGER_RESTARTS = "merger_restarts"
MERGER_LAST_ERROR = "merger_last_error"
MERGER_LAST_ERROR_TIME = "merger_last_error_time"

_UPSERT_TAG = """
INSERT INTO tag_stats (tag, events, rejected, duplicates, first_time, last_time)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (tag) DO UPDATE SET
    events = events + excluded.events, rejected = rejected + excluded.rejected,
    duplicates = duplicates + excluded.duplicates,
    first_time = min(coalesce(first_time, excluded.first_time), coalesce(excluded.first_time, first_time)),
    last_time = max(coalesce(last_time, excluded.last_time), coalesce(excluded.last_time, last_time))
"""


def _create_schema(db: sqlite3.Connection) -> None:
    """The tables and indexes, those missing created. A database created with the report's side table
    has every ARC's row from the start; one that had ARCs before it gets them from
    :func:`fill_report_rows` (``mona report`` calls it)."""
    had_rows = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'report_rows'").fetchone()
    db.executescript(_SCHEMA + _REPORT_SCHEMA)
    if not had_rows and db.execute("SELECT 1 FROM arcs LIMIT 1").fetchone() is None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (ROWS_COMPLETE, ROWS_VERSION))


def report_rows_complete(db: sqlite3.Connection) -> bool:
    """Whether every ARC of the database has its up-to-date row in the report's side table."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (ROWS_COMPLETE,)).fetchone()
    except sqlite3.OperationalError:  # no meta table: not a database this version wrote
        return False
    return row is not None and row[0] == ROWS_VERSION


def fill_report_rows(path: os.PathLike[str] | str, batch: int = 2000) -> int:
    """Write the report's row of every ARC from its document, and mark the side table complete;
    the ARCs filled. For a database written before the side table existed (or by another version).

    Each batch of ARCs is read and written in one transaction, so a merger running meanwhile (it
    writes the rows of the ARCs it touches) never has a newer row replaced by an older one.
    """
    db = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    try:
        db.execute("PRAGMA busy_timeout=30000")
        db.executescript(_REPORT_SCHEMA)
        statements = SQLiteStatements(db)
        # it looks codes up inside the write transaction: none is taken meanwhile
        encoder = RowEncoder(db_text, statements)
        after = filled = 0
        while True:
            db.execute("BEGIN IMMEDIATE")
            try:
                arcs = db.execute(
                    "SELECT rowid, user_id, context_id, arc_class, document FROM arcs WHERE rowid > ?"
                    " ORDER BY rowid LIMIT ?",
                    (after, batch),
                ).fetchall()
                encoder.begin()
                rows = [
                    encoder.row((user, context), arc_class, _assemble(db, user, context, blob))
                    for _, user, context, arc_class, blob in arcs
                ]
                write_rows(statements, encoder, EncodedRows(rows, encoder.take()))
                if not arcs:
                    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (ROWS_COMPLETE, ROWS_VERSION))
                db.execute("COMMIT")
            except BaseException:
                encoder.invalidate()  # the codes it gave in this transaction are gone
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if not arcs:
                return filled
            after = arcs[-1][0]
            filled += len(arcs)
    finally:
        db.close()


def _watermark(db: sqlite3.Connection, log_id: str) -> int:
    rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", (_WATERMARK, _WATERMARK_LOG)))
    return int(rows.get(_WATERMARK, 0)) if rows.get(_WATERMARK_LOG) == log_id else 0


def _class_column(value: Any) -> Any:
    return label_text(value) if type(value) is str else value


def raw_chunk_rows(
    chunks: Sequence[RawChunk], key: Callable[[str], Any], label: Callable[[str], Any]
) -> List[Tuple[Any, ...]]:
    """The ``raw_chunks`` rows of ``chunks`` (received, tag, events, first and last time, entries,
    user), the same for every raw log but for how it keeps user names (``key``) and tags (``label``)."""
    return [
        (
            c.received,
            label(c.tag),
            c.events,
            _finite(c.first_time),
            _finite(c.last_time),
            c.entries,
            None if c.auth_user is None else key(c.auth_user),
        )
        for c in chunks
    ]


def rows_within(rows: Iterable[RawRow], max_events: int, max_bytes: Optional[int]) -> List[RawRow]:
    """The first of ``rows`` up to about ``max_events`` events and, when given, ``max_bytes`` of entries
    (the row that reaches a bound is the last one taken; at least one row when there is one). Rows
    after it are not asked for, so a lazy source reads no further."""
    taken: List[RawRow] = []
    events = size = 0
    for row in rows:
        taken.append(row)
        events += row.events
        size += len(row.entries)
        if events >= max_events or (max_bytes is not None and size >= max_bytes):
            break
    return taken


def bookkeeping_rows(
    changes: WriteSet, key: Callable[[str], Any], label: Callable[[str], Any]
) -> Tuple[List[Tuple[Any, ...]], List[Tuple[Any, ...]], List[Tuple[Any, ...]]]:
    """The rows a transaction writes besides the ARCs, the same for every store but for how it keeps
    ids (``key``) and tags (``label``): the record-id ranges, the single record ids, the tag counters."""
    ranges = [(key(user), key(source), json.dumps(r)) for user, source, r in changes.id_ranges]
    ids = [(key(user), key(record_id)) for user, record_id in changes.record_ids]
    tags = [
        (label(tag), c.events, c.rejected, c.duplicates, _finite(c.first_time), _finite(c.last_time))
        for tag, c in changes.tags.items()
    ]
    return ranges, ids, tags


def _finite(value: Optional[float]) -> Optional[float]:
    """A time for a REAL column: a float (integers beyond 64 bits cannot be bound), None if not finite."""
    if value is None:
        return None
    value = float(value)
    return value if value - value == 0 else None


def stats_summary(
    tags: Dict[str, Dict[str, int]],
    classes: Dict[str, int],
    event_times: Tuple[Optional[float], Optional[float]],
    merge_lag: Tuple[int, int],
    merger: Mapping[str, Any],
) -> Dict[str, Any]:
    """What ``mona stats`` shows, from what every store reads the same way: the per-tag counts, the ARCs
    per class, the first and last event time, the merge lag (raw rows, events) and the merger's meta."""
    return {
        "events": sum(t["events"] for t in tags.values()),
        "rejected": sum(t["rejected"] for t in tags.values()),
        "duplicates": sum(t["duplicates"] for t in tags.values()),
        "arcs": sum(classes.values()),
        "arcs_by_class": classes,
        "tags": tags,
        "first_event_time": event_times[0],
        "last_event_time": event_times[1],
        "unmerged_rows": int(merge_lag[0]),
        "unmerged_events": int(merge_lag[1]),
        "merger_restarts": int(merger.get(MERGER_RESTARTS, 0)),
        "merger_last_error": merger.get(MERGER_LAST_ERROR),
        "merger_last_error_time": float(merger[MERGER_LAST_ERROR_TIME]) if MERGER_LAST_ERROR_TIME in merger else None,
    }


class SQLiteStore(ArcStore):
    """The collector's embedded store: one SQLite file in WAL mode.

    ``synchronous`` is SQLite's setting: ``"FULL"`` (the default) makes every commit survive a power
    loss, ``"NORMAL"`` only a crash of the process. With ``readonly`` the file must exist and is
    opened for queries only. One instance is used by one thread at a time.
    """

    def __init__(self, path: os.PathLike[str] | str, readonly: bool = False, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreError(f"no collector database at {self.path}")
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
                    raise StoreError(f"unknown synchronous setting {synchronous!r}")
                self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
                # The WAL is checkpointed into the database as it grows (SQLite's default, every 1000
                # pages); this also cuts the file back to 64 MiB after each checkpoint that reset it.
                self._db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
                _create_schema(self._db)
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),)
                )
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("SELECT count(*) FROM arcs").fetchone()
            self._lookups = self._db
            if not readonly and str(path) != ":memory:":
                # Ingest-side lookups use a connection of their own, which sees committed data only,
                # so that a transaction can be written while the next one is merged.
                self._lookups = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
                self._lookups.execute("PRAGMA busy_timeout=5000")
                self.concurrent_write = True
            #: Encodes the report's side-table rows in the merging thread (see freeze).
            self._report_rows = RowEncoder(db_text, SQLiteStatements(self._lookups))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot use {self.path} as a collector database: {exc}") from None

    # --- merger side ---------------------------------------------------------------------------

    def watermark(self, log_id: str) -> int:
        return _watermark(self._lookups, log_id)

    def raw_log(self) -> SQLiteRawLog:
        """The raw log beside this database."""
        return SQLiteRawLog(raw_log_path(self.path))

    def _select_by_pairs(self, sql: str, keys: Sequence[Tuple[str, str]]) -> Iterator[Tuple[Any, ...]]:
        # One indexed lookup per key: SQLite does not use the primary key for a row-value IN list.
        execute = self._lookups.execute
        for user, other in keys:
            row = execute(sql, (db_text(user), db_text(other))).fetchone()
            if row is not None:
                yield row

    def load_arcs(self, keys: Sequence[ArcKey]) -> Dict[ArcKey, Document]:
        # Keys that are not valid text are bound as blobs (db_text); rows map back to the keys asked.
        wanted = {(db_text(user), db_text(context)): (user, context) for user, context in keys}
        one_by_one = [key for bound, key in wanted.items() if type(bound[1]) is not str]
        found: List[Tuple[Any, Any, bytes]] = []
        if len(keys) < 8:
            one_by_one = list(keys)
        else:
            # One statement for many keys (new ARCs mostly, found in no row): the context ids go in as
            # one JSON array, each looked up through the arcs_by_context index; users are checked here.
            texts = sorted({context for _, context in wanted if type(context) is str})
            sql = "SELECT user_id, context_id, document FROM arcs WHERE context_id IN (SELECT value FROM json_each(?))"
            found = self._lookups.execute(sql, (json.dumps(texts),)).fetchall()
        found += self._select_by_pairs(
            "SELECT user_id, context_id, document FROM arcs WHERE user_id = ? AND context_id = ?", one_by_one
        )
        return {
            wanted[(user, context)]: _assemble(self._lookups, user, context, blob)
            for user, context, blob in found
            if (user, context) in wanted
        }

    def load_id_ranges(self, keys: Sequence[Tuple[str, str]]) -> Dict[Tuple[str, str], List[Tuple[int, int]]]:
        sql = "SELECT ranges FROM seen_ranges WHERE user_id = ? AND source = ?"
        found: Dict[Tuple[str, str], List[Tuple[int, int]]] = {}
        for key in keys:
            row = self._lookups.execute(sql, (db_text(key[0]), db_text(key[1]))).fetchone()
            if row is not None:
                found[key] = [(start, end) for start, end in json.loads(row[0])]
        return found

    def known_record_ids(self, keys: Sequence[Tuple[str, str]]) -> Set[Tuple[str, str]]:
        sql = "SELECT 1 FROM seen_ids WHERE user_id = ? AND record_id = ?"
        execute = self._lookups.execute
        return {key for key in keys if execute(sql, (db_text(key[0]), db_text(key[1]))).fetchone() is not None}

    #: Whether the report's side-table rows are encoded by :meth:`write_prepared` from the documents it
    #: writes rather than by :meth:`freeze`: set on both ends of a writer process (see
    #: :mod:`~.merging.writer`), whose core then does that work instead of the merger's.
    report_rows_at_write = False

    def freeze(self, changes: WriteSet) -> None:
        nodes: List[Tuple[Any, ...]] = []
        arcs: List[Tuple[Any, ...]] = []
        if self.report_rows_at_write:
            for key, document in changes.arcs:
                arcs.append(_freeze_document(key, document, changes.changed_nodes.get(key), nodes))
            changes.frozen = (arcs, nodes, None)
            return
        # The report's rows are encoded here, in the merging thread, not in the write transaction: the
        # write thread holds the GIL while it encodes, which stops the next transaction's merge.
        encoder = self._report_rows
        encoder.begin()
        rows = []
        for key, document in changes.arcs:
            arc = _freeze_document(key, document, changes.changed_nodes.get(key), nodes)
            arcs.append(arc)
            rows.append(encoder.row((arc[0], arc[1]), arc[2], document))
        changes.frozen = (arcs, nodes, EncodedRows(rows, encoder.take()))

    def write(self, changes: WriteSet) -> None:
        self.write_prepared(self.prepare_write(changes))

    def prepare_write(self, changes: WriteSet) -> PreparedWrite:
        """The rows ``changes`` writes, as plain values (what a writer process is sent)."""
        if changes.frozen is None:
            self.freeze(changes)
        arcs, nodes, report_rows = changes.frozen
        ranges, ids, tags = bookkeeping_rows(changes, db_text, label_text)
        return PreparedWrite(
            changes.watermark,
            changes.log_id,
            arcs,
            nodes,
            report_rows,
            ranges,
            ids,
            tags,
        )

    def write_prepared(self, prepared: PreparedWrite) -> None:
        """Write what :meth:`prepare_write` made, here or in another process, in one transaction."""
        try:
            self._write(prepared)
        except sqlite3.Error as exc:
            if is_storage_failure(exc):
                raise StoreUnavailable(f"cannot write to {self.path}: {exc}") from exc
            raise

    def _write(self, prepared: PreparedWrite) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if prepared.watermark is not None:
                if _watermark(db, prepared.log_id) >= prepared.watermark:
                    raise StoreError(f"raw rows up to {prepared.watermark} are merged already (by another merger?)")
                db.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [(_WATERMARK, str(prepared.watermark)), (_WATERMARK_LOG, prepared.log_id)],
                )
            db.executemany(_UPSERT_ARC, prepared.arcs)
            db.executemany(_UPSERT_NODE, prepared.nodes)
            report_rows = prepared.report_rows
            if self.report_rows_at_write:  # encoded here, with this store's codes only, even if given
                report_rows = self._encode_written(db, prepared.arcs) if prepared.arcs else None
            if report_rows:
                write_rows(SQLiteStatements(db), self._report_rows, report_rows)
            db.executemany(
                "INSERT OR REPLACE INTO seen_ranges (user_id, source, ranges) VALUES (?, ?, ?)", prepared.ranges
            )
            db.executemany("INSERT OR IGNORE INTO seen_ids (user_id, record_id) VALUES (?, ?)", prepared.ids)
            db.executemany(_UPSERT_TAG, prepared.tags)
            db.execute("COMMIT")
        except BaseException:
            self._report_rows.invalidate()  # the codes inserted in this transaction are gone
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _encode_written(self, db: sqlite3.Connection, arcs: List[Tuple[Any, ...]]) -> Optional[EncodedRows]:
        """The side-table rows of the ``arcs`` rows just written in ``db``'s transaction: each document
        read back from its row (and its node rows, for one kept as rows, this transaction's included)."""
        encoder = self._report_rows
        encoder.begin()
        rows = []
        for user, context, arc_class, _first, _last, _count, blob in arcs:
            rows.append(encoder.row((user, context), arc_class, _assemble(db, user, context, blob)))
        return EncodedRows(rows, encoder.take())

    # --- query side ----------------------------------------------------------------------------

    def _documents(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Document]:
        """The public documents of the ``arcs`` rows ``sql`` selects (``user_id, context_id, document``)."""
        for user, context, blob in self._db.execute(sql, params):
            yield public_document(_assemble(self._db, user, context, blob))

    def list_arcs(
        self, arc_class: Optional[str] = None, since: Optional[float] = None, limit: Optional[int] = None
    ) -> List[Document]:
        clauses: List[str] = []
        params: List[Any] = []
        if arc_class is not None:
            clauses.append("arc_class = ?")
            params.append(arc_class)
        if since is not None:
            clauses.append("last_export >= ?")
            params.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(-1 if limit is None else limit)
        sql = f"SELECT user_id, context_id, document FROM arcs {where} ORDER BY last_export DESC, rowid DESC LIMIT ?"
        return list(self._documents(sql, params))

    def find_arcs(self, context_id: str) -> List[Document]:
        root = context_id.split(".", 1)[0]
        return list(
            self._documents(
                "SELECT user_id, context_id, document FROM arcs WHERE context_id = ? ORDER BY user_id", (root,)
            )
        )

    def iter_arcs(self, arc_class: Optional[str] = None) -> Iterator[Document]:
        if arc_class is None:
            return self._documents("SELECT user_id, context_id, document FROM arcs ORDER BY first_export, rowid")
        return self._documents(
            "SELECT user_id, context_id, document FROM arcs WHERE arc_class = ? ORDER BY first_export, rowid",
            (arc_class,),
        )

    def _raw_files(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection to the raw log beside this database, if it exists."""
        path = raw_log_path(self.path)
        if path.exists():
            raw = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            try:
                raw.execute("PRAGMA busy_timeout=5000")
                yield raw
            finally:
                raw.close()

    def iter_raw_events(self, tag: Optional[str] = None) -> Iterator[Tuple[str, Event]]:
        """Every raw event received, in arrival order (resent ones included: duplicates are dropped
        when merging)."""
        sql = "SELECT tag, entries FROM raw_chunks" + (" WHERE tag = ?" if tag is not None else "") + " ORDER BY id"
        for db in self._raw_files():
            for chunk_tag, entries in db.execute(sql, () if tag is None else (tag,)).fetchall():
                for event in iter_entries(entries, max(len(entries), 1)):
                    yield chunk_tag, event

    def stats(self) -> Dict[str, Any]:
        db = self._db
        tags = {
            tag: {"events": events, "rejected": rejected, "duplicates": duplicates}
            for tag, events, rejected, duplicates in db.execute(
                "SELECT tag, events, rejected, duplicates FROM tag_stats ORDER BY tag"
            )
        }
        first, last = db.execute("SELECT min(first_time), max(last_time) FROM tag_stats").fetchone()
        unmerged_rows = unmerged_events = 0
        merger: Dict[str, Any] = {}
        for raw in self._raw_files():
            merger = dict(raw.execute("SELECT key, value FROM meta"))
            log_id = merger.get("log_id", "")
            unmerged_rows, unmerged_events = raw.execute(
                "SELECT count(*), coalesce(sum(events), 0) FROM raw_chunks WHERE id > ?",
                (_watermark(db, log_id),),
            ).fetchone()
        classes = {
            ("" if arc_class is None else arc_class): count
            for arc_class, count in db.execute(
                "SELECT arc_class, count(*) FROM arcs GROUP BY arc_class ORDER BY arc_class"
            )
        }
        return stats_summary(tags, classes, (first, last), (unmerged_rows, unmerged_events), merger)

    def close(self) -> None:
        if self._lookups is not self._db:
            self._lookups.close()
            # Leave a small file behind: everything in the database, an empty WAL. Readers may keep it
            # busy: the next start or checkpoint will do it then.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()


class SQLiteRawLog(RawLog):
    """The raw log: an SQLite file (WAL) of its own, table ``raw_chunks``, created when missing.

    ``path`` is the log's file (see :func:`raw_log_path`). ``synchronous`` as for
    :class:`SQLiteStore`; the default ``FULL`` makes an appended row, hence an ack, survive a power loss.
    """

    def __init__(self, path: os.PathLike[str] | str, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"unknown synchronous setting {synchronous!r}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
            self._db.executescript(_RAW_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('log_id', ?)", (os.urandom(16).hex(),))
            (self.log_id,) = self._db.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot use {self.path} as a collector raw log: {exc}") from None

    def append(self, chunks: Sequence[RawChunk]) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO raw_chunks (received, tag, events, first_time, last_time, entries, auth_user)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                raw_chunk_rows(chunks, db_text, label_text),
            )
            (last,) = db.execute("SELECT max(id) FROM raw_chunks").fetchone()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return int(last or 0)

    def read(self, after: int, max_events: int, max_bytes: Optional[int] = None) -> List[RawRow]:
        cursor = self._db.execute(
            "SELECT id, tag, events, entries, auth_user FROM raw_chunks WHERE id > ? ORDER BY id", (after,)
        )
        try:
            return rows_within(
                (
                    RawRow(row_id, tag, count, entries, None if auth_user is None else _text_of(auth_user))
                    for row_id, tag, count, entries, auth_user in cursor
                ),
                max_events,
                max_bytes,
            )
        finally:
            cursor.close()

    def last_id(self) -> int:
        (last,) = self._db.execute("SELECT coalesce(max(id), 0) FROM raw_chunks").fetchone()
        return int(last)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # leave a small file behind when nobody else has it open
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()


def note_merger_failure(raw_path: os.PathLike[str] | str, error: str) -> None:
    """Count a death of the merger process and keep its error in the raw log's ``meta`` (what
    ``mona stats`` shows). Best effort, on a connection of its own: with the disk full this fails too,
    and the collector's log line is what tells."""
    try:
        db = sqlite3.connect(str(raw_path), isolation_level=None, timeout=5.0)
        try:
            db.execute("BEGIN IMMEDIATE")
            (restarts,) = db.execute("SELECT value FROM meta WHERE key = ?", (MERGER_RESTARTS,)).fetchone() or (0,)
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [
                    (MERGER_RESTARTS, str(int(restarts) + 1)),
                    (MERGER_LAST_ERROR, error),
                    (MERGER_LAST_ERROR_TIME, repr(time.time())),
                ],
            )
            db.execute("COMMIT")
        finally:
            db.close()
    except sqlite3.Error as exc:
        log.debug("collector: could not record the merger's failure in %s: %s", raw_path, exc)
