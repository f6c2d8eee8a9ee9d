"""``mona report`` on awkward data and bad input: a clear line and an exit status, never a traceback;
late exports change the report; too few ARCs say ``insufficient data``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from bench.report_data import DAY, build_database, record

from .conftest import NOW, mona_report


def _arcs(count: int, start: float, end: float, arc_class: str, fields: Any, prefix: str) -> List[Dict[str, Any]]:
    step = (end - start) / count
    return [record(f"{prefix}-{i}", {"MONA_ARC_CLASS": arc_class, **fields(i)}, start + i * step) for i in range(count)]


def _clean_error(status: int, out: str, err: str, expected_status: int, words: str) -> None:
    assert status == expected_status, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert words in err, err


@pytest.fixture(scope="module")
def small_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class with too few ARCs, a class whose field is sometimes a string, and a class with no baseline."""
    path = tmp_path_factory.mktemp("small") / "arcs.db"
    records = _arcs(20, NOW - 5 * DAY, NOW - 2 * DAY, "TINY", lambda i: {"x": float(i)}, "tiny-b")
    records += _arcs(20, NOW - 20000, NOW - 10, "TINY", lambda i: {"x": float(i)}, "tiny-w")

    def mixed(i: int) -> Dict[str, Any]:
        return {"size": "large" if i % 10 == 0 else float(i % 7), "flag": i % 2 == 0, "tags": [1, 2]}

    records += _arcs(300, NOW - 6 * DAY, NOW - 2 * DAY, "MIXED", mixed, "mixed-b")
    records += _arcs(300, NOW - 20000, NOW - 10, "MIXED", mixed, "mixed-w")
    records += _arcs(50, NOW - 20000, NOW - 10, "FRESH", lambda i: {"y": 1.0}, "fresh")
    build_database(path, records)
    return path


def test_too_few_arcs_is_insufficient_data(small_db: Path) -> None:
    status, out, err = mona_report(small_db, "--arc-class", "TINY", "--json")
    assert status == 0, err
    report = json.loads(out)
    (kapi,) = report["kapis"]
    assert kapi["status"] == "insufficient data"
    assert {measure["status"] for measure in kapi["drift"].values()} == {"insufficient data"}
    assert all(measure["value"] is None for measure in kapi["drift"].values())
    assert report["status"] == "insufficient data"
    status, out, _ = mona_report(small_db, "--arc-class", "TINY")
    assert status == 0 and "insufficient data" in out


def test_a_field_both_string_and_number_is_typed_by_most_values(small_db: Path) -> None:
    status, out, err = mona_report(small_db, "--arc-class", "MIXED", "--json")
    assert status == 0 and err == ""
    report = json.loads(out)
    fields = {field["name"]: field for field in report["overview"]["fields"]}
    assert fields["size"]["kind"] == "kapi"
    assert fields["size"]["type_mismatch"] == {"window": 30, "baseline": 30}
    assert fields["size"]["types"] == {"number": 540, "text": 60, "other": 0}
    assert fields["flag"]["kind"] == "dimension" and fields["tags"]["kind"] == "counted"
    size = next(kapi for kapi in report["kapis"] if kapi["name"] == "size")
    assert size["window"]["n"] == 270 and size["window"]["missing"] == pytest.approx(0.1)
    assert report["counted"] == [{"name": "tags", "window": 300, "baseline": 300}]
    status, out, err = mona_report(small_db, "--arc-class", "MIXED")
    assert status == 0 and err == "" and "type mismatch" in out


def test_a_config_can_declare_a_kind_and_buckets(small_db: Path, tmp_path: Path) -> None:
    config = tmp_path / "monitoring.json"
    config.write_text(json.dumps({"classes": {"MIXED": {"dimensions": ["size"], "buckets": {"size": [2, 4]}}}}))
    status, out, err = mona_report(small_db, "--arc-class", "MIXED", "--config", str(config), "--json")
    assert status == 0, err
    report = json.loads(out)
    size = next(dimension for dimension in report["dimensions"] if dimension["name"] == "size")
    assert {value["value"] for value in size["values"]} == {"large", "< 2", "[2, 4)", ">= 4"}
    assert not any(kapi["name"] == "size" for kapi in report["kapis"])


def test_unknown_class(small_db: Path) -> None:
    _clean_error(*mona_report(small_db, "--arc-class", "NOPE"), 2, "no ARC of class 'NOPE' (classes: FRESH, MIXED")


def test_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    build_database(path, [])
    _clean_error(*mona_report(path), 1, "holds no ARC with a class yet")
    _clean_error(*mona_report(tmp_path / "missing.db"), 1, "no collector database at")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--since", "garbage"], "--since: 'garbage' is neither a duration"),
        (["--baseline", "soon"], "--baseline: 'soon' is neither a duration"),
        (["--baseline", "2h..1d"], "the baseline must start before it ends"),
        (["--since", "1h", "--until", "2h"], "the window must start before it ends"),
        (["--by", "nothing"], "--by: 'nothing' is not a dimension of this class"),
    ],
)
def test_bad_periods_and_options(small_db: Path, args: List[str], words: str) -> None:
    _clean_error(*mona_report(small_db, "--arc-class", "MIXED", *args), 2, words)


def test_a_baseline_with_no_arcs(small_db: Path) -> None:
    _clean_error(*mona_report(small_db, "--arc-class", "FRESH"), 2, "--baseline: no ARC of class 'FRESH'")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not valid JSON"),
        ('{"classes": {"MIXED": {"thresholds": {"psi": [0.3, 0.1]}}}}', "classes.MIXED.thresholds.psi"),
        ('{"defaults": {"min_n": 0}}', "defaults.min_n: expected a whole number"),
        ('{"classes": {"MIXED": {"colour": 1}}}', "classes.MIXED.colour: unknown key"),
        ('{"defaults": {"buckets": {"size": [3, 1]}}}', "the boundaries must increase"),
    ],
)
def test_a_malformed_config(small_db: Path, tmp_path: Path, text: str, words: str) -> None:
    config = tmp_path / "bad.json"
    config.write_text(text)
    _clean_error(*mona_report(small_db, "--arc-class", "MIXED", "--config", str(config)), 2, words)


def test_late_ground_truth_changes_the_report(tmp_path: Path) -> None:
    path = tmp_path / "late.db"
    build_database(path, _arcs(200, NOW - 5 * DAY, NOW - 2 * DAY, "SCORER", lambda i: {"s": 0.1 * (i % 5)}, "b"))
    build_database(path, _arcs(200, NOW - 20000, NOW - 10, "SCORER", lambda i: {"s": 0.1 * (i % 5)}, "w"))
    before = json.loads(mona_report(path, "--arc-class", "SCORER", "--json")[1])
    assert [field["name"] for field in before["overview"]["fields"]] == ["s"]
    # ground truth for the window's ARCs, exported an hour later than now: the ARCs keep their time
    truth = [record(f"w-{i}", {"is_fraud": i % 4 == 0, "loss": float(i % 3)}, NOW + 3600) for i in range(200)]
    build_database(path, truth)
    after = json.loads(mona_report(path, "--arc-class", "SCORER", "--json")[1])
    fields = {field["name"]: field for field in after["overview"]["fields"]}
    assert after["window"]["arcs"] == 200
    assert fields["is_fraud"]["share_window"] == 1.0 and fields["is_fraud"]["share_baseline"] == 0.0
    loss = next(kapi for kapi in after["kapis"] if kapi["name"] == "loss")
    assert loss["window"]["n"] == 200 and loss["baseline"]["n"] == 0
    is_fraud = next(dimension for dimension in after["dimensions"] if dimension["name"] == "is_fraud")
    assert {value["value"]: value["window"] for value in is_fraud["values"]} == {
        "false": 150,
        "true": 50,
        "(missing)": 0,
    }
    assert is_fraud["new_values_total"] == 2
