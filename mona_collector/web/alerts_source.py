"""The alerts the dashboard shows, read from the alert state that ``mona alerts check`` and
``mona collect --evaluate-every`` keep in the collector database (see :mod:`mona_collector.alerts.state`).

This is the only place the dashboard learns about alerts: every page and API call goes through
:func:`list_alerts`. A database in which no rule was ever evaluated simply has no alerts. Only alerts
that opened at least once are shown (a rule that is firing but not yet for ``open_after``
evaluations is pending, not an alert).
"""

from __future__ import annotations

from typing import Any, Dict, List

from ..alerts.state import OPEN, read_alerts
from ..databases import Database, open_reader
from ..sql import driver_errors
from ..store import StoreError

#: At most this many alerts are returned, newest first.
MAX_ALERTS = 1000


def list_alerts(db_path: Database, open_only: bool) -> List[Dict[str, Any]]:
    """The alerts that opened at least once, newest first, each the state row as a dict (rule,
    arc_class, subject, severity, state, opened_at, resolved_at, first_seen, last_seen, value,
    threshold, message); [] when no rule was ever evaluated. ``open_only`` keeps the open ones."""
    try:
        reader = open_reader(db_path)
    except driver_errors(StoreError):
        return []
    try:
        if not reader.has_table("mona_alerts"):
            return []
        rows = [row for row in read_alerts(reader.statements, only_open=open_only) if row.opened_at is not None]
    except driver_errors():
        return []
    finally:
        reader.close()
    rows.sort(key=lambda row: (row.state != OPEN, -(row.opened_at or 0.0)))
    return [row.as_json() for row in rows[:MAX_ALERTS]]


def open_alerts_by_class(db_path: Database) -> Dict[str, int]:
    """How many open alerts each ARC class has."""
    counts: Dict[str, int] = {}
    for alert in list_alerts(db_path, open_only=True):
        arc_class = alert["arc_class"]
        counts[arc_class] = counts.get(arc_class, 0) + 1
    return counts
