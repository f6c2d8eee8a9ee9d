"""Drift of the window against the baseline: per KAPI (PSI, JS, KS, mean shift) and per dimension
(the shares of its values, PSI and JS on them)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from .monitoring_config import ClassSettings
from .stats import (
    INSUFFICIENT,
    FloatArray,
    IntArray,
    bin_counts,
    decile_edges,
    js_distance,
    ks_statistic,
    mean_shift,
    measure,
    psi,
    summary,
    worst,
)

#: A dimension's values shown one by one; the others are summed up as ``other``.
TOP_VALUES = 20
MISSING = "(missing)"
OTHER = "(other)"


def kapi_drift(window: FloatArray, baseline: FloatArray, settings: ClassSettings) -> Dict[str, Any]:
    """The drift measures of one KAPI from its finite values in each period (any order), and the decile
    bins they are computed over (``edges`` and the count of each period in each bin)."""
    enough = window.size >= settings.min_n and baseline.size >= settings.min_n
    thresholds = settings.thresholds
    drift: Dict[str, Any] = {}
    bins: Dict[str, Any] = {"edges": [], "window": [], "baseline": []}
    if window.size and baseline.size:
        window_sorted, baseline_sorted = np.sort(window), np.sort(baseline)
        edges = decile_edges(baseline_sorted)
        window_counts, baseline_counts = bin_counts(window_sorted, edges), bin_counts(baseline_sorted, edges)
        bins = {"edges": edges.tolist(), "window": window_counts.tolist(), "baseline": baseline_counts.tolist()}
        values: Dict[str, Optional[float]] = {
            "psi": psi(window_counts, baseline_counts),
            "js": js_distance(window_counts, baseline_counts),
            "ks": ks_statistic(window_sorted, baseline_sorted),
            "mean_shift": mean_shift(float(window.mean()), float(baseline.mean()), float(baseline.std())),
        }
    else:
        values = dict.fromkeys(("psi", "js", "ks", "mean_shift"))
    for name, value in values.items():
        drift[name] = measure(value, thresholds[name], enough)
    return {"drift": drift, "status": worst([m["status"] for m in drift.values()]), "bins": bins}


def kapi_section(
    name: str, window: FloatArray, window_rows: int, baseline: FloatArray, baseline_rows: int, settings: ClassSettings
) -> Dict[str, Any]:
    """One KAPI of the report: its statistics in each period and its drift."""
    section: Dict[str, Any] = {
        "name": name,
        "window": summary(window, window_rows),
        "baseline": summary(baseline, baseline_rows),
    }
    section.update(kapi_drift(window, baseline, settings))
    return section


def _category_counts(codes: IntArray, categories: int) -> IntArray:
    """Counts per code, the missing (-1) last."""
    return np.bincount(np.where(codes < 0, categories, codes), minlength=categories + 1).astype(np.int64)


def dimension_section(
    name: str, window_codes: IntArray, baseline_codes: IntArray, labels: List[str], settings: ClassSettings
) -> Dict[str, Any]:
    """One dimension of the report: the share of each value now and in the baseline (the 20 most
    frequent over both periods, the rest as ``(other)``, missing as ``(missing)``), the values never
    seen in the baseline, and PSI and JS over those shares."""
    window_counts = _category_counts(window_codes, len(labels))
    baseline_counts = _category_counts(baseline_codes, len(labels))
    names = [*labels, MISSING]
    order = np.argsort(-(window_counts + baseline_counts), kind="stable")
    shown = [int(code) for code in order if window_counts[code] + baseline_counts[code] > 0][:TOP_VALUES]
    rest = np.ones(len(names), dtype=bool)
    rest[shown] = False
    window_shown = [*window_counts[shown].tolist(), int(window_counts[rest].sum())]
    baseline_shown = [*baseline_counts[shown].tolist(), int(baseline_counts[rest].sum())]
    shown_names: List[str] = [names[code] for code in shown] + [OTHER]
    window_total, baseline_total = int(window_counts.sum()), int(baseline_counts.sum())
    values = [
        {
            "value": label,
            "window": count_now,
            "baseline": count_then,
            "share_window": count_now / window_total if window_total else None,
            "share_baseline": count_then / baseline_total if baseline_total else None,
        }
        for label, count_now, count_then in zip(shown_names, window_shown, baseline_shown)
        if label != OTHER or count_now or count_then
    ]
    new = [
        {"value": names[code], "window": int(window_counts[code])}
        for code in np.argsort(-window_counts, kind="stable").tolist()
        if window_counts[code] > 0 and baseline_counts[code] == 0
    ]
    enough = window_total >= settings.min_n and baseline_total >= settings.min_n
    window_array, baseline_array = np.asarray(window_shown, np.int64), np.asarray(baseline_shown, np.int64)
    drift = {
        "psi": measure(psi(window_array, baseline_array) if enough else None, settings.thresholds["psi"], enough),
        "js": measure(js_distance(window_array, baseline_array) if enough else None, settings.thresholds["js"], enough),
    }
    return {
        "name": name,
        "values": values,
        "distinct_values": int(np.count_nonzero(window_counts[:-1] + baseline_counts[:-1])),
        "new_values": new[:TOP_VALUES],
        "new_values_total": len(new),
        "new_values_arcs": sum(item["window"] for item in new),
        "drift": drift,
        "status": worst([m["status"] for m in drift.values()]) if enough else INSUFFICIENT,
    }
