"""What ``mona alerts check`` and ``mona alerts list`` do (the argument parsing is in cli.py).

Failures are :class:`AlertsError` with one line and an exit status: 2 for a usage error (a config
that does not parse, names an unknown key or holds a value of the wrong type; ``--at`` garbage),
1 for the rest (no database).
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

from ..databases import Database, describe
from ..report.monitoring_config import ConfigError
from ..report.render_json import render_json
from ..report.render_text import number, printable, table
from ..sql import Statements, driver_errors
from ..store import StoreError
from ..timeparse import format_time, parse_since
from .rules import AlertConfig, load_alert_config
from .runner import check
from .sinks import drain
from .state import OK, OPEN, AlertRow, connect, read_alerts

#: ``mona alerts check`` waits at most this long for the sinks before it exits (undelivered
#: notifications stay queued for the next check or the collector).
DRAIN_SECONDS = 15.0


class AlertsError(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _config(path: Optional[str]) -> AlertConfig:
    try:
        return load_alert_config(path)
    except ConfigError as exc:
        raise AlertsError(f"--config {printable(path)}: {exc}", 2) from None


def _database(db_path: Database) -> Statements:
    try:
        return connect(db_path)
    except driver_errors(OSError, StoreError) as exc:
        raise AlertsError(f"cannot open the database {printable(describe(db_path))}: {exc}") from None


def _rows_text(rows: Sequence[AlertRow]) -> List[str]:
    cells = [
        [
            row.state,
            row.severity,
            printable(row.arc_class),
            printable(row.rule),
            printable(row.subject),
            number(row.value),
            number(row.threshold),
            format_time(row.first_seen),
            format_time(row.last_seen),
        ]
        for row in rows
    ]
    header = ["state", "severity", "class", "rule", "subject", "value", "threshold", "first seen", "last seen"]
    return table(header, cells) if cells else []


def run_check(db_path: Database, config_path: Optional[str], at: Optional[str], as_json: bool, out: TextIO) -> int:
    """Evaluate every rule now (or ``at``), store and print the states; 1 while any alert is open."""
    config = _config(config_path)
    try:
        now = time.time() if at is None else parse_since(at)
    except (ValueError, OverflowError) as exc:
        raise AlertsError(f"--at: {exc}", 2) from None
    _database(db_path).close()  # a missing database is one line, before any work
    events, rows = check(db_path, config, now)
    left = drain(db_path, config, time.monotonic() + DRAIN_SECONDS) if config.sinks else 0
    shown = [row for row in rows if row.state != OK]
    opened = sum(1 for row in rows if row.state == OPEN)
    if as_json:
        document: Dict[str, Any] = {
            "evaluated_at": now,
            "rules": [rule.as_json() for rule in config.rules],
            "default_rules": config.defaults_used,
            "alerts": [row.as_json() for row in shown],
            "open": opened,
            "notifications": events,
            "undelivered": left,
        }
        out.write(render_json(document) + "\n")
    else:
        rules = f"{len(config.rules)} rule{'s' if len(config.rules) != 1 else ''}"
        out.write(
            f"alerts at {format_time(now)}: {rules}{' (the defaults)' if config.defaults_used else ''}, "
            f"{opened} open, {len(events)} notification{'s' if len(events) != 1 else ''}"
            f"{f', {left} waiting for a sink' if left else ''}\n"
        )
        out.write("".join(line + "\n" for line in _rows_text(shown)))
    return 1 if opened else 0


def run_list(db_path: Database, only_open: bool, as_json: bool, out: TextIO) -> int:
    """Print the stored alerts (the ones not ``ok``), or only the open ones."""
    db = _database(db_path)
    try:
        rows = [row for row in read_alerts(db, only_open) if row.state != OK]
    finally:
        db.close()
    if as_json:
        out.write(render_json([row.as_json() for row in rows]) + "\n")
    elif rows:
        out.write("".join(line + "\n" for line in _rows_text(rows)))
    else:
        out.write("no open alert\n" if only_open else "no alert\n")
    return 0
