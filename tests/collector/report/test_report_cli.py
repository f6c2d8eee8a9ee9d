"""``mona report`` end to end: a real collector's database, the real command in a process of its own."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Union

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from mona_collector.databases import open_store
from mona_collector.report.fields import flatten_arc

from .conftest import NOW, flagged, mona_report


def _report(db: Union[Path, str], *args: str) -> dict:
    status, out, err = mona_report(db, *args, "--json")
    assert status == 0, err
    assert err == ""
    return json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))


def test_flags_the_shifted_segment_and_the_drifting_kapi_and_nothing_else(fraud_any_db: Union[Path, str]) -> None:
    report = _report(fraud_any_db, "--arc-class", "FRAUD_SCORER")
    assert report["window"]["arcs"] == 3000 and report["baseline"]["arcs"] == 6000
    assert flagged(report) == [("kapis", "latency_ms")]
    assert report["status"] == "alert"
    # latency_ms drifts in every segment alike: that is the class's drift, not a segment's.
    for row in report["segments"]:
        assert (row["segment"], row["kapi"]) == ({"country": "BR"}, "MODEL.fraud_score"), row
    assert sorted(row["kind"] for row in report["segments"]) == ["drift", "outlier"]
    top = report["segments"][0]
    assert (top["segment"], top["kapi"], top["status"]) == ({"country": "BR"}, "MODEL.fraud_score", "alert")
    fields = {field["name"]: field for field in report["overview"]["fields"]}
    assert fields["country"]["kind"] == "dimension" and fields["MODEL.fraud_score"]["kind"] == "kapi"
    assert sum(report["overview"]["arcs_per_bucket"]) == 3000 and len(report["overview"]["arcs_per_bucket"]) == 24


def test_pairs_with_by_keep_to_the_shifted_segment(fraud_db: Path) -> None:
    report = _report(fraud_db, "--arc-class", "FRAUD_SCORER", "--by", "country,tier")
    pairs = [row for row in report["segments"] if len(row["segment"]) == 2]
    assert pairs, "pairs of values are segments too"
    for row in report["segments"]:
        assert row["kapi"] == "MODEL.fraud_score" and row["segment"].get("country") == "BR", row
    assert any(row["segment"] == {"country": "BR", "tier": "silver"} for row in pairs)


def _values(db: Union[Path, str], field: str, start: float, end: float) -> np.ndarray:
    """The field's values read independently: every document through the store's public API."""
    store = open_store(db, readonly=True)
    try:
        return np.array(
            [
                flatten_arc(document)[field]
                for document in store.iter_arcs("FRAUD_SCORER")
                if start <= document["first_export"] < end
            ]
        )
    finally:
        store.close()


@pytest.mark.parametrize("field", ["latency_ms", "MODEL.fraud_score", "amount"])
def test_drift_values_match_an_independent_computation(fraud_any_db: Union[Path, str], field: str) -> None:
    report = _report(fraud_any_db, "--arc-class", "FRAUD_SCORER")
    window = report["window"]
    now = _values(fraud_any_db, field, window["start"], window["end"])
    then = _values(fraud_any_db, field, report["baseline"]["start"], report["baseline"]["end"])
    drift = next(kapi for kapi in report["kapis"] if kapi["name"] == field)["drift"]

    edges = np.quantile(then, np.linspace(0.1, 0.9, 9))
    bins = np.concatenate([[-np.inf], edges, [np.inf]])
    # independent binning: np.histogram on (lo, hi] intervals, by negating the values
    now_counts = np.histogram(-now, bins=-bins[::-1])[0][::-1]
    then_counts = np.histogram(-then, bins=-bins[::-1])[0][::-1]
    p = np.clip(now_counts / now.size, 1e-4, None)
    q = np.clip(then_counts / then.size, 1e-4, None)
    assert drift["psi"]["value"] == pytest.approx(float(np.sum((p - q) * np.log(p / q))), rel=1e-9)
    assert drift["js"]["value"] == pytest.approx(float(jensenshannon(now_counts, then_counts, base=2)), rel=1e-9)
    assert drift["ks"]["value"] == pytest.approx(float(ks_2samp(now, then).statistic), abs=1e-12)
    expected_shift = (now.mean() - then.mean()) / then.std()
    assert drift["mean_shift"]["value"] == pytest.approx(expected_shift, rel=1e-9)


def test_the_reports_are_the_same_json_on_both_stores(fraud_db: Path, fraud_postgres_db: str) -> None:
    since, until = (datetime.fromtimestamp(moment, timezone.utc).isoformat() for moment in (NOW - 86400, NOW))
    for args in (["--arc-class", "FRAUD_SCORER", "--by", "country,tier"], []):
        fixed = [*args, "--since", since, "--until", until]
        on_postgres, on_sqlite = _report(fraud_postgres_db, *fixed), _report(fraud_db, *fixed)
        on_postgres.pop("generated_at", None)
        on_sqlite.pop("generated_at", None)
        assert on_postgres == on_sqlite, args


def test_terminal_report_is_readable(fraud_db: Path) -> None:
    status, out, err = mona_report(fraud_db, "--arc-class", "FRAUD_SCORER")
    assert status == 0 and err == ""
    assert "ARC class FRAUD_SCORER: ALERT" in out
    assert "ARCs per hour: " in out and any(char in out for char in "▁▂▃▄▅▆▇█")
    assert "country=BR" in out and "latency_ms: ALERT" in out


def test_every_class_overview(fraud_db: Path) -> None:
    status, out, err = mona_report(fraud_db)
    assert status == 0 and err == ""
    assert "FRAUD_SCORER" in out and "alert" in out
    overview = _report(fraud_db)
    (row,) = overview["classes"]
    assert (row["arc_class"], row["arcs_window"], row["arcs_baseline"]) == ("FRAUD_SCORER", 3000, 6000)


def test_html_is_one_self_contained_file(fraud_db: Path, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    status, out, err = mona_report(fraud_db, "--arc-class", "FRAUD_SCORER", "--html", str(target))
    assert status == 0 and err == "" and "wrote" in out
    html = target.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") >= 1 + 2 * 3  # ARCs/hour, 2 per KAPI
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert "<script" not in html and "country=BR" in html


def test_explicit_baseline_range(fraud_db: Path) -> None:
    day = 86400
    start, end = NOW - 3 * day, NOW - 2 * day
    iso = [datetime.fromtimestamp(int(moment), timezone.utc).isoformat() for moment in (start, end)]
    report = _report(fraud_db, "--arc-class", "FRAUD_SCORER", "--baseline", f"{iso[0]}..{iso[1]}")
    assert report["baseline"]["arcs"] > 0
    assert math.isclose(report["baseline"]["end"] - report["baseline"]["start"], end - start, abs_tol=2)
