"""The collector's storage in PostgreSQL, shared by several collectors: :class:`PostgresRawLog` and
:class:`PostgresStore`, the same interfaces (:class:`~.store.RawLog`, :class:`~.store.ArcStore`) and the
same results as the SQLite ones, in one database named by a URL (``postgresql://user@host/dbname``).

What makes several collectors on one database safe:

* The raw log is one table, ``raw_chunks``. Its ids must become visible in the order they were
  given, or a merger that read up to id 11 would never see id 10 committed after it. Appends are
  therefore serialized by a transaction-level advisory lock taken before the id is drawn: the id
  order is the commit order. A collector acks only after its append committed.
* Merging is serialized by a session-level advisory lock: each collector runs a merger, one of them
  holds the lock and merges every collector's rows from the shared watermark; the others wait
  (:meth:`PostgresStore.try_merge_lock`) and one takes over when the holder's session ends (its
  process died, or the database restarted). The merged ARC is thus the one a single collector makes.
* The duplicate-detection state (``seen_ranges``, ``seen_ids``) is in the database, read by whichever
  merger holds the lock, so a record resent to another collector is merged once.

Ids and other text that may hold bytes that are not UTF-8 (user, context and record ids, paths) are
kept as ``bytea`` (their UTF-8 bytes, or the bytes received); labels (tag, class) as text.
The schema is created and migrated by :func:`migrate` (versioned in ``schema_version``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import psycopg

from .forward_codec import Event, iter_entries
from .merging.documents import FORMAT_VERSION, SIZE_KEY, ArcKey, Document, public_document
from .report_rows import ROWS_COMPLETE, ROWS_VERSION, EncodedRows, RowEncoder, write_rows
from .sql import LOCK_REPORT_CODES, PostgresStatements
from .store import (
    _HEADER_VERSION,
    _STORED,
    _WATERMARK,
    _WATERMARK_LOG,
    MERGER_LAST_ERROR,
    MERGER_LAST_ERROR_TIME,
    MERGER_RESTARTS,
    ArcStore,
    RawChunk,
    RawLog,
    RawRow,
    StoreError,
    StoreUnavailable,
    WriteSet,
    _freeze_document,
    _unpack,
    bookkeeping_rows,
    label_text,
    raw_chunk_rows,
    rows_within,
    stats_summary,
)

log = logging.getLogger("mona_collector")

__all__ = ["PostgresRawLog", "PostgresStore", "fill_report_rows", "migrate", "prune"]

#: The advisory lock keys (PostgreSQL's two-int form: this namespace, then the purpose).
_LOCK_SPACE = 0x6D6F6E61  # "mona"
_LOCK_MERGE = 1
_LOCK_APPEND = 2
_LOCK_MIGRATE = 3

#: meta key bumped by every prune: a merger whose cached ARCs may have been deleted starts afresh.
_PRUNE_GENERATION = "prune_generation"

#: Each step brings the schema from the version before it to its own number; never edit a step once
#: released, add one.
MIGRATIONS: List[Tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE raw_chunks (
    id bigserial PRIMARY KEY,
    received double precision NOT NULL,
    tag text NOT NULL,
    events integer NOT NULL,
    first_time double precision,
    last_time double precision,
    entries bytea NOT NULL,
    auth_user bytea
);
CREATE INDEX raw_chunks_by_received ON raw_chunks (received);
CREATE TABLE arcs (
    seq bigserial NOT NULL,
    user_id bytea NOT NULL,
    context_id bytea NOT NULL,
    arc_class text,
    first_export double precision NOT NULL,
    last_export double precision NOT NULL,
    export_count bigint NOT NULL,
    document bytea NOT NULL,
    PRIMARY KEY (user_id, context_id)
);
CREATE INDEX arcs_by_context ON arcs (context_id);
CREATE INDEX arcs_by_last_export ON arcs (last_export);
CREATE INDEX arcs_by_class ON arcs (arc_class, first_export);
CREATE TABLE arc_nodes (
    user_id bytea NOT NULL,
    context_id bytea NOT NULL,
    path bytea NOT NULL,
    ord integer NOT NULL,
    node bytea NOT NULL,
    PRIMARY KEY (user_id, context_id, path)
);
CREATE TABLE tag_stats (
    tag text PRIMARY KEY,
    events bigint NOT NULL,
    rejected bigint NOT NULL,
    duplicates bigint NOT NULL,
    first_time double precision,
    last_time double precision
);
CREATE TABLE seen_ranges (user_id bytea NOT NULL, source bytea NOT NULL, ranges text NOT NULL,
                          PRIMARY KEY (user_id, source));
CREATE TABLE seen_ids (user_id bytea NOT NULL, record_id bytea NOT NULL, PRIMARY KEY (user_id, record_id));
""",
    ),
    (
        2,
        """
CREATE TABLE report_rows (
    seq bigserial NOT NULL,
    user_id bytea NOT NULL,
    context_id bytea NOT NULL,
    arc_class text,
    arc_time double precision NOT NULL,
    fields bytea NOT NULL,
    PRIMARY KEY (user_id, context_id)
);
CREATE INDEX report_rows_by_class_time ON report_rows (arc_class, arc_time, seq);
CREATE TABLE report_names (code integer PRIMARY KEY, name bytea NOT NULL UNIQUE);
CREATE TABLE report_labels (code integer PRIMARY KEY, label bytea NOT NULL UNIQUE);
INSERT INTO meta (key, value) SELECT 'report_rows_version', '1' WHERE NOT EXISTS (SELECT 1 FROM arcs);
CREATE TABLE mona_alerts (
    rule text NOT NULL,
    arc_class text NOT NULL,
    subject text NOT NULL,
    severity text NOT NULL,
    state text NOT NULL,
    firing_streak integer NOT NULL DEFAULT 0,
    clean_streak integer NOT NULL DEFAULT 0,
    first_seen double precision,
    last_seen double precision,
    opened_at double precision,
    resolved_at double precision,
    last_evaluated double precision,
    value double precision,
    threshold double precision,
    message text,
    PRIMARY KEY (rule, arc_class, subject)
);
CREATE TABLE mona_alert_outbox (
    id bigserial PRIMARY KEY,
    sink text NOT NULL,
    payload text NOT NULL,
    created double precision NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt double precision NOT NULL,
    last_error text
);
""",
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def shown_url(url: str) -> str:
    """``url`` without its password, for log lines and errors."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://..."
    host, port, name = info.get("host", ""), info.get("port", ""), info.get("dbname", "")
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{host}{':' + str(port) if port else ''}/{name}"


def _key(value: str) -> bytes:
    """An id as ``bytea``: its UTF-8 bytes, or the bytes received for text that was not UTF-8."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")


def _text(value: Any) -> str:
    """A ``bytea`` id read back as the collector's text (invalid bytes as surrogates)."""
    return bytes(value).decode("utf-8", "surrogateescape")


def _label(value: Any) -> Optional[str]:
    """A label column (tag, class): text PostgreSQL takes (no NUL, valid UTF-8); None stays None."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return label_text(str(value)).replace("\x00", "\ufffd")


def _as_bytes(bound: Any) -> bytes:
    """What :func:`~.store.db_text` bound for SQLite (text, or bytes for text that was not UTF-8), as bytea."""
    return bound if isinstance(bound, bytes) else _key(bound)


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Tuple[Any, ...]]:
    """A connection to ``url``; a failure is a :class:`~.store.StoreUnavailable` naming the database."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot connect to {shown_url(url)}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the database failed (unreachable, the session lost, shut down, disk full,
    a deadlock or a timeout) rather than that the data was refused: what failed must be done again
    later, never skipped as bad data."""
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, psycopg.InternalError))


def schema_version(db: psycopg.Connection[Tuple[Any, ...]]) -> int:
    """The schema's version (0: no collector schema yet)."""
    found = db.execute("SELECT to_regclass('schema_version')").fetchone()
    if found is None or found[0] is None:
        return 0
    row = db.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def migrate(url: str) -> Tuple[int, int]:
    """Create or upgrade the schema (idempotent; collectors starting together take turns); the
    version before and after."""
    with contextlib.closing(connect(url)) as db:
        try:
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_SPACE, _LOCK_MIGRATE))
                before = schema_version(db)
                if before > SCHEMA_VERSION:
                    raise StoreError(
                        f"{shown_url(url)} has schema version {before}, newer than this collector's "
                        f"({SCHEMA_VERSION}): upgrade the collector"
                    )
                db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied double precision)"
                )
                for version, script in MIGRATIONS:
                    if version > before:
                        db.execute(script.encode("utf-8"))
                        db.execute("INSERT INTO schema_version VALUES (%s, %s)", (version, time.time()))
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('log_id', %s) ON CONFLICT (key) DO NOTHING",
                    (os.urandom(16).hex(),),
                )
        except psycopg.Error as exc:
            raise _store_error(url, exc) from None
    return before, SCHEMA_VERSION


def _store_error(url: str, exc: psycopg.Error) -> StoreError:
    text = f"{shown_url(url)}: {_one_line(exc)}"
    return StoreUnavailable(text) if is_connection_failure(exc) else StoreError(text)


def _check_schema(db: psycopg.Connection[Tuple[Any, ...]], url: str) -> None:
    version = schema_version(db)
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{shown_url(url)} has no collector schema (run `mona db migrate --db URL` or start a collector on it)"
            if version == 0
            else f"{shown_url(url)} has schema version {version}, this collector needs {SCHEMA_VERSION}: "
            "run `mona db migrate --db URL`"
        )


def _watermark(db: psycopg.Connection[Tuple[Any, ...]], log_id: str) -> int:
    rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN (%s, %s)", (_WATERMARK, _WATERMARK_LOG)))
    return int(rows.get(_WATERMARK, 0)) if rows.get(_WATERMARK_LOG) == log_id else 0


def _log_id(db: psycopg.Connection[Tuple[Any, ...]]) -> str:
    row = db.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
    return str(row[0]) if row is not None else ""


class PostgresRawLog(RawLog):
    """The raw log in the shared database (table ``raw_chunks``), appended to by every collector.

    The schema must exist (:func:`migrate`). A lost connection fails the append (nothing acked) and
    is opened again for the next one.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._db: Optional[psycopg.Connection[Tuple[Any, ...]]] = None
        db = self._connection()
        try:
            _check_schema(db, url)
            self.log_id = _log_id(db)
        except psycopg.Error as exc:
            raise _store_error(url, exc) from None

    def _connection(self) -> psycopg.Connection[Tuple[Any, ...]]:
        if self._db is None or self._db.closed:
            self._db = connect(self.url)
        return self._db

    def _failed(self, exc: psycopg.Error) -> StoreError:
        if is_connection_failure(exc) and self._db is not None:
            self._db.close()  # opened again for the next call
        return _store_error(self.url, exc)

    def append(self, chunks: Sequence[RawChunk]) -> int:
        rows = raw_chunk_rows(chunks, _key, _label)
        try:
            db = self._connection()
            with db.transaction(), db.cursor() as cursor:
                # Ids are drawn under this lock, released at commit: they become visible in their order.
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_SPACE, _LOCK_APPEND))
                cursor.executemany(
                    "INSERT INTO raw_chunks (received, tag, events, first_time, last_time, entries, auth_user)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    rows,
                )
                cursor.execute("SELECT currval(pg_get_serial_sequence('raw_chunks', 'id'))")
                row = cursor.fetchone()
                last = int(row[0]) if row is not None else 0
        except psycopg.Error as exc:
            raise self._failed(exc) from None
        return last

    def read(self, after: int, max_events: int, max_bytes: Optional[int] = None) -> List[RawRow]:
        try:
            return rows_within(self._pages(after), max_events, max_bytes)
        except psycopg.Error as exc:
            raise self._failed(exc) from None

    def _pages(self, after: int) -> Iterator[RawRow]:
        """The rows after id ``after``, fetched in pages, so that a long backlog is not fetched whole
        for one transaction's worth (the caller stops asking)."""
        db = self._connection()
        while True:
            page = db.execute(
                "SELECT id, tag, events, entries, auth_user FROM raw_chunks WHERE id > %s ORDER BY id LIMIT 256",
                (after,),
            ).fetchall()
            for row_id, tag, count, entries, auth_user in page:
                yield RawRow(row_id, tag, count, bytes(entries), None if auth_user is None else _text(auth_user))
            if len(page) < 256:
                return
            after = page[-1][0]

    def last_id(self) -> int:
        try:
            row = self._connection().execute("SELECT coalesce(max(id), 0) FROM raw_chunks").fetchone()
        except psycopg.Error as exc:
            raise self._failed(exc) from None
        return int(row[0]) if row is not None else 0

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


_UPSERT_ARC = """
INSERT INTO arcs (user_id, context_id, arc_class, first_export, last_export, export_count, document)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (user_id, context_id) DO UPDATE SET
    arc_class = excluded.arc_class, first_export = excluded.first_export,
    last_export = excluded.last_export, export_count = excluded.export_count, document = excluded.document
"""
_UPSERT_NODE = """
INSERT INTO arc_nodes (user_id, context_id, path, ord, node) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (user_id, context_id, path) DO UPDATE SET node = excluded.node
"""
_UPSERT_TAG = """
INSERT INTO tag_stats (tag, events, rejected, duplicates, first_time, last_time)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (tag) DO UPDATE SET
    events = tag_stats.events + excluded.events, rejected = tag_stats.rejected + excluded.rejected,
    duplicates = tag_stats.duplicates + excluded.duplicates,
    first_time = least(tag_stats.first_time, excluded.first_time),
    last_time = greatest(tag_stats.last_time, excluded.last_time)
"""
_UPSERT_META = "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
_UPSERT_RANGES = """
INSERT INTO seen_ranges (user_id, source, ranges) VALUES (%s, %s, %s)
ON CONFLICT (user_id, source) DO UPDATE SET ranges = excluded.ranges
"""
_PAIRS = "(SELECT * FROM unnest(%s::bytea[], %s::bytea[]) AS wanted (a, b))"


class PostgresStore(ArcStore):
    """ARC documents, duplicate state, counters and the watermark in the shared database.

    Three connections: one for the merger's lookups (they see committed data only, so a transaction
    can be written on another thread meanwhile), one for writes, one that holds the merge lock. With
    ``readonly`` only queries are made (a read-only session). The schema must exist (:func:`migrate`).
    """

    concurrent_write = True
    #: A commit costs a round trip and a WAL flush on the server: 10,000 events per transaction merged
    #: 76,000 records/s with one collector against 62,000 to 65,000 at 5,000 (``bench.postgres``).
    merge_batch_events = 10000

    def __init__(self, url: str, readonly: bool = False) -> None:
        self.url = url
        self.path = shown_url(url)  # what `mona` prints as "database"
        self._readonly = readonly
        self._db = connect(url)
        try:
            if readonly:
                self._db.execute("SET default_transaction_read_only = on")
            _check_schema(self._db, url)
            self._lookups = self._db if readonly else connect(url)
            #: Encodes the report's side-table rows in the merging thread (see freeze), as SQLiteStore does.
            self._report_rows = RowEncoder(_key, PostgresStatements(self._lookups))
            self._prune_generation = self._generation(self._db)
        except psycopg.Error as exc:
            self._db.close()
            raise _store_error(url, exc) from None
        self._lock_db: Optional[psycopg.Connection[Tuple[Any, ...]]] = None

    def _storage(self, exc: psycopg.Error) -> StoreError:
        return _store_error(self.url, exc)

    # --- the merge lock ------------------------------------------------------------------------

    def try_merge_lock(self) -> bool:
        """Take the merge lock if no other merger holds it (held until :meth:`close` or until this
        session ends); True once held."""
        if self._lock_db is None:
            self._lock_db = connect(self.url)
        try:
            row = self._lock_db.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_SPACE, _LOCK_MERGE)).fetchone()
        except psycopg.Error as exc:
            raise self._storage(exc) from None
        return bool(row and row[0])

    def holds_merge_lock(self) -> bool:
        """Whether this store's session still holds the merge lock (False once the session was lost)."""
        if self._lock_db is None or self._lock_db.closed:
            return False
        try:
            row = self._lock_db.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                " AND classid = %s AND objid = %s AND granted",
                (_LOCK_SPACE, _LOCK_MERGE),
            ).fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    # --- merger side ---------------------------------------------------------------------------

    @staticmethod
    def _generation(db: psycopg.Connection[Tuple[Any, ...]]) -> str:
        row = db.execute("SELECT value FROM meta WHERE key = %s", (_PRUNE_GENERATION,)).fetchone()
        return str(row[0]) if row is not None else "0"

    def raw_log(self) -> PostgresRawLog:
        """The raw log in the same database."""
        return PostgresRawLog(self.url)

    def watermark(self, log_id: str) -> int:
        try:
            return _watermark(self._lookups, log_id)
        except psycopg.Error as exc:
            raise self._storage(exc) from None

    def load_arcs(self, keys: Sequence[ArcKey]) -> Dict[ArcKey, Document]:
        if not keys:
            return {}
        wanted = {(_key(user), _key(context)): (user, context) for user, context in keys}
        users = [pair[0] for pair in wanted]
        contexts = [pair[1] for pair in wanted]
        try:
            found = self._lookups.execute(
                f"SELECT user_id, context_id, document FROM arcs WHERE (user_id, context_id) IN {_PAIRS}",
                (users, contexts),
            ).fetchall()
            return self._assemble_all(self._lookups, found, wanted)
        except psycopg.Error as exc:
            raise self._storage(exc) from None

    def _assemble_all(
        self,
        db: psycopg.Connection[Tuple[Any, ...]],
        rows: Sequence[Tuple[Any, ...]],
        wanted: Optional[Dict[Tuple[bytes, bytes], ArcKey]] = None,
    ) -> Dict[ArcKey, Document]:
        """Internal documents of ``arcs`` rows, with their node rows (one query for all of them)."""
        headers: Dict[Tuple[bytes, bytes], Tuple[Document, int]] = {}
        for user, context, blob in rows:
            key = (bytes(user), bytes(context))
            headers[key] = (_unpack(blob), len(blob))
        with_nodes = [key for key, (header, _) in headers.items() if header.get("v") == _HEADER_VERSION]
        nodes: Dict[Tuple[bytes, bytes], List[Tuple[bytes, bytes]]] = {key: [] for key in with_nodes}
        if with_nodes:
            for user, context, path, node in db.execute(
                "SELECT user_id, context_id, path, node FROM arc_nodes"
                f" WHERE (user_id, context_id) IN {_PAIRS} ORDER BY user_id, context_id, ord",
                ([key[0] for key in with_nodes], [key[1] for key in with_nodes]),
            ):
                nodes[(bytes(user), bytes(context))].append((bytes(path), bytes(node)))
        documents: Dict[ArcKey, Document] = {}
        for key, (document, size) in headers.items():
            node_bytes = 0
            stored = 0
            if key in nodes:
                subs: Dict[str, Any] = {}
                for path, node in nodes[key]:
                    subs[_text(path)] = _unpack(node)
                    node_bytes += len(node)
                document["v"] = FORMAT_VERSION
                document["subs"] = subs
                stored = len(subs)
            document[_STORED] = [stored, node_bytes]
            document[SIZE_KEY] = size + node_bytes
            name = wanted[key] if wanted is not None else (_text(key[0]), _text(key[1]))
            documents[name] = document
        return documents

    def load_id_ranges(self, keys: Sequence[Tuple[str, str]]) -> Dict[Tuple[str, str], List[Tuple[int, int]]]:
        if not keys:
            return {}
        wanted = {(_key(user), _key(source)): (user, source) for user, source in keys}
        try:
            rows = self._lookups.execute(
                f"SELECT user_id, source, ranges FROM seen_ranges WHERE (user_id, source) IN {_PAIRS}",
                ([pair[0] for pair in wanted], [pair[1] for pair in wanted]),
            ).fetchall()
        except psycopg.Error as exc:
            raise self._storage(exc) from None
        return {
            wanted[(bytes(user), bytes(source))]: [(start, end) for start, end in json.loads(ranges)]
            for user, source, ranges in rows
        }

    def known_record_ids(self, keys: Sequence[Tuple[str, str]]) -> Set[Tuple[str, str]]:
        if not keys:
            return set()
        wanted = {(_key(user), _key(record_id)): (user, record_id) for user, record_id in keys}
        try:
            rows = self._lookups.execute(
                f"SELECT user_id, record_id FROM seen_ids WHERE (user_id, record_id) IN {_PAIRS}",
                ([pair[0] for pair in wanted], [pair[1] for pair in wanted]),
            ).fetchall()
        except psycopg.Error as exc:
            raise self._storage(exc) from None
        return {wanted[(bytes(user), bytes(record_id))] for user, record_id in rows}

    def freeze(self, changes: WriteSet) -> None:
        nodes: List[Tuple[Any, ...]] = []
        arcs = []
        encoder = self._report_rows
        encoder.begin()
        rows = []
        for key, document in changes.arcs:
            user, context, arc_class, *rest = _freeze_document(key, document, changes.changed_nodes.get(key), nodes)
            arc = (_as_bytes(user), _as_bytes(context), _label(arc_class), *rest)
            arcs.append(arc)
            rows.append(encoder.row((arc[0], arc[1]), arc[2], document))
        changes.frozen = (
            arcs,
            [
                (_as_bytes(user), _as_bytes(context), _as_bytes(path), order, blob)
                for user, context, path, order, blob in nodes
            ],
            EncodedRows(rows, encoder.take()),
        )

    def write(self, changes: WriteSet) -> None:
        if changes.frozen is None:
            self.freeze(changes)
        arcs, nodes, report_rows = changes.frozen
        ranges, ids, tags = bookkeeping_rows(changes, _key, _label)
        try:
            with self._db.transaction(), self._db.cursor() as cursor:
                self._check_before_write(cursor, changes)
                if changes.watermark is not None:
                    cursor.executemany(
                        _UPSERT_META, [(_WATERMARK, str(changes.watermark)), (_WATERMARK_LOG, changes.log_id)]
                    )
                for sql, rows in (
                    (_UPSERT_ARC, arcs),
                    (_UPSERT_NODE, nodes),
                    (_UPSERT_RANGES, ranges),
                    ("INSERT INTO seen_ids (user_id, record_id) VALUES (%s, %s) ON CONFLICT DO NOTHING", ids),
                    (_UPSERT_TAG, tags),
                ):
                    if rows:
                        cursor.executemany(sql, rows)
                if report_rows.rows:
                    write_rows(PostgresStatements(cursor), self._report_rows, report_rows)
        except BaseException as exc:
            self._report_rows.invalidate()  # the codes inserted in this transaction are gone
            if isinstance(exc, psycopg.Error):
                raise self._storage(exc) from None
            raise

    def fill_report_rows(self, batch: int = 2000) -> int:
        """Write the report's row of every ARC from its document, and mark the side table complete;
        the ARCs filled (see :func:`~.store.fill_report_rows`). Each batch holds the codes' lock from
        before it reads the ARCs, so a merger's newer row is never replaced by an older one."""
        after = filled = 0
        encoder = self._report_rows
        while True:
            try:
                with self._db.transaction(), self._db.cursor() as cursor:
                    statements = PostgresStatements(cursor)
                    statements.lock(LOCK_REPORT_CODES)
                    arcs = cursor.execute(
                        "SELECT seq, user_id, context_id, arc_class, document FROM arcs WHERE seq > %s"
                        " ORDER BY seq LIMIT %s",
                        (after, batch),
                    ).fetchall()
                    documents = self._assemble_all(
                        self._db, [(user, context, blob) for _, user, context, _, blob in arcs]
                    )
                    encoder.begin()
                    rows = [
                        encoder.row((bytes(user), bytes(context)), arc_class, documents[(_text(user), _text(context))])
                        for _, user, context, arc_class, _ in arcs
                    ]
                    write_rows(statements, encoder, EncodedRows(rows, encoder.take()))
                    if not arcs:
                        cursor.execute(_UPSERT_META, (ROWS_COMPLETE, ROWS_VERSION))
            except BaseException as exc:
                encoder.invalidate()  # the codes it gave in this transaction are gone
                if isinstance(exc, psycopg.Error):
                    raise self._storage(exc) from None
                raise
            if not arcs:
                return filled
            after = arcs[-1][0]
            filled += len(arcs)

    def _check_before_write(self, cursor: psycopg.Cursor[Tuple[Any, ...]], changes: WriteSet) -> None:
        """In the write's transaction: nobody merged these rows already, and no prune deleted ARCs this
        merger may hold in memory (then it must read them again: a data error makes it start afresh)."""
        cursor.execute(
            "SELECT key, value FROM meta WHERE key IN (%s, %s, %s) FOR UPDATE",
            (_WATERMARK, _WATERMARK_LOG, _PRUNE_GENERATION),
        )
        meta = dict(cursor.fetchall())
        generation = str(meta.get(_PRUNE_GENERATION, "0"))
        if generation != self._prune_generation:
            self._prune_generation = generation
            raise StoreError("ARCs were pruned meanwhile: merging again from what the database holds")
        if changes.watermark is not None:
            merged = int(meta.get(_WATERMARK, 0)) if meta.get(_WATERMARK_LOG) == changes.log_id else 0
            if merged >= changes.watermark:
                raise StoreError(f"raw rows up to {changes.watermark} are merged already (by another merger?)")

    # --- query side ----------------------------------------------------------------------------

    def _documents(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Document]:
        """The public documents of the ``arcs`` rows ``sql`` selects, in its order, read in batches."""
        try:
            with self._db.transaction(), self._db.cursor(name="mona_documents") as cursor:
                cursor.execute(sql, params)
                while True:
                    rows = cursor.fetchmany(500)
                    if not rows:
                        return
                    documents = self._assemble_all(self._db_for_nodes(), rows)
                    for user, context, _ in rows:
                        yield public_document(documents[(_text(user), _text(context))])
        except psycopg.Error as exc:
            raise self._storage(exc) from None

    def _db_for_nodes(self) -> psycopg.Connection[Tuple[Any, ...]]:
        # The named cursor keeps the query connection busy: node rows are read on the other one.
        if self._lookups is self._db:
            self._lookups = connect(self.url)
            if self._readonly:
                self._lookups.execute("SET default_transaction_read_only = on")
        return self._lookups

    def list_arcs(
        self, arc_class: Optional[str] = None, since: Optional[float] = None, limit: Optional[int] = None
    ) -> List[Document]:
        clauses: List[str] = []
        params: List[Any] = []
        if arc_class is not None:
            clauses.append("arc_class = %s")
            params.append(_label(arc_class))
        if since is not None:
            clauses.append("last_export >= %s")
            params.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(limit)
        sql = f"SELECT user_id, context_id, document FROM arcs {where} ORDER BY last_export DESC, seq DESC LIMIT %s"
        return list(self._documents(sql, params))

    def find_arcs(self, context_id: str) -> List[Document]:
        root = context_id.split(".", 1)[0]
        sql = "SELECT user_id, context_id, document FROM arcs WHERE context_id = %s ORDER BY user_id"
        return list(self._documents(sql, (_key(root),)))

    def iter_arcs(self, arc_class: Optional[str] = None) -> Iterator[Document]:
        if arc_class is None:
            return self._documents("SELECT user_id, context_id, document FROM arcs ORDER BY first_export, seq")
        return self._documents(
            "SELECT user_id, context_id, document FROM arcs WHERE arc_class = %s ORDER BY first_export, seq",
            (_label(arc_class),),
        )

    def iter_raw_events(self, tag: Optional[str] = None) -> Iterator[Tuple[str, Event]]:
        sql = "SELECT tag, entries FROM raw_chunks" + (" WHERE tag = %s" if tag is not None else "") + " ORDER BY id"
        try:
            rows = self._db.execute(sql, () if tag is None else (_label(tag),)).fetchall()
        except psycopg.Error as exc:
            raise self._storage(exc) from None
        for chunk_tag, entries in rows:
            for event in iter_entries(bytes(entries), max(len(entries), 1)):
                yield chunk_tag, event

    def stats(self) -> Dict[str, Any]:
        try:
            return self._stats(self._db)
        except psycopg.Error as exc:
            raise self._storage(exc) from None

    def _stats(self, db: psycopg.Connection[Tuple[Any, ...]]) -> Dict[str, Any]:
        tags = {
            tag: {"events": int(events), "rejected": int(rejected), "duplicates": int(duplicates)}
            for tag, events, rejected, duplicates in db.execute(
                'SELECT tag, events, rejected, duplicates FROM tag_stats ORDER BY tag COLLATE "C"'
            )
        }
        span = db.execute("SELECT min(first_time), max(last_time) FROM tag_stats").fetchone()
        first, last = span if span is not None else (None, None)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        merged = int(meta.get(_WATERMARK, 0)) if meta.get(_WATERMARK_LOG) == meta.get("log_id") else 0
        lag = db.execute(
            "SELECT count(*), coalesce(sum(events), 0) FROM raw_chunks WHERE id > %s", (merged,)
        ).fetchone()
        unmerged_rows, unmerged_events = lag if lag is not None else (0, 0)
        classes = {
            ("" if arc_class is None else arc_class): int(count)
            for arc_class, count in db.execute(
                'SELECT arc_class, count(*) FROM arcs GROUP BY arc_class ORDER BY arc_class COLLATE "C" NULLS FIRST'
            )
        }
        return stats_summary(tags, classes, (first, last), (unmerged_rows, unmerged_events), meta)

    def close(self) -> None:
        for db in (self._lock_db, self._lookups, self._db):
            if db is not None:
                with contextlib.suppress(psycopg.Error):
                    db.close()


def note_merger_failure(url: str, error: str) -> None:
    """Count a death of a merger process with its error in ``meta`` (what ``mona stats`` shows); best
    effort: with the database gone this fails too, and the collector's log line is what tells."""
    try:
        with contextlib.closing(connect(url)) as db, db.transaction():
            db.execute(
                "INSERT INTO meta (key, value) VALUES (%s, '1') ON CONFLICT (key)"
                " DO UPDATE SET value = (meta.value::bigint + 1)::text",
                (MERGER_RESTARTS,),
            )
            db.cursor().executemany(
                _UPSERT_META, [(MERGER_LAST_ERROR, error), (MERGER_LAST_ERROR_TIME, repr(time.time()))]
            )
    except (psycopg.Error, StoreError) as exc:
        log.debug("collector: could not record the merger's failure in %s: %s", shown_url(url), exc)


def prune(url: str, cutoff: float) -> Tuple[int, int]:
    """Delete the raw rows merged already and received before ``cutoff``, and the ARCs last exported
    before it (with their node rows); the numbers of raw rows and ARCs deleted. A merger running
    meanwhile reads its ARCs again from the database (see :meth:`PostgresStore._check_before_write`)."""
    with contextlib.closing(connect(url)) as db:
        try:
            _check_schema(db, url)
            with db.transaction():
                merged = _watermark(db, _log_id(db))
                raw = db.execute("DELETE FROM raw_chunks WHERE id <= %s AND received < %s", (merged, cutoff)).rowcount
                db.execute(
                    "DELETE FROM arc_nodes n USING arcs a WHERE a.last_export < %s"
                    " AND n.user_id = a.user_id AND n.context_id = a.context_id",
                    (cutoff,),
                )
                db.execute(
                    "DELETE FROM report_rows r USING arcs a WHERE a.last_export < %s"
                    " AND r.user_id = a.user_id AND r.context_id = a.context_id",
                    (cutoff,),
                )
                arcs = db.execute("DELETE FROM arcs WHERE last_export < %s", (cutoff,)).rowcount
                if arcs:
                    db.execute(
                        "INSERT INTO meta (key, value) VALUES (%s, '1') ON CONFLICT (key)"
                        " DO UPDATE SET value = (meta.value::bigint + 1)::text",
                        (_PRUNE_GENERATION,),
                    )
        except psycopg.Error as exc:
            raise _store_error(url, exc) from None
    return raw, arcs


def fill_report_rows(url: str, batch: int = 2000) -> int:
    """:meth:`PostgresStore.fill_report_rows` of the database at ``url``."""
    store = PostgresStore(url)
    try:
        return store.fill_report_rows(batch)
    finally:
        store.close()
