"""Summary statistics and the drift measures, with the exact definitions docs/report.md gives.

Every function takes plain numpy arrays of finite values, so each can be checked against an
independent computation (scipy's, in the tests).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Bin shares below this are raised to it before PSI divides by them and takes their logarithm.
SHARE_FLOOR = 1e-4
BINS = 10
PERCENTILES = (50, 90, 99)

OK, WARN, ALERT, INSUFFICIENT = "ok", "warn", "alert", "insufficient data"
_RANK = {INSUFFICIENT: 0, OK: 1, WARN: 2, ALERT: 3}


def summary(values: FloatArray, rows: int) -> Dict[str, Optional[float]]:
    """n, missing share, mean, population std, min, p50, p90, p99 and max of ``values`` (finite, any
    order) among ``rows`` ARCs; percentiles interpolate linearly (numpy's default)."""
    n = int(values.size)
    out: Dict[str, Optional[float]] = {"n": n, "missing": (rows - n) / rows if rows else None}
    if n == 0:
        out.update({key: None for key in ("mean", "std", "min", "p50", "p90", "p99", "max")})
        return out
    quantiles = np.percentile(values, PERCENTILES)
    out.update(
        {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "p50": float(quantiles[0]),
            "p90": float(quantiles[1]),
            "p99": float(quantiles[2]),
            "max": float(values.max()),
        }
    )
    return out


def decile_edges(baseline: FloatArray) -> FloatArray:
    """The 9 cut points of the 10 bins: the baseline's deciles (linear interpolation)."""
    return np.quantile(baseline, np.arange(1, BINS) / BINS)


def bin_counts(values: FloatArray, edges: FloatArray) -> IntArray:
    """How many values fall in each bin: bin i holds edges[i-1] < x <= edges[i] (the first and last
    bins are open-ended)."""
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1).astype(np.int64)


def _shares(counts: IntArray) -> FloatArray:
    total = counts.sum()
    return counts / total if total else np.zeros(counts.size)


def psi(window_counts: IntArray, baseline_counts: IntArray) -> float:
    """Population stability index: Σ (w - b)·ln(w / b) over the bin shares, each floored at 1e-4."""
    window = np.maximum(_shares(window_counts), SHARE_FLOOR)
    baseline = np.maximum(_shares(baseline_counts), SHARE_FLOOR)
    return float(np.sum((window - baseline) * np.log(window / baseline)))


def js_distance(window_counts: IntArray, baseline_counts: IntArray) -> float:
    """Jensen-Shannon distance, base 2 (0 to 1), of the bin shares as they are (no floor), as
    ``scipy.spatial.distance.jensenshannon(window, baseline, base=2)`` computes it."""
    p, q = _shares(window_counts), _shares(baseline_counts)
    middle = (p + q) / 2

    def relative_entropy(x: FloatArray) -> float:
        inside = x > 0
        return float(np.sum(x[inside] * np.log(x[inside] / middle[inside])))

    divergence = (relative_entropy(p) + relative_entropy(q)) / 2 / math.log(2)
    return math.sqrt(max(divergence, 0.0))


def ks_statistic(window_sorted: FloatArray, baseline_sorted: FloatArray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic D = max |F_window(x) - F_baseline(x)|, exact (as
    ``scipy.stats.ks_2samp(...).statistic``); both arrays sorted ascending."""
    points = np.concatenate([window_sorted, baseline_sorted])
    window_cdf = np.searchsorted(window_sorted, points, side="right") / window_sorted.size
    baseline_cdf = np.searchsorted(baseline_sorted, points, side="right") / baseline_sorted.size
    return float(np.max(np.abs(window_cdf - baseline_cdf)))


def mean_shift(window_mean: float, baseline_mean: float, baseline_std: float) -> float:
    """(window mean - baseline mean) / baseline std; ±inf when the baseline is constant and the mean
    moved, 0 when it did not."""
    difference = window_mean - baseline_mean
    if baseline_std > 0:
        return difference / baseline_std
    return 0.0 if difference == 0 else math.copysign(math.inf, difference)


def status(value: Optional[float], thresholds: Tuple[float, float]) -> str:
    """``alert`` at or above the alert threshold, ``warn`` at or above warn, else ``ok``; the absolute
    value is compared (a mean shift is signed); None is ``insufficient data``."""
    if value is None or math.isnan(value):
        return INSUFFICIENT
    warn, alert = thresholds
    size = abs(value)
    return ALERT if size >= alert else WARN if size >= warn else OK


def worst(statuses: Sequence[str]) -> str:
    """The most severe status (``insufficient data`` counts least; no status at all is ``ok``)."""
    return max(statuses, key=_RANK.__getitem__, default=OK)


def measure(value: Optional[float], thresholds: Tuple[float, float], enough: bool) -> Dict[str, Any]:
    """One drift value as the report shows it: the value, its thresholds and its status."""
    shown = value if enough else None
    return {
        "value": shown,
        "warn": thresholds[0],
        "alert": thresholds[1],
        "status": status(shown, thresholds) if enough else INSUFFICIENT,
    }
