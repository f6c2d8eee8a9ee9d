"""One small interface over the two database drivers, for the SQL that SQLite and PostgreSQL share.

The report's side table, the alert state and the readers of the report and the dashboard write their
SQL once, in the subset both databases understand (``?`` marks, ``INSERT ... ON CONFLICT``, no
``INSERT OR ...``), and run it through :class:`Statements`: :class:`SQLiteStatements` passes it to
``sqlite3`` as it is, :class:`PostgresStatements` gives ``psycopg`` its ``%s`` marks. Nothing here
imports ``psycopg``: the PostgreSQL side wraps a connection or cursor made elsewhere.
"""

from __future__ import annotations

import abc
import sqlite3
from typing import Any, Iterable, Optional, Sequence, Tuple, Type

#: The advisory locks (PostgreSQL's two-int form: this namespace, then the purpose) that serialize
#: what SQLite's single writer serializes by itself.
LOCK_SPACE = 0x6D6F6E61  # "mona"
LOCK_REPORT_CODES = 4
LOCK_ALERTS = 5


def driver_errors(*also: Type[BaseException]) -> Tuple[Type[BaseException], ...]:
    """The exceptions a database driver raises (``sqlite3.Error``, and ``psycopg.Error`` when
    installed), after those of ``also``: what an ``except`` of a reader catches."""
    try:
        import psycopg
    except ImportError:
        return (*also, sqlite3.Error)
    return (*also, sqlite3.Error, psycopg.Error)


class Statements(abc.ABC):
    """A connection (or a cursor in a transaction) that runs the shared SQL."""

    #: ``"sqlite"`` or ``"postgresql"``.
    kind = ""

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; a cursor to fetch its rows from (``fetchone``, ``fetchall``, ``fetchmany``)."""

    @abc.abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run one statement per row; the number of rows it changed."""

    @abc.abstractmethod
    def begin(self, lock: Optional[int] = None) -> None:
        """Start a write transaction that other writers wait for (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL:
        ``BEGIN`` and, when given, the advisory ``lock`` of that purpose, held until the end)."""

    @abc.abstractmethod
    def lock(self, purpose: int) -> None:
        """In the current transaction, wait for the other writers of ``purpose`` (SQLite: its write lock
        is held already)."""

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    def text(self, value: str) -> str:
        """``value`` as a text column takes it (PostgreSQL's text holds neither NUL nor invalid UTF-8)."""
        return value

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection."""


class SQLiteStatements(Statements):
    """An ``sqlite3`` connection in autocommit mode (``isolation_level=None``)."""

    kind = "sqlite"

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        before = self.db.total_changes
        self.db.executemany(sql, rows)
        return self.db.total_changes - before

    def begin(self, lock: Optional[int] = None) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def lock(self, purpose: int) -> None:
        return None  # BEGIN IMMEDIATE took the database's only write lock

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def close(self) -> None:
        self.db.close()


class PostgresStatements(Statements):
    """A ``psycopg`` connection (autocommit) or a cursor of one, in a transaction or not."""

    kind = "postgresql"

    def __init__(self, target: Any) -> None:
        # psycopg's Connection and Cursor both execute; only a cursor runs executemany.
        self.target = target

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.target.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        if hasattr(self.target, "executemany"):
            self.target.executemany(sql.replace("?", "%s"), rows)
            return int(self.target.rowcount)
        with self.target.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)
            return int(cursor.rowcount)

    def begin(self, lock: Optional[int] = None) -> None:
        self.target.execute("BEGIN")
        if lock is not None:
            self.lock(lock)

    def lock(self, purpose: int) -> None:
        self.target.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_SPACE, purpose))

    def text(self, value: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # surrogates: bytes that were not UTF-8 on the wire, shown replaced
            value = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        return value.replace("\x00", "\ufffd")

    def close(self) -> None:
        self.target.close()
