"""``GET /metrics``: the collector's state for Prometheus, read from the database on each scrape.

A custom ``prometheus_client`` collector: nothing is counted in memory, every value is read when
Prometheus scrapes, so the figures are the same whether the dashboard runs in the collector's process
(``mona collect --http-port``) or beside it (``mona ui``). Labels are only ARC classes and KAPI names,
whose numbers the data bounds; never context ids or dimension values. docs/dashboard.md lists every
metric.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as MetricsCollector

from ..databases import describe, open_reader
from ..sql import driver_errors
from ..store import StoreError
from .alerts_source import open_alerts_by_class
from .reports import DashboardError, PeriodChoice, Reports

log = logging.getLogger("mona_collector")

#: The drift gauges compare the last 24 hours with the 7 days before, as ``mona report`` does by default.
DRIFT_PERIODS = PeriodChoice("24h", None, "7d")
_STATUS_VALUE = {"ok": 0.0, "warn": 1.0, "alert": 2.0, "insufficient data": -1.0}
_DRIFT_MEASURES = ("psi", "js", "ks", "mean_shift")


class CollectorMetrics(MetricsCollector):
    """The metrics of one collector database; ``open_connections`` (when the dashboard runs in the
    collector's process) gives the number of Forward connections open now."""

    def __init__(self, reports: Reports, open_connections: Optional[Callable[[], int]] = None) -> None:
        self.reports = reports
        self.open_connections = open_connections

    def collect(self) -> Iterator[Metric]:
        db_path = self.reports.db_path
        try:
            reader = open_reader(db_path)
            try:
                events, rejected, duplicates, classes, log_id, merged_up_to = reader.merged_counts()
                received, pending, lag_seconds = reader.raw_counts(log_id, merged_up_to)
                size = reader.database_bytes()
            finally:
                reader.close()
        except driver_errors(StoreError) as exc:
            log.warning("metrics: cannot read %s: %s", describe(db_path), exc)
            yield GaugeMetricFamily("mona_up", "Whether the collector database could be read.", 0.0)
            return
        yield GaugeMetricFamily("mona_up", "Whether the collector database could be read.", 1.0)
        yield CounterMetricFamily("mona_records_received", "Records received and stored in the raw log.", received)
        # tag_stats counts every record kept (rejected ones included) as an event; duplicates apart
        yield CounterMetricFamily(
            "mona_records_merged", "Records merged into ARCs (or counted, for other tags).", events - rejected
        )
        yield CounterMetricFamily("mona_records_rejected", "Records the merger rejected as malformed.", rejected)
        yield CounterMetricFamily(
            "mona_records_duplicates", "Records dropped as duplicates of merged ones.", duplicates
        )
        yield GaugeMetricFamily("mona_merge_lag_records", "Records received and not merged yet.", pending)
        yield GaugeMetricFamily(
            "mona_merge_lag_seconds", "Age of the oldest record not merged yet (0: all merged).", lag_seconds
        )
        yield GaugeMetricFamily(
            "mona_database_bytes", "Bytes of the ARC database and raw log files (PostgreSQL: the database).", size
        )
        if self.open_connections is not None:
            yield GaugeMetricFamily("mona_open_connections", "Forward connections open now.", self.open_connections())
        arcs = GaugeMetricFamily("mona_arcs", "ARCs stored, per class.", labels=["arc_class"])
        for arc_class, count in sorted(classes.items()):
            arcs.add_metric([arc_class], count)
        yield arcs
        alerts = GaugeMetricFamily("mona_open_alerts", "Open alerts, per class.", labels=["arc_class"])
        open_alerts = open_alerts_by_class(db_path)
        for arc_class in sorted(set(classes) | set(open_alerts)):
            alerts.add_metric([arc_class], open_alerts.get(arc_class, 0))
        yield alerts
        yield from self._drift(sorted(classes))

    def _drift(self, classes: list[str]) -> Iterator[Metric]:
        """The drift of every KAPI of every class, last 24 h against the 7 days before."""
        families = {
            name: GaugeMetricFamily(
                f"mona_kapi_drift_{name}",
                f"Drift ({name}) of a KAPI, last 24 h vs the 7 days before.",
                labels=["arc_class", "kapi"],
            )
            for name in _DRIFT_MEASURES
        }
        status = GaugeMetricFamily(
            "mona_kapi_drift_status",
            "Drift status of a KAPI: 0 ok, 1 warn, 2 alert, -1 insufficient data.",
            labels=["arc_class", "kapi"],
        )
        for arc_class in classes:
            try:
                report, _ = self.reports.class_report(arc_class, DRIFT_PERIODS)
            except DashboardError as exc:
                log.debug("metrics: no drift for %s: %s", arc_class, exc)
                continue
            for kapi in report["kapis"]:
                labels = [arc_class, kapi["name"]]
                status.add_metric(labels, _STATUS_VALUE.get(kapi["status"], -1.0))
                for name in _DRIFT_MEASURES:
                    value = kapi["drift"][name]["value"]
                    if isinstance(value, (int, float)):
                        families[name].add_metric(labels, float(value))
        yield from families.values()
        yield status
