"""Alert state in the collector's database: tables of their own, created here, next to the ARCs.

``mona_alerts`` holds one row per (rule, class, subject): its state (``ok``, ``pending``: firing but
not yet for ``open_after`` evaluations, ``open``, ``resolved``), the streaks of firing and clean
evaluations, when it was first and last seen firing in its current episode, when it opened and
resolved, and the value and threshold of the last firing evaluation. ``mona_alert_outbox`` holds the
notifications (an alert opened or resolved) not yet delivered to a sink: written in the same
transaction as the state they report, so a notification is never lost between the two.

The tables are in the SQLite file (created here) or in the PostgreSQL database (created by its
schema migration); the SQL is the same on both (see :mod:`mona_collector.sql`), and an evaluation's
transaction holds the database's write lock (SQLite) or an advisory lock (PostgreSQL), so two
evaluations never interleave.

Hysteresis: an alert opens after ``open_after`` consecutive firing evaluations and resolves after
``resolve_after`` consecutive clean ones; while open it does not notify again. An evaluation without a
value (``firing`` None) leaves the streaks as they are.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..databases import Database, is_postgres_url
from ..sql import LOCK_ALERTS, PostgresStatements, SQLiteStatements, Statements
from .evaluate import Evaluation
from .rules import SEGMENT, AlertConfig, Rule

log = logging.getLogger("mona_collector.alerts")

OK, PENDING, OPEN, RESOLVED = "ok", "pending", "open", "resolved"
OPENED, RESOLVED_EVENT = "open", "resolve"

SCHEMA = """
CREATE TABLE IF NOT EXISTS mona_alerts (
    rule TEXT NOT NULL,
    arc_class TEXT NOT NULL,
    subject TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    firing_streak INTEGER NOT NULL DEFAULT 0,
    clean_streak INTEGER NOT NULL DEFAULT 0,
    first_seen REAL,
    last_seen REAL,
    opened_at REAL,
    resolved_at REAL,
    last_evaluated REAL,
    value REAL,
    threshold REAL,
    message TEXT,
    PRIMARY KEY (rule, arc_class, subject)
);
CREATE TABLE IF NOT EXISTS mona_alert_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT
);
"""
_COLUMNS = (
    "rule",
    "arc_class",
    "subject",
    "severity",
    "state",
    "firing_streak",
    "clean_streak",
    "first_seen",
    "last_seen",
    "opened_at",
    "resolved_at",
    "last_evaluated",
    "value",
    "threshold",
    "message",
)


def connect(db_path: Database) -> Statements:
    """A connection to the database with the alert tables (the database must exist: the collector or
    ``mona`` made it; a PostgreSQL one has them from its schema). On SQLite, waits up to 30 s for a
    lock the merger holds."""
    if is_postgres_url(db_path):
        from .. import postgres_store

        url = str(db_path)
        connection = postgres_store.connect(url)
        try:
            postgres_store._check_schema(connection, url)
        except BaseException:
            connection.close()
            raise
        return PostgresStatements(connection)
    if not Path(db_path).is_file():
        raise FileNotFoundError(f"no database {db_path}")
    db = sqlite3.connect(str(db_path), timeout=30, isolation_level=None)
    db.execute("PRAGMA busy_timeout=30000")
    db.executescript(SCHEMA)
    return SQLiteStatements(db)


@dataclass
class AlertRow:
    """One row of ``mona_alerts``."""

    rule: str
    arc_class: str
    subject: str
    severity: str
    state: str = OK
    firing_streak: int = 0
    clean_streak: int = 0
    first_seen: Optional[float] = None
    last_seen: Optional[float] = None
    opened_at: Optional[float] = None
    resolved_at: Optional[float] = None
    last_evaluated: Optional[float] = None
    value: Optional[float] = None
    threshold: Optional[float] = None
    message: Optional[str] = None

    def key(self) -> Tuple[str, str, str]:
        return (self.rule, self.arc_class, self.subject)

    def as_json(self) -> Dict[str, Any]:
        return {column: getattr(self, column) for column in _COLUMNS}


def read_alerts(db: Statements, only_open: bool = False) -> List[AlertRow]:
    sql = f"SELECT {', '.join(_COLUMNS)} FROM mona_alerts"
    if only_open:
        sql += " WHERE state = 'open'"
    rows = db.execute(sql + " ORDER BY state != 'open', arc_class, rule, subject").fetchall()
    return [AlertRow(*row) for row in rows]


_KEY_COLUMNS = ("rule", "arc_class", "subject")
_UPSERT_ALERT = (
    f"INSERT INTO mona_alerts ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
    f" ON CONFLICT ({', '.join(_KEY_COLUMNS)}) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in _COLUMNS if column not in _KEY_COLUMNS)
)


def _save(db: Statements, row: AlertRow) -> None:
    values = [getattr(row, column) for column in _COLUMNS]
    db.execute(_UPSERT_ALERT, [db.text(value) if isinstance(value, str) else value for value in values])


def _step(row: AlertRow, rule: Optional[Rule], firing: Optional[bool], now: float) -> Optional[str]:
    """Move ``row`` by one evaluation; returns the notification it makes (opened, resolved) or None."""
    row.last_evaluated = now
    if firing is None:
        return None
    open_after = rule.open_after if rule is not None else 1
    resolve_after = rule.resolve_after if rule is not None else 1
    if firing:
        row.firing_streak += 1
        row.clean_streak = 0
        if row.state in (OK, RESOLVED):
            row.state, row.first_seen, row.opened_at, row.resolved_at = PENDING, now, None, None
        row.last_seen = now
        if row.state == PENDING and row.firing_streak >= open_after:
            row.state, row.opened_at = OPEN, now
            return OPENED
        return None
    row.clean_streak += 1
    row.firing_streak = 0
    if row.state == PENDING:
        row.state = OK
    elif row.state == OPEN and row.clean_streak >= resolve_after:
        row.state, row.resolved_at = RESOLVED, now
        return RESOLVED_EVENT
    return None


def notification(row: AlertRow, event: str) -> Dict[str, Any]:
    """What the sinks receive: the event and the alert as it is after it."""
    return {"event": event, "id": f"{row.rule}|{row.arc_class}|{row.subject}|{row.opened_at}", **row.as_json()}


def apply(
    db: Statements, config: AlertConfig, evaluation: Evaluation, now: Optional[float] = None
) -> List[Dict[str, Any]]:
    """Store one evaluation: move every alert's state, and queue a notification per opening and
    resolution for every sink (one transaction). Returns the notifications.

    A segment alert that the evaluation no longer lists is clean (the report no longer flags it);
    an alert of a rule that is gone from the config resolves."""
    now = time.time() if now is None else now
    observations = evaluation.observations
    rules = {rule.name: rule for rule in config.rules}
    events: List[Dict[str, Any]] = []
    db.begin(LOCK_ALERTS)
    try:
        existing = {row.key(): row for row in read_alerts(db)}
        seen = set()
        for item in observations:
            key = (item.rule.name, item.arc_class, item.subject)
            seen.add(key)
            row = existing.get(key) or AlertRow(item.rule.name, item.arc_class, item.subject, item.rule.severity)
            row.severity = item.rule.severity
            if item.firing:
                row.value, row.threshold = item.value, item.threshold
            row.message = item.message
            _record(db, row, _step(row, item.rule, item.firing, now), events)
        for key, row in existing.items():
            if key in seen or row.state in (OK, RESOLVED):
                continue
            rule = rules.get(row.rule)
            if rule is None:  # the rule was removed from the config
                row.message = "the rule is no longer in the config"
                _record(db, row, _close(row, now), events)
            elif rule.subject == SEGMENT and (row.rule, row.arc_class) in evaluation.evaluated:
                row.message = "no longer flagged"
                _record(db, row, _step(row, rule, False, now), events)
        _queue(db, config, events, now)
        db.commit()
    except BaseException:
        db.rollback()
        raise
    for event in events:
        _log(event)
    return events


def _close(row: AlertRow, now: float) -> Optional[str]:
    row.last_evaluated = now
    if row.state == OPEN:
        row.state, row.resolved_at = RESOLVED, now
        return RESOLVED_EVENT
    row.state = OK
    return None


def _record(db: Statements, row: AlertRow, event: Optional[str], events: List[Dict[str, Any]]) -> None:
    _save(db, row)
    if event is not None:
        events.append(notification(row, event))


def _queue(db: Statements, config: AlertConfig, events: Iterable[Dict[str, Any]], now: float) -> None:
    """Put each notification in the outbox of every sink that delivers (the log is written at once),
    keeping at most ``outbox_limit`` rows: the oldest go first, each dropped one logged."""
    sinks = [sink.name for sink in config.sinks if sink.kind != "log"]
    for event in events:
        payload = json.dumps(event, allow_nan=False, default=str)
        for sink in sinks:
            db.execute(
                "INSERT INTO mona_alert_outbox (sink, payload, created, next_attempt) VALUES (?, ?, ?, ?)",
                (sink, payload, now, now),
            )
    (count,) = db.execute("SELECT count(*) FROM mona_alert_outbox").fetchone()
    excess = count - config.outbox_limit
    if excess > 0:
        dropped = db.execute("SELECT id, sink FROM mona_alert_outbox ORDER BY id LIMIT ?", (excess,)).fetchall()
        db.executemany("DELETE FROM mona_alert_outbox WHERE id = ?", [(row_id,) for row_id, _ in dropped])
        log.error(
            "alerts: the outbox holds more than %d notifications: dropped the %d oldest (sinks: %s)",
            config.outbox_limit,
            excess,
            ", ".join(sorted({sink for _, sink in dropped})),
        )


def _log(event: Dict[str, Any]) -> None:
    """The log sink: one line per opening or resolution."""
    level = logging.WARNING if event["event"] == OPENED else logging.INFO
    log.log(
        level,
        "alert %s: [%s] %s, class %s, %s: value %s, threshold %s",
        "OPEN" if event["event"] == OPENED else "resolved",
        event["severity"],
        event["rule"],
        event["arc_class"],
        event["subject"],
        event["value"],
        event["threshold"],
    )
