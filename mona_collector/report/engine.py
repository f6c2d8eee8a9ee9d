"""The report of one class, computed from a :class:`~.table.ColumnTable`, as one JSON-shaped dict.

The engine knows nothing of where the columns come from: the database reader of :mod:`.source` feeds
it today, and any faster source (kept aggregates, a columnar side table) can feed it the same table.
docs/report-json.md describes every key of the result.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .drift import dimension_section, kapi_section
from .model_metrics import metrics_section
from .monitoring_config import ClassSettings
from .periods import Periods
from .segments import segment_insights
from .stats import INSUFFICIENT, FloatArray, IntArray, worst
from .table import COUNTED, ColumnTable

REPORT_VERSION = 1
#: Hourly series longer than this many points are drawn with buckets of several hours.
MAX_SERIES_POINTS = 744


def time_buckets(periods: Periods) -> Tuple[float, int]:
    """The length in seconds of the buckets of the window's series (an hour, or a whole number of
    hours for long windows) and how many there are."""
    hours = math.ceil((periods.window_end - periods.window_start) / 3600)
    seconds = 3600 * max(1, math.ceil(hours / MAX_SERIES_POINTS))
    return float(seconds), max(1, math.ceil((periods.window_end - periods.window_start) / seconds))


def _bucket_of(times: FloatArray, periods: Periods, seconds: float, count: int) -> IntArray:
    return np.minimum(((times - periods.window_start) // seconds).astype(np.int64), count - 1)


def _series(values: FloatArray, buckets: IntArray, count: int) -> Dict[str, List[Optional[float]]]:
    """The mean and p90 of ``values`` in each bucket (None where a bucket has no value)."""
    finite = ~np.isnan(values)
    values, buckets = values[finite], buckets[finite]
    order = np.lexsort((values, buckets))
    values, buckets = values[order], buckets[order]
    bounds = np.searchsorted(buckets, np.arange(count + 1))
    means: List[Optional[float]] = []
    p90s: List[Optional[float]] = []
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        if start == end:
            means.append(None)
            p90s.append(None)
            continue
        chunk = values[start:end]
        means.append(float(chunk.mean()))
        p90s.append(float(np.percentile(chunk, 90)))
    return {"mean": means, "p90": p90s}


def _field_rows(table: ColumnTable, window: IntArray, baseline: IntArray) -> List[Dict[str, Any]]:
    rows = []
    for info in table.fields:
        rows.append(
            {
                "name": info.name,
                "kind": info.kind,
                "declared": info.declared,
                "share_window": float(info.present[window].mean()) if window.size else None,
                "share_baseline": float(info.present[baseline].mean()) if baseline.size else None,
                "type_mismatch": {
                    "window": int(info.mismatch[window].sum()),
                    "baseline": int(info.mismatch[baseline].sum()),
                },
                "types": dict(info.types),
            }
        )
    return rows


def build_report(
    table: ColumnTable,
    periods: Periods,
    settings: Optional[ClassSettings] = None,
    arc_class: Optional[str] = None,
    by: Sequence[str] = (),
) -> Dict[str, Any]:
    """The report of ``table``'s ARCs: the window and the baseline are the ARCs whose time falls in
    each period (ARCs outside both are ignored). ``by`` names the dimensions to segment by (every
    dimension when empty); each must be a dimension of the table (ValueError otherwise)."""
    settings = settings or ClassSettings()
    unknown = [name for name in by if name not in table.dimensions]
    if unknown:
        known = ", ".join(sorted(table.dimensions)) or "none"
        raise ValueError(f"--by: {unknown[0]!r} is not a dimension of this class (dimensions: {known})")
    times = table.times
    window = np.flatnonzero((times >= periods.window_start) & (times < periods.window_end))
    baseline = np.flatnonzero((times >= periods.baseline_start) & (times < periods.baseline_end))
    seconds, count = time_buckets(periods)
    buckets = _bucket_of(times[window], periods, seconds, count)

    kapis = []
    for name, column in sorted(table.kapis.items()):
        now, then = column.values[window], column.values[baseline]
        section = kapi_section(name, now[~np.isnan(now)], window.size, then[~np.isnan(then)], baseline.size, settings)
        section["series"] = _series(now, buckets, count)
        kapis.append(section)
    dimensions = [
        dimension_section(name, column.codes[window], column.codes[baseline], column.labels, settings)
        for name, column in sorted(table.dimensions.items())
    ]
    segments = segment_insights(table, window, baseline, settings, by)
    statuses = [section["status"] for section in kapis + dimensions] + [row["status"] for row in segments]
    return {
        "report_version": REPORT_VERSION,
        "arc_class": arc_class,
        "generated_at": time.time(),
        "window": {"start": periods.window_start, "end": periods.window_end, "arcs": int(window.size)},
        "baseline": {"start": periods.baseline_start, "end": periods.baseline_end, "arcs": int(baseline.size)},
        "status": worst(statuses) if statuses else INSUFFICIENT,
        "settings": settings.as_json(),
        "by": list(by),
        "overview": {
            "arcs_window": int(window.size),
            "arcs_baseline": int(baseline.size),
            "bucket_seconds": seconds,
            "arcs_per_bucket": np.bincount(buckets, minlength=count).tolist(),
            "fields": _field_rows(table, window, baseline),
        },
        "kapis": kapis,
        "dimensions": dimensions,
        "counted": [
            {
                "name": info.name,
                "window": int(info.present[window].sum()),
                "baseline": int(info.present[baseline].sum()),
            }
            for info in table.fields
            if info.kind == COUNTED
        ],
        "segments": segments,
        "metrics": metrics_section(table, window, baseline, _span(periods), settings, by),
    }


def _span(periods: Periods) -> Tuple[float, float]:
    """From the first period's start to the last one's end: the range the metrics' series cover."""
    return (
        min(periods.window_start, periods.baseline_start),
        max(periods.window_end, periods.baseline_end),
    )


def overview_row(report: Dict[str, Any]) -> Dict[str, Any]:
    """One line of the every-class overview, from a class's report."""
    segments = report["segments"]
    sections = report["kapis"] + report["dimensions"]
    return {
        "arc_class": report["arc_class"],
        "status": report["status"],
        "arcs_window": report["window"]["arcs"],
        "arcs_baseline": report["baseline"]["arcs"],
        "arcs_per_bucket": report["overview"]["arcs_per_bucket"],
        "kapis": len(report["kapis"]),
        "dimensions": len(report["dimensions"]),
        "alerts": sum(1 for item in sections + segments if item["status"] == "alert"),
        "warnings": sum(1 for item in sections + segments if item["status"] == "warn"),
        "top_insight": segments[0] if segments else None,
    }
