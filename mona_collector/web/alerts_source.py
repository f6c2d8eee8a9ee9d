"""The alerts the dashboard shows, read from the collector database's ``alerts`` table when it has one.

This is the only place the dashboard learns about alerts: every page and API call goes through
:func:`list_alerts`. A database without the table (no alert rule ever ran) simply has no alerts.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Dict, List

#: At most this many alerts are returned, newest first.
MAX_ALERTS = 1000


def _connect(db_path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def list_alerts(db_path: Path, open_only: bool) -> List[Dict[str, Any]]:
    """The alerts in the database, newest first, each a dict of the table's columns; [] when the
    database has no ``alerts`` table. ``open_only`` keeps the alerts not resolved yet."""
    try:
        db = _connect(db_path)
    except sqlite3.Error:
        return []
    try:
        exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alerts'").fetchone()
        if exists is None:
            return []
        columns = [row[1] for row in db.execute("PRAGMA table_info(alerts)")]
        where = " WHERE resolved_at IS NULL" if open_only and "resolved_at" in columns else ""
        order = " ORDER BY fired_at DESC" if "fired_at" in columns else " ORDER BY rowid DESC"
        cursor = db.execute(f"SELECT * FROM alerts{where}{order} LIMIT ?", (MAX_ALERTS,))
        names = [description[0] for description in cursor.description]
        return [dict(zip(names, row)) for row in cursor]
    except sqlite3.Error:
        return []
    finally:
        db.close()


def open_alerts_by_class(db_path: Path) -> Dict[str, int]:
    """How many open alerts each ARC class has."""
    counts: Dict[str, int] = {}
    for alert in list_alerts(db_path, open_only=True):
        arc_class = alert.get("arc_class")
        if isinstance(arc_class, str):
            counts[arc_class] = counts.get(arc_class, 0) + 1
    return counts
