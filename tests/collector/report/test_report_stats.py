"""The drift measures against scipy on data with ties, gaps and unequal sizes; the field naming."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from mona_collector.report.fields import flatten_arc
from mona_collector.report.stats import bin_counts, decile_edges, js_distance, ks_statistic, psi, status


@pytest.mark.parametrize("seed", range(5))
def test_ks_and_js_match_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    window = rng.integers(0, 6, 300).astype(float)  # many ties
    baseline = np.concatenate([rng.normal(2, 1.5, 700), rng.integers(0, 6, 200)])
    assert ks_statistic(np.sort(window), np.sort(baseline)) == pytest.approx(ks_2samp(window, baseline).statistic)
    edges = decile_edges(baseline)
    now, then = bin_counts(window, edges), bin_counts(baseline, edges)
    assert now.sum() == window.size and then.sum() == baseline.size
    assert js_distance(now, then) == pytest.approx(jensenshannon(now, then, base=2))


def test_psi_floors_empty_bins() -> None:
    now = np.array([0, 0, 10, 90])
    then = np.array([25, 25, 25, 25])
    p = np.array([1e-4, 1e-4, 0.1, 0.9])
    expected = float(np.sum((p - 0.25) * np.log(p / 0.25)))
    assert psi(now, then) == pytest.approx(expected)
    assert psi(then, then) == 0.0


def test_bins_hold_values_up_to_their_upper_edge() -> None:
    edges = np.array([1.0, 2.0])
    assert bin_counts(np.array([0.5, 1.0, 1.5, 2.0, 2.5]), edges).tolist() == [2, 2, 1]


def test_status_compares_the_absolute_value() -> None:
    assert [status(v, (1, 2)) for v in (0.5, -1.5, 2.0, float("inf"), None)] == [
        "ok",
        "warn",
        "alert",
        "alert",
        "insufficient data",
    ]


def test_field_names() -> None:
    document = {
        "fields": {"loss": 0.2},
        "globals": {"model": "m1"},
        "sub_arcs": {
            "fold-1": {
                "arc_class": "MODEL",
                "fields": {"score": 0.9},
                "sub_arcs": {"step": {"arc_class": None, "fields": {"ms": 3}, "sub_arcs": {}}},
            }
        },
    }
    assert flatten_arc(document) == {"loss": 0.2, "globals.model": "m1", "MODEL.score": 0.9, "MODEL.step.ms": 3}
