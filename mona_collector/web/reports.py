"""The reports the dashboard shows, computed by the ``mona report`` engine and kept for a short time.

A class page asks for the report of one class, window and baseline; computing it reads every ARC of
both periods, so the result is kept per (class, since, until, baseline, by) for :data:`DEFAULT_TTL`
seconds and dropped as soon as the database's merge watermark moves (new ARCs were merged). Requests
for a report being computed wait for it instead of computing it again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

from ..databases import Database, open_reader
from ..readers import Reader
from ..report.command import ReportError, class_report
from ..report.engine import overview_row
from ..report.monitoring_config import MonitoringConfig
from ..report.periods import parse_periods
from ..report.render_json import clean
from ..report.source import class_counts
from ..sql import driver_errors
from ..store import StoreError
from .alerts_source import open_alerts_by_class

#: Seconds a computed report is served again (while the watermark does not move).
DEFAULT_TTL = 60.0
#: Reports kept at most (the least recently used goes first).
MAX_ENTRIES = 64
_STATUS_RANK = {"alert": 3, "warn": 2, "ok": 1, "insufficient data": 0}


class DashboardError(Exception):
    """A request that cannot be answered, with its HTTP status (4xx: the request, 503: the database)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PeriodChoice:
    """The time-range picker and the baseline choice as the URL has them (texts ``mona report`` reads)."""

    since: str = "24h"
    until: Optional[str] = None
    baseline: str = "7d"


def watermark(db_path: Database) -> Tuple[str, str]:
    """The database's merge watermark (raw log id and last merged row): it moves with every merge."""
    try:
        reader = open_reader(db_path)
    except driver_errors(StoreError):
        return ("", "")
    try:
        return reader.watermark()
    except driver_errors():
        return ("", "")
    finally:
        reader.close()


class TimedCache:
    """Values computed once per key, served for ``ttl`` seconds, all dropped when ``version()`` changes."""

    def __init__(self, version: Callable[[], Hashable], ttl: float = DEFAULT_TTL, max_entries: int = MAX_ENTRIES):
        self._version = version
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: OrderedDict[Hashable, Tuple[float, Any]] = OrderedDict()
        self._seen_version: Hashable = None
        self._lock = threading.Lock()
        self._computing: Dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Tuple[Any, bool]:
        """The value of ``key`` and whether it came from the cache."""
        version = self._version()
        with self._lock:
            if version != self._seen_version:
                self._entries.clear()
                self._seen_version = version
            hit = self._fresh(key)
            if hit is not None:
                return hit[1], True
            key_lock = self._computing.setdefault(key, threading.Lock())
        with key_lock:  # one computation per key; the others wait for it
            with self._lock:
                hit = self._fresh(key)
                if hit is not None:
                    return hit[1], True
            value = compute()
            with self._lock:
                self._entries[key] = (time.monotonic(), value)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
                self._computing.pop(key, None)
            return value, False

    def _fresh(self, key: Hashable) -> Optional[Tuple[float, Any]]:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self._ttl:
            return None
        self._entries.move_to_end(key)
        return entry


def _worst_drift(report: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The KAPI whose drift is worst (by status, then PSI), with its PSI."""
    best: Optional[Dict[str, Any]] = None
    best_rank: Tuple[int, float] = (-1, -1.0)
    for kapi in report["kapis"]:
        psi = kapi["drift"]["psi"]["value"]
        rank = (_STATUS_RANK.get(kapi["status"], 0), psi if isinstance(psi, float) else -1.0)
        if rank > best_rank:
            best_rank = rank
            best = {"kapi": kapi["name"], "psi": psi, "status": kapi["status"]}
    return best


class Reports:
    """The engine's reports of one database, cached (see the module's docstring)."""

    def __init__(self, db_path: Database, config: Optional[MonitoringConfig] = None, ttl: float = DEFAULT_TTL) -> None:
        self.db_path = db_path
        self.config = config or MonitoringConfig()
        self.cache = TimedCache(lambda: watermark(db_path), ttl)

    def _store(self) -> Reader:
        try:
            return open_reader(self.db_path)
        except StoreError as exc:
            raise DashboardError(str(exc), 503) from None

    def classes(self) -> Dict[str, int]:
        """Every class and its ARC count."""
        value, _ = self.cache.get(("classes",), self._class_counts)
        return dict(value)

    def _class_counts(self) -> Dict[str, int]:
        store = self._store()
        try:
            return class_counts(store)
        except StoreError as exc:
            raise DashboardError(str(exc), 503) from None
        finally:
            store.close()

    def class_report(self, arc_class: str, periods: PeriodChoice, by: Tuple[str, ...] = ()) -> Tuple[Any, bool]:
        """The report of one class (as its JSON, cleaned) and whether it came from the cache."""
        if arc_class not in self.classes():
            raise DashboardError(f"no ARC of class {arc_class[:100]!r}", 404)
        key = ("report", arc_class, periods, by)
        return self.cache.get(key, lambda: self._compute(arc_class, periods, by))

    def _compute(self, arc_class: str, choice: PeriodChoice, by: Tuple[str, ...]) -> Any:
        try:
            periods = parse_periods(choice.since, choice.baseline, choice.until)
        except ValueError as exc:
            raise DashboardError(str(exc), 400) from None
        store = self._store()
        try:
            return clean(class_report(store, arc_class, periods, self.config, by))
        except ReportError as exc:
            raise DashboardError(str(exc), 400 if exc.status == 2 else 503) from None
        except StoreError as exc:
            raise DashboardError(str(exc), 503) from None
        finally:
            store.close()

    def overview(self, periods: PeriodChoice) -> Dict[str, Any]:
        """One row per class: its ARCs in the window and baseline, ARCs per bucket, status, worst
        drift, open alerts."""
        alerts = open_alerts_by_class(self.db_path)
        rows: List[Dict[str, Any]] = []
        window: Dict[str, Any] = {}
        baseline: Dict[str, Any] = {}
        for arc_class, total in sorted(self.classes().items()):
            report, _ = self.class_report(arc_class, periods)
            row = overview_row(report)
            row["arcs_total"] = total
            row["bucket_seconds"] = report["overview"]["bucket_seconds"]
            row["worst_drift"] = _worst_drift(report)
            row["open_alerts"] = alerts.get(arc_class, 0)
            rows.append(row)
            window, baseline = report["window"], report["baseline"]
        return {"window": window, "baseline": baseline, "classes": clean(rows)}
