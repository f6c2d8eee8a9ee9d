"""Evaluating rules against the report engine's results: one :class:`Observation` per rule, class and
subject (a KAPI, a segment, the class as a whole).

The engine's report of a class is computed once per (class, window, baseline) in one evaluation and
shared by the rules that need it; the ARC volume and the time of the last ARC come from the ``arcs``
table directly. Everything is read through read-only connections, so evaluating never holds a write
lock the merger needs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from ..databases import Database, open_reader
from ..readers import Reader
from ..report.engine import build_report
from ..report.periods import Periods
from ..report.render_text import printable, segment_label
from ..report.source import class_counts, read_table
from ..report.table import ColumnTable
from .rules import DRIFT, EVERY_CLASS, EXCEPTIONS, METRIC, SEGMENT, SILENCE, VOLUME, AlertConfig, Rule

log = logging.getLogger("mona_collector.alerts")

#: The field the client reserves for the type of an exception a run raised (any path).
EXCEPTION_FIELD = "MONA_EXCEPTION_TYPE"
CLASS_WIDE = "(class)"
_STATUS_RANK = {"warn": 1, "alert": 2}


@dataclass(frozen=True)
class Observation:
    """What a rule found for one class and subject at one evaluation. ``firing`` is None when there
    is no value to judge (too few ARCs, no label yet): the alert's state then does not move."""

    rule: Rule
    arc_class: str
    subject: str
    value: Optional[float]
    threshold: Optional[float]
    firing: Optional[bool]
    message: str


@dataclass
class Evaluation:
    """One evaluation: its observations, and each (rule name, class) it evaluated."""

    observations: List[Observation]
    evaluated: Set[Tuple[str, str]]


class _Reports:
    """The engine's table and report of each (class, window, baseline) asked for in one evaluation."""

    def __init__(self, store: Reader, config: AlertConfig, now: float) -> None:
        self._store, self._config, self._now = store, config, now
        self._cache: Dict[Tuple[str, float, float], Tuple[ColumnTable, Dict[str, Any]]] = {}

    def get(self, arc_class: str, window: float, baseline: float) -> Tuple[ColumnTable, Dict[str, Any]]:
        key = (arc_class, window, baseline)
        if key not in self._cache:
            start = self._now - window
            periods = Periods(start, self._now, start - baseline, start)
            settings = self._config.monitoring.for_class(arc_class)
            ranges = [(start, self._now)] + ([(start - baseline, start)] if baseline > 0 else [])
            table = read_table(self._store, arc_class, ranges, settings)
            self._cache[key] = (table, build_report(table, periods, settings, arc_class))
        return self._cache[key]


def evaluate(db_path: Database, config: AlertConfig, now: float) -> Evaluation:
    """Every rule of ``config`` against the database as of ``now`` (epoch seconds). A rule naming a
    class the database does not hold yet observes nothing."""
    store = open_reader(db_path)
    try:
        classes = sorted(class_counts(store))
        reports = _Reports(store, config, now)
        result = Evaluation([], set())
        for rule in config.rules:
            targets = classes if rule.arc_class == EVERY_CLASS else [c for c in classes if c == rule.arc_class]
            for arc_class in targets:
                result.observations.extend(_observe(rule, arc_class, reports, store, now))
                result.evaluated.add((rule.name, arc_class))
        return result
    finally:
        store.close()


def _observe(rule: Rule, arc_class: str, reports: _Reports, reader: Reader, now: float) -> List[Observation]:
    if rule.subject == VOLUME:
        return [_volume(rule, arc_class, reader, now)]
    if rule.subject == SILENCE:
        return [_silence(rule, arc_class, reader, now)]
    baseline = rule.baseline if rule.subject in (DRIFT, SEGMENT) else 0.0
    table, report = reports.get(arc_class, rule.window, baseline)
    if rule.subject == DRIFT:
        return _drift(rule, arc_class, report)
    if rule.subject == SEGMENT:
        return _segments(rule, arc_class, report)
    if rule.subject == METRIC:
        return _metric(rule, arc_class, report)
    assert rule.subject == EXCEPTIONS
    return [_exceptions(rule, arc_class, table, report)]


def _judged(rule: Rule, arc_class: str, subject: str, value: Optional[float], what: str) -> Observation:
    """An observation of ``value`` against the rule's own threshold."""
    threshold = rule.above if rule.above is not None else rule.below
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Observation(rule, arc_class, subject, None, threshold, None, f"{what}: no value")
    side = "above" if rule.above is not None else "below"
    return Observation(
        rule,
        arc_class,
        subject,
        value,
        threshold,
        rule.fires(value),
        f"{what} {value:.4g} (fires {side} {threshold:g})",
    )


def _drift(rule: Rule, arc_class: str, report: Dict[str, Any]) -> List[Observation]:
    out = []
    measure_name = rule.measure or "psi"
    for kapi in report["kapis"]:
        if rule.kapi is not None and kapi["name"] != rule.kapi:
            continue
        measure = kapi["drift"][measure_name]
        threshold = rule.above if rule.above is not None else float(measure["alert"])
        value = measure["value"]
        what = f"{printable(kapi['name'])} {measure_name}"
        if value is None:
            out.append(Observation(rule, arc_class, kapi["name"], None, threshold, None, f"{what}: insufficient data"))
            continue
        magnitude = abs(float(value))  # a mean shift down is as much a drift as one up
        firing = magnitude >= threshold
        out.append(Observation(rule, arc_class, kapi["name"], magnitude, threshold, firing, f"{what} {magnitude:.4g}"))
    return out


def _segments(rule: Rule, arc_class: str, report: Dict[str, Any]) -> List[Observation]:
    """A firing observation per flagged segment row; the rows no longer flagged are judged clean by
    the state (see :func:`~.state.apply`)."""
    out = []
    for row in report["segments"]:
        if rule.kapi is not None and row["kapi"] != rule.kapi:
            continue
        if rule.measure is not None and row["kind"] != rule.measure:
            continue
        if _STATUS_RANK[row["status"]] < _STATUS_RANK[rule.status]:
            continue
        subject = f"{row['kind']} {segment_label(row['segment'])} {row['kapi'] or '(share)'}"
        threshold = float(row[rule.status])
        out.append(
            Observation(rule, arc_class, subject, float(row["score"]), threshold, True, f"{subject}: {row['reason']}")
        )
    return out


def metric_value(block: Dict[str, Any], name: str) -> Optional[float]:
    """The metric ``name`` of a metrics block (``f1:C`` and the like for one class C)."""
    kind, _, cls = name.partition(":")
    if cls:
        row = next((row for row in block.get("classes", []) if row["class"] == cls), None)
        return None if row is None else float(row[kind])
    value = block.get(name)
    return None if value is None else float(value)


def _metric(rule: Rule, arc_class: str, report: Dict[str, Any]) -> List[Observation]:
    metrics = report.get("metrics")
    name = rule.measure or "accuracy"
    if not metrics:
        return [Observation(rule, arc_class, CLASS_WIDE, None, None, None, f"{name}: no prediction field")]
    if rule.by is None:
        blocks: Sequence[Tuple[str, Dict[str, Any]]] = [(CLASS_WIDE, metrics["window"])]
    else:
        blocks = [
            (f"{rule.by}={segment['value']}", segment["window"])
            for segment in metrics["segments"]
            if segment["dimension"] == rule.by
        ]
    out = []
    for subject, block in blocks:
        value = metric_value(block, name)
        what = f"{name} of {subject} ({block['pairs']} labelled)"
        if block["pairs"] < rule.min_n and name != "label_share":
            value = None
            what += f", fewer than {rule.min_n}"
        out.append(_judged(rule, arc_class, subject, value, what))
    return out


def _exceptions(rule: Rule, arc_class: str, table: ColumnTable, report: Dict[str, Any]) -> Observation:
    window = np.flatnonzero((table.times >= report["window"]["start"]) & (table.times < report["window"]["end"]))
    carrying = np.zeros(table.rows, dtype=np.bool_)
    for info in table.fields:
        if info.name.rsplit(".", 1)[-1] == EXCEPTION_FIELD:
            carrying |= info.present
    share = float(carrying[window].mean()) if window.size else None
    return _judged(rule, arc_class, CLASS_WIDE, share, f"share of ARCs with {EXCEPTION_FIELD}")


def _volume(rule: Rule, arc_class: str, reader: Reader, now: float) -> Observation:
    count = reader.arcs_between(arc_class, now - rule.window, now)
    return _judged(rule, arc_class, CLASS_WIDE, float(count), "ARCs in the window")


def _silence(rule: Rule, arc_class: str, reader: Reader, now: float) -> Observation:
    last = reader.last_arc_time(arc_class, now)
    minutes = rule.above or 0.0
    if last is None:
        return Observation(rule, arc_class, CLASS_WIDE, None, minutes, None, "no ARC of the class yet")
    quiet = (now - float(last)) / 60
    return Observation(rule, arc_class, CLASS_WIDE, quiet, minutes, quiet >= minutes, f"no ARC for {quiet:.1f} minutes")
