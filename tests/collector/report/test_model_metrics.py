"""Model metrics: checked against scikit-learn (when installed) and an independent count of the same
pairs, and awkward data (labels that never arrive, unseen classes, mixed types) reported, never a crash."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytest

from bench.report_data import DAY, build_database, record
from mona_collector.report.engine import build_report
from mona_collector.report.monitoring_config import parse_config
from mona_collector.report.periods import Periods
from mona_collector.report.table import TableBuilder

from .conftest import NOW, mona_report

START = NOW - 8 * DAY
PERIODS = Periods(NOW - DAY, NOW, START, NOW - DAY)


def _report(rows: Sequence[Dict[str, Any]], config: str = "{}", arc_class: str = "M") -> Dict[str, Any]:
    """The report of ``rows`` (flat fields), spread evenly over the 8 days before NOW."""
    builder = TableBuilder()
    for index, fields in enumerate(rows):
        builder.add(START + (index + 0.5) * 8 * DAY / len(rows), fields)
    settings = parse_config(config).for_class(arc_class)
    return build_report(builder.finish(settings), PERIODS, settings, arc_class)


def _reference(truth: List[str], predicted: List[str]) -> Dict[str, Any]:
    """Precision, recall, F1 per class and their means, counted by hand (zero division gives 0)."""
    classes = sorted(set(truth) | set(predicted))
    out: Dict[str, Any] = {"accuracy": sum(t == p for t, p in zip(truth, predicted)) / len(truth), "classes": {}}
    for cls in classes:
        tp = sum(t == cls and p == cls for t, p in zip(truth, predicted))
        made, true = predicted.count(cls), truth.count(cls)
        precision = tp / made if made else 0.0
        recall = tp / true if true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out["classes"][cls] = (precision, recall, f1, true)
    for index, key in enumerate(("precision", "recall", "f1")):
        values = [row[index] for row in out["classes"].values()]
        supports = [row[3] for row in out["classes"].values()]
        out[f"{key}_macro"] = sum(values) / len(values)
        out[f"{key}_weighted"] = sum(v * s for v, s in zip(values, supports)) / sum(supports)
    return out


def _classification_rows(seed: int, classes: Sequence[Any], count: int = 1600) -> List[Dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        truth = classes[int(rng.integers(len(classes)))]
        guess = truth if rng.random() < 0.7 else classes[int(rng.integers(len(classes)))]
        row: Dict[str, Any] = {"MODEL.prediction": guess, "segment": "a" if rng.random() < 0.5 else "b"}
        if rng.random() < 0.8:  # a fifth of the labels have not arrived
            row["label"] = truth
        rows.append(row)
    return rows


def _window_pairs(rows: Sequence[Dict[str, Any]], segment: Optional[str] = None) -> tuple[List[str], List[str]]:
    window = rows[len(rows) * 7 // 8 :]  # the evenly spread rows of the last day
    pairs = [(str(r["label"]), str(r["MODEL.prediction"])) for r in window if "label" in r]
    if segment is not None:
        pairs = [
            (str(r["label"]), str(r["MODEL.prediction"])) for r in window if "label" in r and r["segment"] == segment
        ]
    return [t for t, _ in pairs], [p for _, p in pairs]


def _assert_block(block: Dict[str, Any], expected: Dict[str, Any]) -> None:
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted", "f1_weighted"):
        assert block[key] == pytest.approx(expected[key], abs=1e-12), key
    for row in block["classes"]:
        precision, recall, f1, support = expected["classes"][row["class"]]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision, recall, f1), abs=1e-12)
        assert row["support"] == support


@pytest.mark.parametrize("classes", [["ok", "fraud"], ["cat", "dog", "bird", "fish"], [0, 1, 2]])
def test_classification_matches_an_independent_count(classes: List[Any]) -> None:
    rows = _classification_rows(3, classes)
    report = _report(rows)
    metrics = report["metrics"]
    assert metrics["kind"] == "classification" and metrics["prediction"] == "MODEL.prediction"
    truth, predicted = _window_pairs(rows)
    _assert_block(metrics["window"], _reference(truth, predicted))
    assert metrics["window"]["pairs"] == len(truth)
    assert metrics["window"]["label_share"] == pytest.approx(len(truth) / (len(rows) // 8))
    segment = next(s for s in metrics["segments"] if s["dimension"] == "segment" and s["value"] == "a")
    _assert_block(segment["window"], _reference(*_window_pairs(rows, "a")))
    assert len(metrics["series"]["points"]) in (8, 9)  # day buckets over the 8 days (aligned on UTC days)


def test_classification_matches_scikit_learn() -> None:
    metrics_module = pytest.importorskip("sklearn.metrics")
    rows = _classification_rows(5, ["a", "b", "c"])
    block = _report(rows)["metrics"]["window"]
    truth, predicted = _window_pairs(rows)
    assert block["accuracy"] == pytest.approx(metrics_module.accuracy_score(truth, predicted))
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = metrics_module.precision_recall_fscore_support(
            truth, predicted, average=average, zero_division=0
        )
        assert (block[f"precision_{average}"], block[f"recall_{average}"], block[f"f1_{average}"]) == pytest.approx(
            (precision, recall, f1)
        )
    labels = block["confusion"]["classes"]
    assert block["confusion"]["counts"] == metrics_module.confusion_matrix(truth, predicted, labels=labels).tolist()


def _regression_rows(seed: int, count: int = 1600) -> List[Dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"prediction": float(y + rng.normal(0.3, 2.0)), "label": float(y)} for y in rng.normal(100.0, 15.0, count)]


def test_regression_matches_an_independent_computation() -> None:
    rows = _regression_rows(9)
    metrics = _report(rows)["metrics"]
    assert metrics["kind"] == "regression"
    window = rows[len(rows) * 7 // 8 :]
    errors = np.array([r["prediction"] - r["label"] for r in window])
    block = metrics["window"]
    assert block["mae"] == pytest.approx(np.mean(np.abs(errors)))
    assert block["rmse"] == pytest.approx(math.sqrt(np.mean(errors**2)))
    assert block["mean_error"] == pytest.approx(errors.mean())
    sk = pytest.importorskip("sklearn.metrics")
    truth, predicted = [r["label"] for r in window], [r["prediction"] for r in window]
    assert block["mae"] == pytest.approx(sk.mean_absolute_error(truth, predicted))
    assert block["rmse"] == pytest.approx(math.sqrt(sk.mean_squared_error(truth, predicted)))


def test_the_config_names_the_fields_and_the_kind() -> None:
    rows = [{"decision": i % 3, "truth": (i + i // 5) % 3} for i in range(800)]
    config = '{"classes": {"M": {"model": {"prediction": "decision", "label": "truth", "kind": "regression"}}}}'
    metrics = _report(rows, config)["metrics"]
    assert (metrics["prediction"], metrics["label"], metrics["kind"], metrics["kind_declared"]) == (
        "decision",
        "truth",
        "regression",
        True,
    )
    assert metrics["window"]["mae"] is not None
    assert _report(rows)["metrics"] is None  # no field named prediction: no section


def test_awkward_labels_are_counted_never_a_crash() -> None:
    rows: List[Dict[str, Any]] = []
    for i in range(800):
        row: Dict[str, Any] = {"prediction": "yes" if i % 2 else "no"}
        if i % 4 == 0:
            row["label"] = "maybe"  # a class the model never predicts
        elif i % 4 == 1:
            row["label"] = "yes"
        if i % 10 == 3:
            row["prediction"] = 1  # a number among strings: a type mismatch
        rows.append(row)
    metrics = _report(rows)["metrics"]
    assert metrics["unseen_label_classes"] == ["maybe"]
    window = metrics["window"]
    assert window["prediction_type_mismatch"] == sum(1 for r in rows[700:] if r["prediction"] == 1)
    assert window["unseen_label_classes"]["maybe"] == sum(1 for r in rows[700:] if r.get("label") == "maybe")
    maybe = next(row for row in window["classes"] if row["class"] == "maybe")
    assert maybe["precision"] == 0.0 and maybe["recall"] == 0.0 and maybe["predicted"] == 0
    never = _report([{"prediction": i % 2} for i in range(400)])["metrics"]
    assert never["label_found"] is False
    assert never["window"]["label_share"] == 0.0 and never["window"]["accuracy"] is None


def test_mona_report_shows_metrics_from_late_labels(tmp_path: Path) -> None:
    """Labels exported hours after the prediction into the same ARC, through a real collector."""
    records = []
    for i in range(300):
        when = NOW - 20 * 3600 + i * 60
        context = f"m-{i}"
        records.append(record(context, {"MONA_ARC_CLASS": "M", "country": "BR" if i % 3 == 0 else "DE"}, when))
        records.append(record(f"{context}.model", {"MONA_ARC_CLASS": "MODEL", "prediction": i % 2}, when))
        if i % 5:
            records.append(record(context, {"label": (i % 2) if i % 7 else 1 - i % 2}, when + 3 * 3600))
    records += [record(f"b-{i}", {"MONA_ARC_CLASS": "M", "country": "DE"}, NOW - 3 * DAY + i) for i in range(10)]
    db = tmp_path / "arcs.db"
    build_database(db, records)
    status, out, err = mona_report(db, "--arc-class", "M", "--json")
    assert status == 0, err
    metrics = json.loads(out)["metrics"]
    assert metrics["prediction"] == "MODEL.prediction" and metrics["label"] == "label"
    assert metrics["window"]["pairs"] == sum(1 for i in range(300) if i % 5)
    expected = sum(1 for i in range(300) if i % 5 and i % 7) / metrics["window"]["pairs"]
    assert metrics["window"]["accuracy"] == pytest.approx(expected)
    status, text, err = mona_report(db, "--arc-class", "M")
    assert status == 0 and "Model metrics (classification)" in text, err
    html = tmp_path / "r.html"
    status, _, err = mona_report(db, "--arc-class", "M", "--html", str(html))
    assert status == 0, err
    page = html.read_text()
    assert "<h2>Model metrics</h2>" in page and "f1_macro per day by country" in page
