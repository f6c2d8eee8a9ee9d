"""Where ``--db`` points: an SQLite file (the default, one machine) or a PostgreSQL URL (several
collectors on one database). Every command and the collector open their storage through these
functions, so that what a store is stays decided in one place.

PostgreSQL support needs ``psycopg`` (the ``postgres`` extra); it is imported only when a URL is used.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple, Union

from .store import (
    ENV_DB,
    ArcStore,
    RawLog,
    SQLiteRawLog,
    SQLiteStore,
    StoreError,
    default_db_path,
    note_merger_failure,
    raw_log_path,
)

if TYPE_CHECKING:
    from types import ModuleType

    from .readers import Reader

#: ``--db`` as given: a path of an SQLite file, or a ``postgresql://`` URL (kept as text: a Path would
#: fold its ``//``).
Database = Union[Path, str]


def is_postgres_url(db: object) -> bool:
    """Whether ``db`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def resolve_db(db: Optional[Union[str, os.PathLike[str]]]) -> Database:
    """``--db``, else ``$MONA_COLLECTOR_DB``, else the per-user default file; URLs stay text."""
    if db is None or db == "":
        explicit = os.environ.get(ENV_DB)
        if explicit and is_postgres_url(explicit):
            return explicit
        return default_db_path()
    if is_postgres_url(db):
        return str(db)
    return Path(db).expanduser()


def _postgres() -> ModuleType:
    try:
        from . import postgres_store
    except ImportError as exc:
        raise StoreError(
            f"a PostgreSQL --db needs the psycopg package ({exc}): pip install 'mona-client[postgres]'"
        ) from None
    return postgres_store


def describe(db: Database) -> str:
    """``db`` for a log line or a message (a URL without its password)."""
    if is_postgres_url(db):
        shown: str = _postgres().shown_url(str(db))
        return shown
    return str(db)


def open_store(db: Database, readonly: bool = False, synchronous: str = "FULL") -> ArcStore:
    """The ARC store of ``db``: :class:`~.store.SQLiteStore` or ``PostgresStore``."""
    if is_postgres_url(db):
        store: ArcStore = _postgres().PostgresStore(str(db), readonly=readonly)
        return store
    return SQLiteStore(db, readonly=readonly, synchronous=synchronous)


def open_reader(db: Database) -> Reader:
    """The read-only queries of the report, the alerts and the dashboard on ``db`` (see :mod:`.readers`)."""
    from .readers import PostgresReader, SQLiteReader

    if is_postgres_url(db):
        return PostgresReader(str(db))
    return SQLiteReader(Path(db))


def open_raw_log(db: Database, synchronous: str = "FULL") -> RawLog:
    """The raw log of ``db``: the file beside an SQLite database, or the table of a PostgreSQL one."""
    if is_postgres_url(db):
        raw: RawLog = _postgres().PostgresRawLog(str(db))
        return raw
    return SQLiteRawLog(raw_log_path(db), synchronous=synchronous)


def migrate(db: Database, synchronous: str = "FULL") -> Tuple[int, int]:
    """Create or upgrade the collector's schema in ``db`` (idempotent); the versions before and after."""
    if is_postgres_url(db):
        versions: Tuple[int, int] = _postgres().migrate(str(db))
        return versions
    from .sqlite_migrations import migrate_sqlite

    return migrate_sqlite(Path(db), synchronous)


def note_failure(db: Database, error: str) -> None:
    """Count a death of the merger with its error where ``mona stats`` finds it (best effort)."""
    if is_postgres_url(db):
        _postgres().note_merger_failure(str(db), error)
    else:
        note_merger_failure(raw_log_path(db), error)


def prune(db: Database, older_than: float, now: Optional[float] = None) -> Tuple[int, int]:
    """Delete raw rows already merged and received more than ``older_than`` seconds ago, and ARCs last
    exported before then; the numbers of raw rows and ARCs deleted."""
    cutoff = (time.time() if now is None else now) - older_than
    if is_postgres_url(db):
        counts: Tuple[int, int] = _postgres().prune(str(db), cutoff)
        return counts
    from .sqlite_migrations import prune_sqlite

    return prune_sqlite(Path(db), cutoff)
