"""export(): value conversions, reserved keys, timestamps, refusals, batches; checked on the wire."""

from __future__ import annotations

import datetime
import decimal
import enum
import logging
import time
import uuid
from collections import OrderedDict, namedtuple

import numpy as np
import pytest

from mona_client import client
from mona_client.record import INVALID_EXPORT_TIMESTAMP_KEY
from mona_collector import Collector
from tests.support.collector import stored_arcs


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def exported(receiver, count=1):
    assert client.flush(10)
    return [r["message"] for r in receiver.wait_records(count)]


def test_conversions_of_common_non_json_types(mona):
    Point = namedtuple("Point", "x y")
    message = {
        "np_float": np.float32(0.5),
        "np_int": np.int64(7),
        "np_bool": np.bool_(True),
        "np_array": np.arange(4).reshape(2, 2),
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2026, 1, 2),
        "price": decimal.Decimal("1.25"),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "color": Color.RED,
        "level": Level.HIGH,
        "tags": {"b"},
        "point": Point(1, 2),
        "ordered": OrderedDict(a=1),
        "blob": b"text",
        "nested": {"list": [np.float64(1.5), (1, 2)], "none": None},
    }
    with client.new_mona_context():
        assert client.export(message)
    (got,) = exported(mona)
    assert got == {
        "np_float": 0.5,
        "np_int": 7,
        "np_bool": True,
        "np_array": [[0, 1], [2, 3]],
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "price": 1.25,
        "id": "12345678-1234-5678-1234-567812345678",
        "color": "red",
        "level": 3,
        "tags": ["b"],
        "point": [1, 2],
        "ordered": {"a": 1},
        "blob": "text",
        "nested": {"list": [1.5, [1, 2]], "none": None},
    }


def test_the_message_is_a_snapshot_taken_at_export(mona):
    message = {"items": [1, 2], "score": 1}
    with client.new_mona_context():
        client.export(message)
        message["score"] = 2
        message["items"].append(3)
    assert exported(mona) == [{"items": [1, 2], "score": 1}]


@pytest.mark.parametrize(
    "bad",
    [
        "not a mapping",
        ["a", "list"],
        {"obj": object()},
        {1: "int key"},
        {"deep": {"deeper": [object()]}},
    ],
)
def test_bad_messages_are_a_log_line_and_false(mona, caplog, bad):
    with client.new_mona_context():
        with caplog.at_level(logging.ERROR, logger="mona-logger"):
            assert client.export(bad) is False
        client.export({"after": "still works"})
    assert "mona-client:" in caplog.text
    assert exported(mona) == [{"after": "still works"}]


def test_bad_message_raises_when_raising_is_on(mona):
    client.init_client(port=mona.port, should_raise_exceptions=True, print_logs=False)
    with client.new_mona_context():
        with pytest.raises(client.MonaExportException, match="JSON-able"):
            client.export({"obj": object()})
        with pytest.raises(client.MonaExportException, match="mapping"):
            client.export(42)
    with pytest.raises(client.MonaExportException, match="outside any mona context"):
        client.export({"a": 1})


def test_export_outside_any_context_is_refused_with_a_clear_line(mona, caplog):
    with caplog.at_level(logging.ERROR, logger="mona-logger"):
        assert client.export({"a": 1}) is False
    assert "outside any mona context" in caplog.text
    client.flush(5)
    assert mona.records == []


def test_reserved_keys_are_dropped_with_a_warning(mona, caplog):
    with client.new_mona_context(), caplog.at_level(logging.WARNING, logger="mona-logger"):
        assert client.export({"MONA_ARC_CLASS": "spoof", "MONA_x": 1, "kept": 2, "xMONA_": 3})
    assert exported(mona) == [{"kept": 2, "xMONA_": 3}]
    assert "MONA_ARC_CLASS" in caplog.text and "reserved" in caplog.text


def test_valid_export_timestamps_are_integer_seconds(mona):
    with client.new_mona_context():
        client.export({"i": 1}, export_timestamp=1_700_000_000)
        client.export({"f": 1}, export_timestamp=1_700_000_000.75)
        client.export({"n": 1}, export_timestamp=np.float64(1_700_000_001.2))
    client.flush(10)
    records = mona.wait_records(3)
    assert [r["export_timestamp"] for r in records] == [1_700_000_000, 1_700_000_000, 1_700_000_001]
    # The event time on the wire is the same integer: never a float.
    assert [e.seconds for e in mona.events] == [1_700_000_000, 1_700_000_000, 1_700_000_001]
    assert all(type(frame[1]) is str or isinstance(frame[1], bytes) for frame in mona.raw_frames)


@pytest.mark.parametrize("bad", ["yesterday", float("nan"), -5, 1e13, True, [1]])
def test_invalid_export_timestamp_is_replaced_by_now_and_kept(mona, bad):
    before = int(time.time())
    with client.new_mona_context():
        assert client.export({"v": 1}, export_timestamp=bad)
    client.flush(10)
    (record,) = mona.wait_records(1)
    assert before <= record["export_timestamp"] <= int(time.time())
    kept = record["message"][INVALID_EXPORT_TIMESTAMP_KEY]
    if isinstance(bad, float) and bad != bad:
        assert kept != kept  # NaN travels as NaN
    else:
        assert kept == bad
    assert record["message"]["v"] == 1


def test_export_batch_with_own_contexts_and_classes(mona):
    with client.new_mona_context(context_id="current"):
        ok = client.export_batch(
            [
                {"message": {"a": 1}},
                {"message": {"b": 2}, "context_id": "other.sub", "arc_class": "OTHER"},
                {"message": {"c": 3}, "export_timestamp": 1_700_000_000},
            ]
        )
    assert ok
    client.flush(10)
    got = [(r["context"], r["message"], r["export_timestamp"]) for r in mona.wait_records(4)]
    now_ish = got[0][2]
    assert got == [
        ("current", {"a": 1}, now_ish),
        ("other.sub", {"MONA_ARC_CLASS": "OTHER"}, got[1][2]),
        ("other.sub", {"b": 2}, got[2][2]),
        ("current", {"c": 3}, 1_700_000_000),
    ]


def test_export_batch_refuses_bad_events_but_keeps_the_good(mona, caplog):
    with caplog.at_level(logging.ERROR, logger="mona-logger"):
        ok = client.export_batch([{"nomessage": 1}, "junk", {"message": {"a": 1}, "context_id": "c"}])
        assert client.export_batch(17) is False
    assert ok is False
    assert exported(mona) == [{"a": 1}]


def test_record_ids_are_unique_per_record(mona):
    with client.new_mona_context():
        for i in range(500):
            client.export({"i": i})
    client.flush(10)
    ids = [r["record_id"] for r in mona.wait_records(500)]
    assert len(set(ids)) == 500


# --- the size of one record -----------------------------------------------------------------


def mona_errors(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "mona-logger" and r.levelno >= logging.ERROR]


def test_a_record_over_the_default_limit_is_refused_and_delivery_goes_on(mona, caplog):
    assert client._runtime.settings.max_record_bytes == 2**20  # MONA_MAX_RECORD_BYTES's default: 1 MiB
    with client.new_mona_context(context_id="big"):
        with caplog.at_level(logging.ERROR, logger="mona-logger"):
            assert client.export({"blob": "x" * 2**20}) is False
            assert client.export({"blob": "x" * (10 * 2**20)}) is False
        assert client.export({"blob": "y" * (2**20 - 300)}) is True  # just under the limit
        assert client.export({"after": 1}) is True
    (line,) = mona_errors(caplog)  # the same refusal twice: one line
    assert "MONA_MAX_RECORD_BYTES" in line and str(2**20) in line and "blob" in line
    got = exported(mona, 2)
    assert [list(m) for m in got] == [["blob"], ["after"]] and got[0]["blob"][0] == "y"


def test_the_record_limit_holds_for_batches_and_the_clients_own_exports(mona, caplog, monkeypatch):
    monkeypatch.setenv("MONA_MAX_RECORD_BYTES", "2KiB")
    client.init_client(port=mona.port, user_id="tester", print_logs=False)
    assert client._runtime.settings.max_record_bytes == 2048
    with caplog.at_level(logging.ERROR, logger="mona-logger"):
        # A global init message that could never be exported is refused when set.
        assert client.set_global_init_message({"config": "g" * 3000}) is False
        # An arc class too large is not exported; the block runs on.
        with client.new_mona_context(arc_class="C" * 3000, context_id="huge-class"):
            assert client.export({"small": 1}) is True
        ok = client.export_batch(
            [
                {"message": {"large": "z" * 3000}, "context_id": "batch"},
                {"message": {"fits": 2}, "context_id": "batch"},
            ]
        )
        assert ok is False
    lines = mona_errors(caplog)
    assert len(lines) == 3 and all("MONA_MAX_RECORD_BYTES = 2048" in line for line in lines)
    assert "set_global_init_message" in lines[0] and "arc class" in lines[1] and "large" in lines[2]
    client.flush(10)
    records = mona.wait_records(2)
    assert [(r["context"], r["message"]) for r in records] == [("huge-class", {"small": 1}), ("batch", {"fits": 2})]


def test_a_record_over_the_limit_raises_when_raising_is_on(mona, monkeypatch):
    monkeypatch.setenv("MONA_MAX_RECORD_BYTES", "1000")
    client.init_client(port=mona.port, should_raise_exceptions=True, print_logs=False)
    with client.new_mona_context():
        with pytest.raises(client.MonaExportException, match="MONA_MAX_RECORD_BYTES = 1000"):
            client.export({"text": "t" * 1000})
        assert client.export({"text": "t" * 100}) is True


# --- keys of nested maps ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"m": {(1, 2): "x"}}, "message['m'] has the key (1, 2) (tuple)"),
        ({"l": [{"a": {frozenset({1}): 1}}]}, "message['l'][0]['a'] has the key frozenset({1}) (frozenset)"),
        ({"o": OrderedDict([((3,), 1)])}, "message['o'] has the key (3,) (tuple)"),
    ],
)
def test_nested_keys_the_collector_cannot_store_are_refused(mona, caplog, bad, where):
    with client.new_mona_context():
        with caplog.at_level(logging.ERROR, logger="mona-logger"):
            assert client.export(bad) is False
        assert client.export({"after": 1})
    (line,) = mona_errors(caplog)
    assert where in line and "keys of nested maps" in line
    assert exported(mona) == [{"after": 1}]


def test_nested_keys_raise_when_raising_is_on(mona):
    client.init_client(port=mona.port, should_raise_exceptions=True, print_logs=False)
    with client.new_mona_context(), pytest.raises(client.MonaExportException, match="keys of nested maps"):
        client.export({"m": {(1, 2): "x"}})


def test_nested_scalar_keys_are_accepted_and_stored_by_the_collector(tmp_path):
    db_path = tmp_path / "collector.db"
    with Collector(port=0, db_path=db_path, stall_timeout=1.0, synchronous="NORMAL") as collector:
        export_nested_keys(collector.port, tmp_path)
    (arc,) = stored_arcs(db_path, "nested-keys")
    assert arc["fields"] == {
        "by_int": {1: "a", 2.5: "b", None: "c", False: "d", "red": "e", 3: "f"},
        "values": {"point": [1, 2], "deeper": [{"k": [3]}]},
    }


def export_nested_keys(port, tmp_path):
    config = tmp_path / "mona_client_config.json"
    config.write_text('{"disable_all": false}')
    client.init_client(port=port, user_id="nested", config_file=str(config), print_logs=False)
    try:
        with client.new_mona_context(context_id="nested-keys"):
            assert client.export(
                {
                    "by_int": {1: "a", 2.5: "b", None: "c", False: "d", Color.RED: "e", Level.HIGH: "f"},
                    "values": {"point": (1, 2), "deeper": [{"k": (3,)}]},
                }
            )
        assert client.flush(10)
    finally:
        client.reset()
        client.close(5)
