"""Segment insights: the segments (a value of a dimension, or a pair of values of two) that stand out.

For every KAPI and segment with enough ARCs (at least ``min_segment_arcs`` and ``min_segment_share`` of
the period's ARCs), three kinds of finding, each scored and judged against its thresholds:

- ``outlier``: the segment's mean in the window deviates from the class-wide mean of the window by at
  least k standard deviations of the class's baseline (score = (segment mean - class mean) / baseline std);
- ``drift``: the segment's mean moved against the same segment's baseline mean by at least k of those
  standard deviations (score = (window mean - baseline mean) / baseline std), and by at least k more
  than the whole class moved (|score - class score| >= k, the class score being the class-wide mean
  shift in the same unit): a KAPI that drifts everywhere is reported once, as the class's own drift,
  not again for every segment that merely moved with it;
- ``size``: the segment's share of the class's ARCs changed by at least a factor (score = the factor,
  ≥ 1, whichever way the share moved; a share of 0 counts as half an ARC).

k is the ``segment_k`` threshold pair, the factor the ``size_factor`` pair. Rows are ranked by severity:
the score over its warn threshold (for sizes, on a log scale), so ``severity`` ≥ 1 means flagged.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .drift import MISSING
from .monitoring_config import ClassSettings
from .stats import ALERT, OK, WARN, FloatArray, IntArray, status
from .table import ColumnTable, DimensionColumn

OUTLIER, DRIFT, SIZE = "outlier", "drift", "size"


@dataclass
class Segmentation:
    """A way to cut the ARCs: one dimension or a pair; a code per ARC (missing values have their own)."""

    dimensions: Tuple[str, ...]
    codes: IntArray
    labels: List[Tuple[str, ...]]


def _single(column: DimensionColumn) -> Segmentation:
    missing = len(column.labels)
    codes = np.where(column.codes < 0, missing, column.codes)
    return Segmentation((column.name,), codes, [(label,) for label in [*column.labels, MISSING]])


def _pair(first: Segmentation, second: Segmentation) -> Segmentation:
    width = len(second.labels)
    codes = first.codes * width + second.codes
    labels = [a + b for a in first.labels for b in second.labels]
    return Segmentation(first.dimensions + second.dimensions, codes, labels)


def segmentations(table: ColumnTable, by: Sequence[str]) -> List[Segmentation]:
    """Every dimension (or only those in ``by``), and with two or more in ``by`` every pair of them."""
    names = list(by) if by else sorted(table.dimensions)
    singles = [_single(table.dimensions[name]) for name in names]
    pairs = [_pair(a, b) for a, b in itertools.combinations(singles, 2)] if len(by) >= 2 else []
    return singles + pairs


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _row(
    kind: str, cut: Segmentation, code: int, kapi: Any, score: float, thresholds: Tuple[float, float], **values: Any
) -> Dict[str, Any]:
    warn = thresholds[0]
    # sizes are factors: their severity is on a log scale, so that growing x4 weighs as shrinking /4
    severity = math.log(score) / math.log(warn) if kind == SIZE else abs(score) / max(warn, 1e-12)
    return {
        "kind": kind,
        "segment": dict(zip(cut.dimensions, cut.labels[code])),
        "kapi": kapi,
        "score": score,
        "warn": thresholds[0],
        "alert": thresholds[1],
        "status": status(score, thresholds),
        "severity": severity,
        **values,
    }


class _Periods:
    """The window's and the baseline's ARC indices, with the sizes the minimums are taken of."""

    def __init__(self, window: IntArray, baseline: IntArray, settings: ClassSettings) -> None:
        self.window, self.baseline = window, baseline
        self.window_min = max(settings.min_segment_arcs, settings.min_segment_share * window.size)
        self.baseline_min = max(settings.min_segment_arcs, settings.min_segment_share * baseline.size)


def _size_rows(cut: Segmentation, periods: _Periods, settings: ClassSettings) -> List[Dict[str, Any]]:
    categories = len(cut.labels)
    window_n = np.bincount(cut.codes[periods.window], minlength=categories)
    baseline_n = np.bincount(cut.codes[periods.baseline], minlength=categories)
    total_window, total_baseline = periods.window.size, periods.baseline.size
    if total_window < settings.min_n or total_baseline < settings.min_n:
        return []
    thresholds = settings.thresholds["size_factor"]
    rows = []
    for code in np.flatnonzero((window_n >= periods.window_min) | (baseline_n >= periods.baseline_min)).tolist():
        share_now = max(window_n[code], 0.5) / total_window
        share_then = max(baseline_n[code], 0.5) / total_baseline
        factor = max(share_now / share_then, share_then / share_now)
        if factor < thresholds[0]:
            continue
        grew = share_now > share_then
        reason = (
            f"share {'grew' if grew else 'shrank'} from {share_then:.2%} to {share_now:.2%}"
            f" ({'x' if grew else '/'}{_fmt(factor)})"
        )
        rows.append(
            _row(
                SIZE,
                cut,
                code,
                None,
                factor,
                thresholds,
                value=window_n[code] / total_window,
                baseline=baseline_n[code] / total_baseline,
                n=int(window_n[code]),
                n_baseline=int(baseline_n[code]),
                reason=reason,
            )
        )
    return rows


def _means(codes: IntArray, values: FloatArray, categories: int) -> Tuple[IntArray, FloatArray]:
    counts = np.bincount(codes, minlength=categories)
    sums = np.bincount(codes, weights=values, minlength=categories)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts, sums / counts


def _kapi_rows(
    cut: Segmentation, kapi: str, values: FloatArray, periods: _Periods, settings: ClassSettings
) -> List[Dict[str, Any]]:
    window_values, baseline_values = values[periods.window], values[periods.baseline]
    window_ok, baseline_ok = ~np.isnan(window_values), ~np.isnan(baseline_values)
    if window_ok.sum() < settings.min_n or baseline_ok.sum() < settings.min_n:
        return []
    class_mean = float(window_values[window_ok].mean())
    class_std = float(baseline_values[baseline_ok].std())
    if class_std <= 0:
        return []  # a constant baseline gives no scale to measure deviations by
    class_moved = (class_mean - float(baseline_values[baseline_ok].mean())) / class_std
    categories = len(cut.labels)
    window_n, window_mean = _means(cut.codes[periods.window][window_ok], window_values[window_ok], categories)
    baseline_n, baseline_mean = _means(
        cut.codes[periods.baseline][baseline_ok], baseline_values[baseline_ok], categories
    )
    thresholds = settings.thresholds["segment_k"]
    rows = []
    for code in np.flatnonzero(window_n >= periods.window_min).tolist():
        now, then = float(window_mean[code]), float(baseline_mean[code])
        common = {"value": now, "n": int(window_n[code]), "n_baseline": int(baseline_n[code])}
        outlier = (now - class_mean) / class_std
        if abs(outlier) >= thresholds[0]:
            side = "above" if outlier > 0 else "below"
            reason = f"mean {_fmt(now)} is {_fmt(abs(outlier))} baseline std {side} the class mean {_fmt(class_mean)}"
            baseline = then if baseline_n[code] else None
            row = _row(OUTLIER, cut, code, kapi, outlier, thresholds, baseline=baseline, reference=class_mean, **common)
            rows.append({**row, "reason": reason})
        if baseline_n[code] >= periods.baseline_min:
            moved = (now - then) / class_std
            if abs(moved) >= thresholds[0] and abs(moved - class_moved) >= thresholds[0]:
                reason = (
                    f"mean moved from {_fmt(then)} to {_fmt(now)}: {_fmt(moved)} baseline std"
                    f" (the class moved {_fmt(class_moved)})"
                )
                row = _row(DRIFT, cut, code, kapi, moved, thresholds, baseline=then, reference=then, **common)
                rows.append({**row, "reason": reason})
    return rows


def segment_insights(
    table: ColumnTable, window: IntArray, baseline: IntArray, settings: ClassSettings, by: Sequence[str] = ()
) -> List[Dict[str, Any]]:
    """Every flagged segment row, most severe first (``window``/``baseline``: the periods' ARC indices)."""
    periods = _Periods(window, baseline, settings)
    rows: List[Dict[str, Any]] = []
    for cut in segmentations(table, by):
        rows.extend(_size_rows(cut, periods, settings))
        for name, column in sorted(table.kapis.items()):
            if cut.dimensions == (name,):
                continue  # a KAPI cut by its own buckets says nothing new
            rows.extend(_kapi_rows(cut, name, column.values, periods, settings))
    rank = {ALERT: 0, WARN: 1, OK: 2}
    rows.sort(key=lambda row: (rank.get(row["status"], 3), -row["severity"], row["kind"], str(row["segment"])))
    return rows
