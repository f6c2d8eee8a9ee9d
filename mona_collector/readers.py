"""What the report, the alerts and the dashboard read from a collector database, on either store.

A :class:`Reader` holds one read-only connection and runs the shared SQL (see :mod:`.sql`): the rows
of the report's side table by class and period, ARC keys by class and period, class spans and counts,
the merge watermark and the figures of ``/metrics``. The ARC documents themselves come from the
database's :class:`~.store.ArcStore` (:meth:`Reader.store`). :class:`SQLiteReader` and
:class:`PostgresReader` differ only where the two databases do: the column that orders rows written
at the same time, how ids and classes are bound, how a list of codes is passed, and where the raw
log lives. Use :func:`~.databases.open_reader` to get the right one.
"""

from __future__ import annotations

import abc
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .databases import open_store
from .merging.documents import ArcKey
from .report_rows import ROWS_COMPLETE, ROWS_VERSION
from .sql import PostgresStatements, SQLiteStatements, Statements
from .store import ArcStore, StoreError, db_text, fill_report_rows, label_text, raw_log_path

#: Everything a merged-counts query returns: records processed, rejected, duplicates, ARCs per
#: class, the raw log id and the watermark.
MergedCounts = Tuple[int, int, int, Dict[str, int], str, int]


def text_of(value: object) -> str:
    """A key or label column read back as the collector's text (bytes that were not UTF-8 as surrogates)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


class Reader(abc.ABC):
    """Read-only queries of one collector database; :meth:`close` when done."""

    #: The column that orders rows of equal time in the order they were first written.
    order = "rowid"

    def __init__(self, db: Any, statements: Statements, name: str) -> None:
        self.db = db
        self.statements = statements
        #: The database for messages (a path, or a URL without its password).
        self.name = name
        self._store: Optional[ArcStore] = None

    # --- what differs ---

    @abc.abstractmethod
    def bind_key(self, value: str) -> Any:
        """A user or context id as its column is compared."""

    @abc.abstractmethod
    def bind_class(self, value: str) -> Any:
        """An ARC class as its column is compared."""

    @abc.abstractmethod
    def _codes(self, codes: List[int]) -> Tuple[str, Any]:
        """The condition ``code`` is one of ``codes``, and its parameter."""

    @abc.abstractmethod
    def batches(self, sql: str, params: Sequence[Any], size: int) -> Iterator[List[Any]]:
        """The rows of a query in lists of ``size``, without holding them all."""

    @abc.abstractmethod
    def fill_rows(self) -> None:
        """Write the side-table rows missing (a database written before it existed); raises the
        driver's error or :class:`~.store.StoreError` when it cannot be written."""

    @abc.abstractmethod
    def has_table(self, name: str) -> bool:
        """Whether the table exists."""

    @abc.abstractmethod
    def raw_counts(self, log_id: str, merged_up_to: int) -> Tuple[int, int, float]:
        """Records received (every one the raw log holds), records not merged yet, and the age in
        seconds of the oldest row not merged yet (0 when everything is merged)."""

    @abc.abstractmethod
    def database_bytes(self) -> int:
        """The bytes the database takes."""

    # --- shared ---

    def store(self) -> ArcStore:
        """The ARC store of the same database, read-only (opened once)."""
        if self._store is None:
            self._store = open_store(self.db, readonly=True)
        return self._store

    def one(self, sql: str, params: Sequence[Any] = ()) -> Tuple[Any, ...]:
        row: Tuple[Any, ...] = self.statements.execute(sql, params).fetchone()
        return row

    def rows_complete(self) -> bool:
        """Whether every ARC has its up-to-date row in the report's side table."""
        row = self.statements.execute("SELECT value FROM meta WHERE key = ?", (ROWS_COMPLETE,)).fetchone()
        return row is not None and row[0] == ROWS_VERSION

    def arc_count(self) -> int:
        return int(self.one("SELECT count(*) FROM arcs")[0])

    def row_batches(self, arc_class: str, start: float, end: float, size: int) -> Iterator[List[bytes]]:
        """The side-table record blobs of the class's ARCs of time in [start, end), oldest first."""
        sql = (
            "SELECT fields FROM report_rows WHERE arc_class = ? AND arc_time >= ? AND arc_time < ?"
            f" ORDER BY arc_time, {self.order}"
        )
        for rows in self.batches(sql, (self.bind_class(arc_class), start, end), size):
            yield [bytes(blob) for (blob,) in rows]

    def texts(self, table: str, column: str, codes: List[int]) -> Dict[int, str]:
        """The names or labels of these codes (those found)."""
        condition, param = self._codes(codes)
        rows = self.statements.execute(f"SELECT code, {column} FROM {table} WHERE {condition}", (param,))
        return {int(code): text_of(text) for code, text in rows.fetchall()}

    def class_keys(self, arc_class: str, start: float, end: float, size: int) -> Iterator[List[ArcKey]]:
        """The keys of the class's ARCs first exported in [start, end), in batches, oldest first."""
        sql = (
            "SELECT user_id, context_id FROM arcs WHERE arc_class = ? AND first_export >= ? AND first_export < ?"
            f" ORDER BY first_export, {self.order}"
        )
        for rows in self.batches(sql, (self.bind_class(arc_class), start, end), size):
            yield [(text_of(user), text_of(context)) for user, context in rows]

    def class_span(self, arc_class: str) -> Tuple[Optional[float], Optional[float]]:
        """The first and the last time of the class's side-table rows (None, None: it has none)."""
        first, last = self.one(
            "SELECT min(arc_time), max(arc_time) FROM report_rows WHERE arc_class = ?", (self.bind_class(arc_class),)
        )
        return first, last

    def class_counts(self, side_table: bool = True) -> Dict[str, int]:
        """ARCs per class (those without one left out), from the side table or the ARCs."""
        table = "report_rows" if side_table else "arcs"
        rows = self.statements.execute(
            f"SELECT arc_class, count(*) FROM {table} WHERE arc_class IS NOT NULL GROUP BY arc_class"
        )
        return {text_of(arc_class): int(count) for arc_class, count in rows.fetchall()}

    def arcs_between(self, arc_class: str, start: float, end: float) -> int:
        """How many ARCs of the class were first exported in [start, end)."""
        sql = "SELECT count(*) FROM arcs WHERE arc_class = ? AND first_export >= ? AND first_export < ?"
        return int(self.one(sql, (self.bind_class(arc_class), start, end))[0])

    def last_arc_time(self, arc_class: str, before: float) -> Optional[float]:
        """The latest first export of the class's ARCs before ``before`` (None: none)."""
        sql = "SELECT max(first_export) FROM arcs WHERE arc_class = ? AND first_export < ?"
        (last,) = self.one(sql, (self.bind_class(arc_class), before))
        return None if last is None else float(last)

    def watermark(self) -> Tuple[str, str]:
        """The merge watermark (raw log id, last merged row): it moves with every merge."""
        rows = self.statements.execute(
            "SELECT key, value FROM meta WHERE key IN ('merged_up_to', 'merged_log_id')"
        ).fetchall()
        found = dict(rows)
        return (str(found.get("merged_log_id", "")), str(found.get("merged_up_to", "")))

    def merged_counts(self) -> MergedCounts:
        """Records processed, rejected, duplicates, ARCs per class, the raw log id and the watermark."""
        events, rejected, duplicates = self.one(
            "SELECT coalesce(sum(events), 0), coalesce(sum(rejected), 0), coalesce(sum(duplicates), 0) FROM tag_stats"
        )
        log_id, merged = self.watermark()
        return int(events), int(rejected), int(duplicates), self.class_counts(False), log_id, int(merged or 0)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        self.statements.close()


class SQLiteReader(Reader):
    """A collector's SQLite file, opened read-only (the raw log is the file beside it)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise StoreError(f"no collector database at {path}")
        try:
            db = _read_only(path)
            db.execute("SELECT count(*) FROM arcs").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use {path} as a collector database: {exc}") from None
        super().__init__(path, SQLiteStatements(db), str(path))
        self.path = path

    def bind_key(self, value: str) -> Any:
        return db_text(value)

    def bind_class(self, value: str) -> Any:
        return label_text(value)

    def _codes(self, codes: List[int]) -> Tuple[str, Any]:
        return "code IN (SELECT value FROM json_each(?))", json.dumps(codes)

    def batches(self, sql: str, params: Sequence[Any], size: int) -> Iterator[List[Any]]:
        cursor = self.statements.execute(sql, params)
        try:
            while True:
                rows = cursor.fetchmany(size)
                if not rows:
                    return
                yield rows
        finally:
            cursor.close()

    def fill_rows(self) -> None:
        fill_report_rows(self.path)

    def has_table(self, name: str) -> bool:
        return self.statements.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None

    def raw_counts(self, log_id: str, merged_up_to: int) -> Tuple[int, int, float]:
        path = raw_log_path(self.path)
        if not path.exists():
            return 0, 0, 0.0
        raw = _read_only(path)
        try:
            received = int(raw.execute("SELECT coalesce(sum(events), 0) FROM raw_chunks").fetchone()[0])
            own_id = dict(raw.execute("SELECT key, value FROM meta")).get("log_id", "")
            after = merged_up_to if own_id == log_id else 0
            pending, oldest = raw.execute(
                "SELECT coalesce(sum(events), 0), min(received) FROM raw_chunks WHERE id > ?", (after,)
            ).fetchone()
        finally:
            raw.close()
        return received, int(pending), _age(oldest)

    def database_bytes(self) -> int:
        """The bytes of the ARC database and the raw log, with their write-ahead logs."""
        raw = raw_log_path(self.path)
        paths = [self.path, raw] + [path.with_name(path.name + "-wal") for path in (self.path, raw)]
        return sum(_file_size(path) for path in paths)


class PostgresReader(Reader):
    """A shared PostgreSQL database, read in a read-only session (the raw log is its ``raw_chunks``)."""

    order = "seq"

    def __init__(self, url: str) -> None:
        import psycopg

        from . import postgres_store as pg

        self._pg = pg
        connection = pg.connect(url)
        try:
            connection.execute("SET default_transaction_read_only = on")
            pg._check_schema(connection, url)
        except psycopg.Error as exc:
            connection.close()
            raise pg._store_error(url, exc) from None
        except StoreError:
            connection.close()
            raise
        super().__init__(url, PostgresStatements(connection), pg.shown_url(url))
        self._connection = connection
        self.url = url

    def bind_key(self, value: str) -> Any:
        return self._pg._key(value)

    def bind_class(self, value: str) -> Any:
        return self._pg._label(value)

    def _codes(self, codes: List[int]) -> Tuple[str, Any]:
        return "code = ANY(?)", codes

    def batches(self, sql: str, params: Sequence[Any], size: int) -> Iterator[List[Any]]:
        # A server-side cursor (it needs a transaction): the rows come batch by batch.
        with self._connection.transaction(), self._connection.cursor(name="mona_reader") as cursor:
            cursor.execute(sql.replace("?", "%s"), params)
            while True:
                rows = cursor.fetchmany(size)
                if not rows:
                    return
                yield rows

    def fill_rows(self) -> None:
        self._pg.fill_report_rows(self.url)

    def has_table(self, name: str) -> bool:
        return bool(self.one("SELECT to_regclass(?) IS NOT NULL", (name,))[0])

    def raw_counts(self, log_id: str, merged_up_to: int) -> Tuple[int, int, float]:
        (received,) = self.one("SELECT coalesce(sum(events), 0) FROM raw_chunks")
        own_id = self.one("SELECT coalesce(max(value), '') FROM meta WHERE key = 'log_id'")[0]
        after = merged_up_to if own_id == log_id else 0
        pending, oldest = self.one(
            "SELECT coalesce(sum(events), 0), min(received) FROM raw_chunks WHERE id > ?", (after,)
        )
        return int(received), int(pending), _age(oldest)

    def database_bytes(self) -> int:
        return int(self.one("SELECT pg_database_size(current_database())")[0])


def _read_only(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _age(oldest: Optional[float]) -> float:
    return max(0.0, time.time() - float(oldest)) if oldest is not None else 0.0
