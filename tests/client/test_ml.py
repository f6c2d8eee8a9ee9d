"""Prediction logging (``mona_client.ml``): real DataFrames and numpy arrays, each feature end to end into
a real collector (the ARCs read back with the ``mona`` command), ``mona report``'s model metrics on
logged predictions and late labels, and bad input against a real Forward receiver."""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd
import pytest

from mona_client import client, ml
from mona_client.logs import rate_limited
from mona_client.runtime import runtime
from mona_client.sampling import keep
from tests.support.collector import wait_merged
from tests.support.embedded import Embedded, embedded, mona_cli
from tests.support.receiver import ForwardReceiver

__all__ = ["embedded"]

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]


def stored(place: Embedded) -> Dict[str, Dict[str, Any]]:
    """Every ARC the collector stored, by context id, as ``mona arcs export`` prints them."""
    assert client.flush(20), client.stats()
    wait_merged(place.db_path)
    out = mona_cli("arcs", "export", "--format", "jsonl", "--db", str(place.db_path)).stdout
    documents = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {document["context_id"]: document for document in documents}


def mona_lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mona-logger" and r.levelno >= level]


def user_messages(receiver: ForwardReceiver, count: int) -> Dict[str, Dict[str, Any]]:
    """context -> merged message of the records that are not the client's own, once ``count`` arrived."""
    assert client.flush(20), client.stats()

    def own(record: Dict[str, Any]) -> bool:
        return all(key.startswith("MONA_") for key in record["message"])

    assert receiver.wait_for(lambda r: len([x for x in r.records if not own(x)]) >= count, 20), receiver.records
    messages: Dict[str, Dict[str, Any]] = {}
    for record in receiver.records:
        if not own(record):
            messages.setdefault(record["context"], {}).update(record["message"])
    return messages


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> None:
    rate_limited.reset()  # every test sees its own lines, whatever an earlier test said


# --- end to end into a real collector ------------------------------------------------------------------


def test_one_prediction_from_a_dict_is_an_arc_of_its_own(embedded: Embedded) -> None:
    with client.new_mona_context(arc_class="REQUEST") as outer:
        context_id = ml.log_prediction(
            {"amount": 120.5, "country": "de", "items": np.int64(3), "rate": np.float32(0.5), 7: "seven"},
            np.int64(1),
            arc_class="FRAUD",
            label=0,
            model="v3",
        )
        assert client.get_full_context_id() == outer  # the outer context is current again
    assert context_id and context_id != outer
    document = stored(embedded)[context_id]
    assert document["arc_class"] == "FRAUD"
    assert document["fields"] == {
        "amount": 120.5,
        "country": "de",
        "items": 3,
        "rate": 0.5,
        "7": "seven",
        "prediction": 1,
        "label": 0,
        "model": "v3",
    }
    assert document["export_count"] == 2  # the class when the ARC opened, and the row


def test_one_prediction_from_a_series_and_from_a_numpy_array_with_names(embedded: Embedded) -> None:
    series = pd.Series({"age": 41, "income": 52_000.0, "segment": "gold"})
    from_series = ml.log_prediction(series, "churn", arc_class="CHURN", context_id="req-17")
    from_array = ml.log_prediction(np.array([0.25, 4.0]), 0.9, arc_class="SCORE", feature_names=["ratio", "depth"])
    arcs = stored(embedded)
    assert from_series == "req-17"
    assert arcs["req-17"]["fields"] == {"age": 41, "income": 52_000.0, "segment": "gold", "prediction": "churn"}
    assert arcs[from_array]["arc_class"] == "SCORE"
    assert arcs[from_array]["fields"] == {"ratio": 0.25, "depth": 4.0, "prediction": 0.9}


def test_a_dataframe_batch_with_ids_and_labels_from_its_columns(embedded: Embedded) -> None:
    rng = np.random.default_rng(7)
    rows = 50
    frame = pd.DataFrame({f"f{i}": rng.normal(size=rows) for i in range(6)})
    frame["count"] = rng.integers(0, 100, size=rows)
    frame["country"] = rng.choice(["de", "fr", "us"], size=rows)
    frame["member"] = rng.random(rows) < 0.5
    frame["request_id"] = [f"r-{i}" for i in range(rows)]
    frame["y"] = rng.integers(0, 2, size=rows)
    predictions = rng.integers(0, 2, size=rows)

    ids = ml.log_predictions(frame, predictions, arc_class="FRAUD", ids="request_id", labels="y", model="v3")

    assert ids == [f"r-{i}" for i in range(rows)]
    arcs = stored(embedded)
    for index, context_id in enumerate(ids):
        # Expected from pandas' own row conversion, an independent path to the same values.
        expected = frame.drop(columns=["request_id", "y"]).iloc[index].to_dict()
        expected = {name: value.item() if hasattr(value, "item") else value for name, value in expected.items()}
        expected.update(prediction=int(predictions[index]), label=int(frame["y"][index]), model="v3")
        assert arcs[context_id]["arc_class"] == "FRAUD"
        assert arcs[context_id]["fields"] == expected


def test_a_numpy_matrix_a_list_of_dicts_and_a_dict_of_lists(embedded: Embedded) -> None:
    matrix = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    from_matrix = ml.log_predictions(matrix, np.array([0.1, 0.2, 0.3]), arc_class="M", feature_names=["a", "b"])
    records = [{"a": 1, "kind": "x"}, {"a": 2, "kind": "y"}, {"a": 3}]  # the last row has no "kind"
    from_records = ml.log_predictions(records, ["p", "q", "r"], arc_class="R", ids=[101, 102, 103])
    columns = {"a": [7, 8], "kind": np.array(["u", "v"])}
    from_columns = ml.log_predictions(columns, pd.Series([True, False]), arc_class="C", labels=[False, False])

    arcs = stored(embedded)
    assert len(set(from_matrix)) == 3
    assert [arcs[i]["fields"] for i in from_matrix] == [
        {"a": 1.0, "b": 2.0, "prediction": 0.1},
        {"a": 3.0, "b": 4.0, "prediction": 0.2},
        {"a": 5.0, "b": 6.0, "prediction": 0.3},
    ]
    assert from_records == ["101", "102", "103"]  # numeric ids by str()
    assert [arcs[i]["fields"] for i in from_records] == [
        {"a": 1, "kind": "x", "prediction": "p"},
        {"a": 2, "kind": "y", "prediction": "q"},
        {"a": 3, "prediction": "r"},
    ]
    assert [arcs[i]["fields"] for i in from_columns] == [
        {"a": 7, "kind": "u", "prediction": True, "label": False},
        {"a": 8, "kind": "v", "prediction": False, "label": False},
    ]
    assert {arcs[i]["arc_class"] for i in from_columns} == {"C"}


def test_a_late_label_lands_in_the_same_arc_without_exporting_its_class_again(embedded: Embedded) -> None:
    single = ml.log_prediction({"x": 1.0}, 1, arc_class="LATE")
    batch = ml.log_predictions(pd.DataFrame({"x": [2.0, 3.0, 4.0]}), [0, 1, 1], arc_class="LATE")
    before = stored(embedded)

    assert ml.log_ground_truth(single, 0) is True
    assert ml.log_ground_truths(batch, np.array([1.0, np.nan, 0.0])) == 2  # NaN: no label yet, skipped

    after = stored(embedded)
    assert after[single]["fields"] == {"x": 1.0, "prediction": 1, "label": 0}
    assert after[single]["export_count"] == before[single]["export_count"] + 1  # the label alone
    assert after[single]["arc_class"] == "LATE"
    assert [after[i]["fields"].get("label") for i in batch] == [1.0, None, 0.0]
    assert [after[i]["export_count"] - before[i]["export_count"] for i in batch] == [1, 0, 1]
    assert len(after) == len(before)  # no ARC of its own for a label


class ModelTimeoutError(Exception):
    pass


def test_log_exception_records_a_handled_error_as_the_run_facts_do(embedded: Embedded) -> None:
    features: Dict[str, float] = {}
    with client.new_mona_context(arc_class="SERVE") as handled:
        try:
            features["features"]
        except KeyError:
            assert ml.log_exception() is True
        with client.new_mona_sub_context(arc_class="MODEL"):
            assert ml.log_exception(ModelTimeoutError("x" * 5000)) is True
    with client.new_mona_context(arc_class="SERVE") as explained:
        try:
            raise ValueError("raw")
        except ValueError:
            assert ml.log_exception(message="model answered an empty list") is True
    with client.new_mona_context(arc_class="SERVE") as message_only:
        assert ml.log_exception(message="no model loaded") is True

    arcs = stored(embedded)
    assert arcs[handled]["fields"] == {"MONA_EXCEPTION_TYPE": "KeyError", "MONA_EXCEPTION_MESSAGE": "'features'"}
    (model,) = arcs[handled]["sub_arcs"].values()
    assert model["fields"]["MONA_EXCEPTION_TYPE"] == f"{__name__}.ModelTimeoutError"
    assert model["fields"]["MONA_EXCEPTION_MESSAGE"] == "x" * runtime.exception_message_max_chars  # cut as run facts
    assert arcs[explained]["fields"] == {
        "MONA_EXCEPTION_TYPE": "ValueError",
        "MONA_EXCEPTION_MESSAGE": "model answered an empty list",
    }
    assert arcs[message_only]["fields"] == {
        "MONA_EXCEPTION_TYPE": "Exception",
        "MONA_EXCEPTION_MESSAGE": "no model loaded",
    }


def test_the_report_computes_model_metrics_from_logged_predictions_and_late_labels(embedded: Embedded) -> None:
    rng = np.random.default_rng(11)
    now = time.time()
    truth: Dict[str, int] = {}
    predicted: Dict[str, int] = {}
    for when, rows in ((now - 2 * 86_400, 150), (None, 200)):  # the baseline (two days ago), then the window
        frame = pd.DataFrame({"amount": rng.gamma(2.0, 50.0, rows), "country": rng.choice(["de", "fr"], rows)})
        labels = rng.integers(0, 2, rows)
        predictions = np.where(rng.random(rows) < 0.8, labels, 1 - labels)  # right four times out of five
        ids = ml.log_predictions(frame, predictions, arc_class="CHURN", export_timestamp=when)
        labelled = ids[: rows * 3 // 4]  # the rest have no label yet
        assert ml.log_ground_truths(labelled, labels[: len(labelled)]) == len(labelled)
        if when is None:
            predicted.update(zip(ids, predictions.tolist()))
            truth.update(zip(labelled, labels.tolist()))
    stored(embedded)

    out = mona_cli("report", "--arc-class", "CHURN", "--json", "--db", str(embedded.db_path)).stdout
    metrics = json.loads(out)["metrics"]

    assert (metrics["prediction"], metrics["label"], metrics["kind"]) == ("prediction", "label", "classification")
    window = metrics["window"]
    assert (window["predicted"], window["pairs"]) == (200, 150)
    assert window["label_share"] == pytest.approx(0.75)
    right = sum(truth[i] == predicted[i] for i in truth)
    assert window["accuracy"] == pytest.approx(right / len(truth))
    assert window["classes"] and window["confusion"]["counts"]
    assert metrics["baseline"]["pairs"] == 112
    assert {segment["dimension"] for segment in metrics["segments"]} == {"country"}


def test_sampling_keeps_a_prediction_and_its_label_together(receiver: ForwardReceiver, tmp_path: Path) -> None:
    config = tmp_path / "mona_client_config.json"
    config.write_text(json.dumps({"sample_rates": {"HALF": 0.5}}))
    client.init_client(port=receiver.port, config_file=str(config), print_logs=False)
    # stats()["sampled_out"] counts for the life of the process, across init_client(): left as found, so
    # that tests reading it later in this process see only their own.
    counter = copy.copy(runtime._sampled_out)
    try:
        ids = [f"req-{i}" for i in range(200)]
        assert ml.log_predictions({"x": list(range(200))}, [1] * 200, arc_class="HALF", ids=ids) == ids
        assert ml.log_ground_truths(ids, [0] * 200, arc_class="HALF") == 200  # accepted: kept or sampled out
        with client.new_mona_context(arc_class="HALF", context_id=next(i for i in ids if not keep(i, 0.5))):
            assert ml.log_exception(message="not kept") is True
        kept = {i for i in ids if keep(i, 0.5)}
        assert 60 < len(kept) < 140
        messages = user_messages(receiver, 2 * len(kept))
        assert set(messages) == kept
        assert all(message == {"x": int(i[4:]), "prediction": 1, "label": 0} for i, message in messages.items())
        assert not [r for r in receiver.records if "MONA_EXCEPTION_TYPE" in r["message"]]
    finally:
        runtime._sampled_out = counter
        client.reset()
        client.close(5)


# --- bad input, against a real receiver ----------------------------------------------------------------


def test_columns_of_different_lengths_refuse_the_batch_with_one_line(
    mona: ForwardReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    assert ml.log_predictions(frame, [1, 0], arc_class="C") == []
    assert ml.log_predictions(frame, [1, 0, 1], arc_class="C", ids=["a", "b"]) == []
    assert ml.log_predictions({"a": [1, 2], "b": [1]}, [0, 0], arc_class="C") == []
    errors = mona_lines(caplog, logging.ERROR)
    assert len(errors) == 3, errors
    assert "every column must have 3 value(s)" in errors[0] and "'prediction': 2" in errors[0]
    assert "'ids': 2" in errors[1]
    ml.log_prediction({"marker": 1}, 1, arc_class="C")
    assert list(user_messages(mona, 1).values()) == [{"marker": 1, "prediction": 1}]  # nothing else was sent


def test_columns_of_different_lengths_raise_when_raising_is_on(mona: ForwardReceiver) -> None:
    client.init_client(port=mona.port, should_raise_exceptions=True, print_logs=False)
    with pytest.raises(client.MonaExportException, match=r"log_predictions\(\): every column must have 2"):
        ml.log_predictions([{"a": 1}, {"a": 2}], [1], arc_class="C")


def test_nan_and_infinities_are_left_out_of_their_rows_and_counted(
    mona: ForwardReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mona-logger")
    frame = pd.DataFrame(
        {"a": [1.0, np.nan, np.inf], "b": [-np.inf, 2.0, 3.0], "c": pd.array([1, None, 3], dtype="Int64")}
    )
    ids = ml.log_predictions(frame, [0.5, np.nan, 0.7], arc_class="C", ids=["r1", "r2", "r3"])
    assert ids == ["r1", "r2", "r3"]
    messages = user_messages(mona, 3)
    assert messages == {
        "r1": {"a": 1.0, "c": 1, "prediction": 0.5},
        "r2": {"b": 2.0},  # pandas.NA is missing, as NaN is
        "r3": {"b": 3.0, "c": 3, "prediction": 0.7},
    }
    assert type(messages["r1"]["c"]) is int  # a nullable integer column stays integer
    (line,) = [line for line in mona_lines(caplog) if "NaN or infinite" in line]
    assert "4 NaN or infinite value(s) left out" in line


def test_column_names_that_are_not_strings_become_strings(mona: ForwardReceiver) -> None:
    frame = pd.DataFrame(np.array([[1.5, 2.5]]))  # columns 0 and 1
    ml.log_predictions(frame, [1], arc_class="C", ids=["n"])
    assert user_messages(mona, 1) == {"n": {"0": 1.5, "1": 2.5, "prediction": 1}}


def test_an_empty_frame_logs_nothing_and_says_nothing(mona: ForwardReceiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mona-logger")
    empty = pd.DataFrame({"a": pd.Series([], dtype=float)})
    assert ml.log_predictions(empty, np.array([]), arc_class="C") == []
    assert ml.log_predictions([], [], arc_class="C") == []
    assert ml.log_predictions(np.empty((0, 2)), [], arc_class="C", feature_names=["a", "b"]) == []
    assert client.flush(10)
    assert mona.records == []
    assert [line for line in mona_lines(caplog) if "log_predictions" in line] == []


def test_a_row_that_cannot_be_encoded_is_refused_alone(mona: ForwardReceiver, caplog: pytest.LogCaptureFixture) -> None:
    records = [{"a": 1}, {"a": object()}, {"a": 3}]
    ids = ml.log_predictions(records, [1, 1, 1], arc_class="C", ids=["ok1", "bad", "ok2"])
    assert ids == ["ok1", "bad", "ok2"]
    assert user_messages(mona, 2) == {"ok1": {"a": 1, "prediction": 1}, "ok2": {"a": 3, "prediction": 1}}
    errors = mona_lines(caplog, logging.ERROR)
    assert any("not JSON-able" in line for line in errors), errors
    assert any("1 of 3 row(s) not accepted" in line for line in errors), errors


def test_a_row_that_cannot_be_encoded_raises_after_the_others_when_raising_is_on(mona: ForwardReceiver) -> None:
    client.init_client(port=mona.port, should_raise_exceptions=True, print_logs=False)
    records = [{"a": object()}, {"a": 2}, {"a": 3}]
    with pytest.raises(client.MonaExportException, match=r"1 of 3 row\(s\) refused; the first: message is not JSON"):
        ml.log_predictions(records, [1, 1, 1], arc_class="C", ids=["bad", "ok1", "ok2"])
    assert user_messages(mona, 2) == {"ok1": {"a": 2, "prediction": 1}, "ok2": {"a": 3, "prediction": 1}}
    assert not [r for r in mona.records if "MONA_EXCEPTION_TYPE" in r["message"]]  # not the ARC's own failure


def test_reserved_clashing_and_repeated_columns_are_left_out_with_a_line(
    mona: ForwardReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    frame = pd.DataFrame([[1, 2, 3, 4, 5]], columns=["a", "MONA_ARC_CLASS", "prediction", "model", "a"])
    ml.log_predictions(frame, [9], arc_class="C", ids=["x"], model="v3")
    assert user_messages(mona, 1) == {"x": {"a": 1, "prediction": 9, "model": "v3"}}
    (line,) = mona_lines(caplog, logging.WARNING)
    assert "['MONA_ARC_CLASS', 'prediction', 'model', 'a'] left out" in line


def test_ids_that_cannot_name_an_arc_get_fresh_ones(mona: ForwardReceiver, caplog: pytest.LogCaptureFixture) -> None:
    ids = ml.log_predictions([{"a": 1}, {"a": 2}, {"a": 3}], [0, 0, 0], arc_class="C", ids=["good", "no spaces", None])
    assert ids[0] == "good" and ids[1] and ids[2] and len(set(ids)) == 3
    assert set(user_messages(mona, 3)) == set(ids)
    (line,) = mona_lines(caplog, logging.WARNING)
    assert "2 id(s) refused" in line and "logged in fresh ARCs" in line


def test_a_label_for_an_id_that_cannot_name_an_arc_is_refused_not_put_in_a_fresh_arc(
    mona: ForwardReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    assert ml.log_ground_truth("two words", 1) is False
    assert ml.log_ground_truth("fine", None) is False
    assert ml.log_ground_truth("fine", float("nan")) is False
    assert ml.log_ground_truth(42, 1) is True  # a numeric id, as log_predictions takes it: "42"
    assert user_messages(mona, 1) == {"42": {"label": 1}}
    errors = mona_lines(caplog, logging.ERROR)
    # The NaN label repeats the None label's line: held back by the rate limit.
    assert len(errors) == 2 and "context id is refused" in errors[0] and "None, NaN" in errors[1], errors


def test_inputs_of_unknown_kinds_are_refused_with_a_clear_line(
    mona: ForwardReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    assert ml.log_predictions("not a table", [1], arc_class="C") == []
    assert ml.log_predictions(np.ones((2, 3)), [1, 1], arc_class="C") == []  # no feature_names
    assert ml.log_prediction([1.0, 2.0], 1, arc_class="C") == ""
    assert ml.log_prediction({"a": 1}, 1, arc_class="") == ""
    assert ml.log_predictions({"a": 5}, [1], arc_class="C") == []
    errors = mona_lines(caplog, logging.ERROR)
    assert len(errors) == 5, errors
    assert "must be a pandas DataFrame, a 2-D numpy array, a list of dicts or a dict of lists" in errors[0]
    assert "needs feature_names=[...]" in errors[1]
    assert "must be a dict, a pandas Series or a 1-D numpy array, not a list" in errors[2]
    assert "arc_class must be a non-empty string" in errors[3]
    assert "'a' holds a int" in errors[4]


def test_log_exception_outside_a_context_or_with_nothing_to_record_says_so(
    mona: ForwardReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    assert ml.log_exception(ValueError("x")) is False
    with client.new_mona_context():
        assert ml.log_exception() is False  # no exception handled, no message
    errors = mona_lines(caplog, logging.ERROR)
    assert "outside any mona context" in errors[0] and "nothing is recorded" in errors[1], errors


_WITHOUT_NUMPY_AND_PANDAS = """
import sys
sys.modules["numpy"] = None  # an import of numpy or pandas now fails, as where they are not installed
sys.modules["pandas"] = None
from mona_client import client, ml

class Tensor:
    def __array__(self):
        raise AssertionError("never called without numpy")

client.init_client(port=int(sys.argv[1]), print_logs=True)
print(ml.log_prediction({"a": 1.5}, 1, arc_class="NO_NUMPY", context_id="plain"))
print(ml.log_predictions(Tensor(), [1], arc_class="NO_NUMPY"))
assert client.flush(10)
"""


def test_the_module_works_without_numpy_and_pandas_and_names_what_is_missing(mona: ForwardReceiver) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_NUMPY_AND_PANDAS, str(mona.port)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["plain", "[]"]
    assert "log_predictions(): a Tensor needs the numpy package: pip install numpy" in result.stderr
    assert user_messages(mona, 1) == {"plain": {"a": 1.5, "prediction": 1}}


def test_the_bench_runs_and_prints_its_table(tmp_path: Path) -> None:
    """The bench keeps working (no figure is checked: times on a shared machine say nothing in a test)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "bench.ml", "--quick"],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        env=env,
        timeout=80,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("| DataFrame |", "| list of dicts |", "| log_prediction(dict), one per call |"):
        assert row in result.stdout, result.stdout
    assert not list(tmp_path.glob("mona-bench-ml-*")), "the bench left its temporary files"
