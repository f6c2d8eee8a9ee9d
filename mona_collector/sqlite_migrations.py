"""``mona db migrate`` and ``mona prune`` on the SQLite store (the PostgreSQL ones are in
:mod:`.postgres_store`).

The SQLite schema is created by opening the store (``CREATE TABLE IF NOT EXISTS``); migrating records
its version in a ``schema_version`` table, as PostgreSQL does, so that both say the same.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import time
from pathlib import Path
from typing import IO, Tuple

from .store import _SCHEMA_VERSION, _WATERMARK, _WATERMARK_LOG, SQLiteRawLog, SQLiteStore, StoreError, raw_log_path


def _recorded_version(db: sqlite3.Connection) -> int:
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" in tables:
        (version,) = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        return int(version)
    if "meta" in tables:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row is not None else 0
    return 0


def migrate_sqlite(path: Path, synchronous: str = "FULL") -> Tuple[int, int]:
    """Create or upgrade the database and its raw log; the schema versions before and after."""
    before = 0
    if path.exists():
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            try:
                before = _recorded_version(db)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot use {path} as a collector database: {exc}") from None
    SQLiteStore(path, synchronous=synchronous).close()  # creates the tables that are missing
    SQLiteRawLog(raw_log_path(path), synchronous=synchronous).close()
    with contextlib.closing(sqlite3.connect(str(path), isolation_level=None, timeout=30)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL)")
        db.execute("INSERT OR IGNORE INTO schema_version VALUES (?, ?)", (_SCHEMA_VERSION, time.time()))
    return before, _SCHEMA_VERSION


def _merger_lock(path: Path) -> IO[str]:
    """The merger's lock of ``path``, taken at once, or a StoreError when a collector runs on it."""
    handle = open(f"{path}.merger.lock", "a+", encoding="utf-8")  # noqa: SIM115 - held until the caller closes it
    try:
        import fcntl
    except ImportError:
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise StoreError(
                f"a collector is running on {path}: stop it before pruning (its merger keeps ARCs in memory)"
            ) from None
        raise
    return handle


def prune_sqlite(path: Path, cutoff: float) -> Tuple[int, int]:
    """Delete merged raw rows received before ``cutoff`` and ARCs last exported before it; the counts.

    The newest raw row is always kept: SQLite gives a new row the largest id plus one, and an id at
    or below the watermark would never be merged.
    """
    if not path.is_file():
        raise StoreError(f"no collector database at {path}")
    with contextlib.closing(_merger_lock(path)):
        with contextlib.closing(sqlite3.connect(str(path), isolation_level=None, timeout=30)) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "DELETE FROM arc_nodes WHERE (user_id, context_id) IN"
                " (SELECT user_id, context_id FROM arcs WHERE last_export < ?)",
                (cutoff,),
            )
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'report_rows'").fetchone() is not None:
                db.execute(
                    "DELETE FROM report_rows WHERE (user_id, context_id) IN"
                    " (SELECT user_id, context_id FROM arcs WHERE last_export < ?)",
                    (cutoff,),
                )
            arcs = db.execute("DELETE FROM arcs WHERE last_export < ?", (cutoff,)).rowcount
            db.execute("COMMIT")
            meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", (_WATERMARK, _WATERMARK_LOG)))
        raw_path = raw_log_path(path)
        if not raw_path.is_file():
            return 0, arcs
        with contextlib.closing(sqlite3.connect(str(raw_path), isolation_level=None, timeout=30)) as raw:
            row = raw.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
            merged = int(meta.get(_WATERMARK, 0)) if row is not None and meta.get(_WATERMARK_LOG) == row[0] else 0
            deleted = raw.execute(
                "DELETE FROM raw_chunks WHERE id <= ? AND received < ? AND id < (SELECT max(id) FROM raw_chunks)",
                (merged, cutoff),
            ).rowcount
    return deleted, arcs
