"""The report's side table (``report_rows``): kept by the merger with the ARC documents, equal to what
flattening the current documents gives, through late updates, merger deaths and old databases."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import struct
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

import numpy as np

from bench.report_data import append_records, build_database, record, unmerged_rows
from mona_collector import Collector
from mona_collector.merging.documents import new_document, new_node
from mona_collector.readers import SQLiteReader
from mona_collector.report.source import read_table, read_table_from_documents
from mona_collector.report.table import ColumnTable
from mona_collector.report_rows import COUNTED, NULL, NUMBER, TEXT, flatten_arc, kind_of, text_label
from mona_collector.store import SQLiteStore, TagCounts, WriteSet

from .conftest import NOW, mona_report

Decoded = Dict[str, Tuple[int, Any]]


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def side_table(db: Path) -> Dict[Tuple[str, str], Tuple[Any, float, Decoded]]:
    """Every row of the side table decoded record by record with struct (not the report's reader)."""
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as connection:
        names = {code: _text(name) for code, name in connection.execute("SELECT code, name FROM report_names")}
        labels = {code: _text(label) for code, label in connection.execute("SELECT code, label FROM report_labels")}
        rows = connection.execute("SELECT user_id, context_id, arc_class, arc_time, fields FROM report_rows").fetchall()
    decoded = {}
    for user, context, arc_class, arc_time, blob in rows:
        records = list(struct.iter_unpack("<Id", blob))
        assert records[0] == (0, arc_time), "a row starts with its time"
        fields: Decoded = {}
        for key, value in records[1:]:
            kind = key & 3
            fields[names[key >> 2]] = (kind, labels[int(value)] if kind == TEXT else value)
        decoded[(_text(user), _text(context))] = (arc_class, arc_time, fields)
    return decoded


def _expected(value: Any) -> Tuple[int, Any]:
    kind = kind_of(value)
    if kind == NUMBER:
        try:
            return kind, float(value)
        except OverflowError:
            return kind, float("inf")
    if kind == TEXT:
        return kind, text_label(value)
    return kind, 0.0


def flattened_documents(db: Path) -> Dict[Tuple[str, str], Tuple[Any, float, Decoded]]:
    """Every ARC as flattening its current document through the store's public API gives."""
    store = SQLiteStore(db, readonly=True)
    try:
        return {
            (document["user_id"], document["context_id"]): (
                document["arc_class"],
                float(document["first_export"]),
                {name: _expected(value) for name, value in flatten_arc(document).items()},
            )
            for document in store.iter_arcs()
        }
    finally:
        store.close()


def assert_side_table_matches(db: Path) -> None:
    rows, documents = side_table(db), flattened_documents(db)
    assert rows.keys() == documents.keys()
    for key, expected in documents.items():
        assert _same(rows[key], expected), (key, rows[key], expected)


def _same(row: Any, expected: Any) -> bool:
    # NaN never equals itself: compare the reprs of the values
    return repr(row) == repr(expected)


def mixed_records(now: float) -> List[dict]:
    """ARCs with every kind of value: nested and same-class sub-contexts, globals, lists, maps, nulls,
    booleans, huge integers, a field that is a number in one ARC and a string in another."""
    records = []
    for i in range(60):
        context = f"mix-{i}"
        when = now - 3000 + i - (2 * 86400 if i % 2 else 0)  # half of them in the baseline
        root: Dict[str, Any] = {
            "MONA_ARC_CLASS": "MIXED",
            "score": float(i) / 7,
            "count": i,
            "flag": i % 2 == 0,
            "country": ["DE", "FR", "BR"][i % 3],
            "maybe": None if i % 4 == 0 else i,
            "tags": ["a", "b"],
            "meta": {"k": 1},
            "huge": 2**64 - 1 if i == 5 else i,
            "odd": "text" if i % 10 == 0 else 1.5,
            "nan": float("nan") if i == 3 else 1.0,
            "MONA_GLOBALS": {"model": f"m{i % 2}"},
        }
        records.append(record(context, root, when))
        records.append(record(f"{context}.a", {"MONA_ARC_CLASS": "STEP", "ms": i}, when))
        records.append(record(f"{context}.b", {"MONA_ARC_CLASS": "STEP", "ms": i + 1000}, when))
        records.append(record(f"{context}.a.deep", {"x": i * 2}, when))
        records.append(record(f"{context}.plain", {"y": "v"}, when))
    return records


def test_side_table_equals_the_flattened_documents(tmp_path: Path) -> None:
    path = tmp_path / "mixed.db"
    build_database(path, mixed_records(NOW))
    assert_side_table_matches(path)
    row = side_table(path)[("gen", "mix-5")][2]
    assert row["STEP.ms"] == (NUMBER, 1005.0), "the sub-context shown last gives the value"
    assert row["STEP.deep.x"] == (NUMBER, 10.0)
    assert row["huge"] == (NUMBER, float(2**64 - 1)) and row["flag"] == (TEXT, "false")
    assert row["tags"] == (COUNTED, 0.0) and row["meta"] == (COUNTED, 0.0)
    assert side_table(path)[("gen", "mix-4")][2]["maybe"] == (NULL, 0.0)


def _assert_same_tables(fast: ColumnTable, slow: ColumnTable) -> None:
    assert np.array_equal(fast.times, slow.times)
    assert [(f.name, f.kind, f.types) for f in fast.fields] == [(f.name, f.kind, f.types) for f in slow.fields]
    for mine, theirs in zip(fast.fields, slow.fields):
        assert np.array_equal(mine.present, theirs.present) and np.array_equal(mine.mismatch, theirs.mismatch)
    assert fast.kapis.keys() == slow.kapis.keys() and fast.dimensions.keys() == slow.dimensions.keys()
    for name, column in fast.kapis.items():
        assert np.array_equal(column.values, slow.kapis[name].values, equal_nan=True), name
    for name, dimension in fast.dimensions.items():
        assert dimension.labels == slow.dimensions[name].labels, name
        assert np.array_equal(dimension.codes, slow.dimensions[name].codes), name


def test_the_report_reads_the_same_table_as_from_the_documents(tmp_path: Path) -> None:
    path = tmp_path / "mixed.db"
    build_database(path, mixed_records(NOW))
    reader = SQLiteReader(path)
    try:
        ranges = [(NOW - 86400, NOW + 1)]
        fast = read_table(reader, "MIXED", ranges, say=lambda line: None)
        assert fast.rows == 30
        _assert_same_tables(fast, read_table_from_documents(reader, "MIXED", ranges))
    finally:
        reader.close()


def test_late_updates_rewrite_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "late.db"
    build_database(path, mixed_records(NOW))
    # hours later: ground truth into existing ARCs, an export older than the first (the ARC's time
    # moves back), a class change, and a new sub-context of a class already there
    late = []
    for i in range(0, 60, 3):
        late.append(record(f"mix-{i}", {"label": i % 2 == 0, "score": None}, NOW + 3600))
        late.append(record(f"mix-{i}.c", {"MONA_ARC_CLASS": "STEP", "ms": -1}, NOW + 3600))
    late.append(record("mix-1", {"early": 1}, NOW - 90000 - 2 * 86400))
    late.append(record("mix-2", {"MONA_ARC_CLASS": "OTHER"}, NOW + 7200))
    build_database(path, late)
    assert_side_table_matches(path)
    rows = side_table(path)
    assert rows[("gen", "mix-3")][2]["label"] == (TEXT, "false") and rows[("gen", "mix-3")][2]["score"] == (NULL, 0.0)
    assert rows[("gen", "mix-3")][2]["STEP.ms"] == (NUMBER, -1.0)
    assert rows[("gen", "mix-1")][1] == NOW - 90000 - 2 * 86400
    assert rows[("gen", "mix-2")][0] == "OTHER"


def test_rows_stay_in_step_when_the_merger_is_killed_and_restarted(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    append_records(path, mixed_records(NOW) * 40)  # resends of the same exports: many transactions
    append_records(path, (record(f"mix-{i % 60}", {"round": float(i)}, NOW + i) for i in range(40000)))
    # a small merge cache: a raw row per transaction, so the kill lands amid many of them
    options: Dict[str, Any] = dict(synchronous="OFF", merger_max_backoff=0.2, merge_cache_bytes=2**20)
    total = unmerged_rows(path)
    with Collector(port=0, db_path=path, **options) as collector:
        merger = collector._merger
        assert merger is not None and merger.pid is not None
        deadline = time.monotonic() + 60
        while unmerged_rows(path) == total:  # until one transaction is committed
            assert time.monotonic() < deadline, "the merger did not start merging"
            time.sleep(0.01)
        os.kill(merger.pid, signal.SIGKILL)  # a real death, mid-transaction or between two
        while unmerged_rows(path) or merger.restarts < 1:
            assert time.monotonic() < deadline, "the restarted merger did not catch up"
            time.sleep(0.05)
    assert_side_table_matches(path)
    assert side_table(path)[("gen", "mix-19")][2]["round"] == (NUMBER, 39979.0)


def _document(context: str, fields: Dict[str, Any]) -> Any:
    document = new_document("u", context, NOW)
    document["export_count"] = 1
    document["node"] = new_node()
    document["node"][0] = "FAILS"
    document["node"][2] = fields
    return document


def test_a_rolled_back_transaction_gives_no_codes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "rollback.db")
    try:
        failing = WriteSet(arcs=[(("u", "one"), _document("one", {"first": "x"}))])
        failing.tags["t"] = TagCounts(events=2**70)  # SQLite cannot bind it: the transaction rolls back
        try:
            store.write(failing)
        except OverflowError:
            pass
        else:
            raise AssertionError("the write was expected to fail")
        store.write(WriteSet(arcs=[(("u", "two"), _document("two", {"first": "y", "second": "z"}))]))
    finally:
        store.close()
    rows = side_table(tmp_path / "rollback.db")
    assert list(rows) == [("u", "two")]
    assert rows[("u", "two")][2] == {"first": (TEXT, "y"), "second": (TEXT, "z")}


def _drop_side_table(path: Path) -> None:
    """Make ``path`` a database as written before the side table existed."""
    with sqlite3.connect(str(path)) as connection:
        connection.executescript(
            "DROP TABLE report_rows; DROP TABLE report_names; DROP TABLE report_labels;"
            " DELETE FROM meta WHERE key = 'report_rows_version';"
        )


def _json(output: str) -> Dict[str, Any]:
    report: Dict[str, Any] = json.loads(output)
    report.pop("generated_at")
    return report


def test_a_database_from_before_the_side_table_reports_the_same(tmp_path: Path, fraud_db: Path) -> None:
    old = tmp_path / "old.db"
    store = SQLiteStore(fraud_db, readonly=True)
    store.close()
    with sqlite3.connect(str(fraud_db)) as source, sqlite3.connect(str(old)) as target:
        source.backup(target)
    _drop_side_table(old)
    # the same periods in every run
    since, until = (datetime.fromtimestamp(when, timezone.utc).isoformat() for when in (NOW - 86400, NOW))
    args = ["--arc-class", "FRAUD_SCORER", "--since", since, "--until", until, "--json"]
    status, before_fill, err = mona_report(old, *args)
    assert status == 0 and "building the report table" in err and "9,000 ARC documents" in err
    assert_side_table_matches(old)
    status, after_fill, err = mona_report(old, *args)
    assert status == 0 and err == "", "filled once"
    status, fresh, _ = mona_report(fraud_db, *args)
    assert _json(before_fill) == _json(after_fill) == _json(fresh)


def test_a_collector_started_on_an_old_database_keeps_the_rows_it_touches(tmp_path: Path) -> None:
    path = tmp_path / "upgraded.db"
    build_database(path, mixed_records(NOW))
    _drop_side_table(path)
    build_database(path, [record("mix-7", {"late": 1.0}, NOW + 60)])  # the side table is created again
    assert list(side_table(path)) == [("gen", "mix-7")], "only the ARC touched so far"
    status, _, err = mona_report(path, "--arc-class", "MIXED", "--json")
    assert status == 0 and "60 ARC documents" in err
    assert_side_table_matches(path)


def test_a_read_only_copy_of_the_rows_is_read_only(tmp_path: Path) -> None:
    """A report never writes a database whose side table is complete."""
    path = tmp_path / "complete.db"
    build_database(path, mixed_records(NOW))
    shutil.copy(path, tmp_path / "before.db")
    status, _, err = mona_report(path, "--arc-class", "MIXED")
    assert status == 0 and err == ""
    assert _tables(path) == _tables(tmp_path / "before.db")


def _tables(path: Path) -> Iterable[Any]:
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as connection:
        return [
            connection.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
            for table in ("report_rows", "report_names", "report_labels", "meta")
        ]


def test_sub_arcs_with_ids_the_client_made_up_share_one_name() -> None:
    from mona_collector.report_rows import UNNAMED_SUB_ARC, flatten_arc

    def arc(sub_id: str) -> Dict[str, Any]:
        return {
            "fields": {"root": 1},
            "globals": {},
            "sub_arcs": {
                sub_id: {"arc_class": None, "fields": {"score": 0.5}, "sub_arcs": {}},
                "features": {"arc_class": None, "fields": {"n": 3}, "sub_arcs": {}},
            },
        }

    first, second = flatten_arc(arc("3f2a9c0d1e4b5a67-26")), flatten_arc(arc("0123456789abcdef-9001"))
    assert first == second == {"root": 1, f"{UNNAMED_SUB_ARC}.score": 0.5, "features.n": 3}
