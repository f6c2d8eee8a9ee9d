"""Codes of the report's side table given where ARCs are merged: they stay right when another writer
takes them meanwhile or when the transaction that inserts them rolls back while the next one is
already encoded on top of it (the merger encodes one transaction while the previous is written)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest

from mona_collector.merging.writer import WriteRefusedError, WriterProcess
from mona_collector.report_rows import TEXT
from mona_collector.store import SQLiteStore, TagCounts, WriteSet

from .test_report_side_table import _document, assert_side_table_matches, side_table


def _changes(context: str, fields: Dict[str, Any]) -> WriteSet:
    return WriteSet(arcs=[(("u", context), _document(context, fields))])


Write = Callable[[SQLiteStore, WriteSet], None]


@pytest.fixture(params=["inline", "writer process"])
def write(request: pytest.FixtureRequest) -> Iterator[Write]:
    """Writes a transaction as the merger does: ``store.write`` in the merging process, or through the
    merger's writer process (which raises :class:`WriteRefusedError` where the store raised)."""
    writers: Dict[int, WriterProcess] = {}

    def by_writer(store: SQLiteStore, changes: WriteSet) -> None:
        writer = writers.get(id(store)) or writers.setdefault(id(store), WriterProcess(store))
        writer.commit(changes).result(timeout=60)

    yield (lambda store, changes: store.write(changes)) if request.param == "inline" else by_writer
    for writer in writers.values():
        writer.close()


def _take_codes(path: Path, names: Dict[int, str], labels: Dict[int, str]) -> None:
    """Another writer (a ``mona report`` filling the table) inserts these codes and commits."""
    with sqlite3.connect(str(path)) as other:
        other.executemany("INSERT INTO report_names (code, name) VALUES (?, ?)", names.items())
        other.executemany("INSERT INTO report_labels (code, label) VALUES (?, ?)", labels.items())


def test_codes_taken_by_another_writer_meanwhile_are_translated(tmp_path: Path, write: Write) -> None:
    path = tmp_path / "taken.db"
    store = SQLiteStore(path)
    try:
        write(store, _changes("zero", {"score": 1.0}))  # "score" is code 1, committed
        frozen = _changes("one", {"score": 2.0, "country": "BR", "tier": "pro"})
        store.freeze(frozen)  # gives "country" and "tier" codes 2 and 3, "BR" and "pro" 1 and 2
        # meanwhile: code 2 is taken by another name, and "tier" and "pro" get codes of their own
        _take_codes(path, {2: "other", 7: "tier"}, {1: "elsewhere", 9: "pro"})
        write(store, frozen)
        write(store, _changes("two", {"country": "DE", "tier": "pro", "new": "x"}))  # after: a new epoch
    finally:
        store.close()
    assert_side_table_matches(path)
    rows = side_table(path)
    assert rows[("u", "one")][2] == {"score": (0, 2.0), "country": (TEXT, "BR"), "tier": (TEXT, "pro")}
    assert rows[("u", "two")][2] == {"country": (TEXT, "DE"), "tier": (TEXT, "pro"), "new": (TEXT, "x")}
    with sqlite3.connect(str(path)) as db:
        assert db.execute("SELECT code FROM report_names WHERE name = 'tier'").fetchone() == (7,)
        assert db.execute("SELECT code FROM report_labels WHERE label = 'pro'").fetchone() == (9,)


def test_a_transaction_encoded_on_top_of_one_that_rolls_back_is_written_right(tmp_path: Path, write: Write) -> None:
    path = tmp_path / "rolled.db"
    store = SQLiteStore(path)
    try:
        failing = _changes("one", {"first": "x"})
        failing.tags["t"] = TagCounts(events=2**70)  # SQLite cannot bind it: the transaction rolls back
        store.freeze(failing)  # gives "first" and "x" their codes
        following = _changes("two", {"first": "x", "second": "y"})
        store.freeze(following)  # encoded before the one below it is written: reuses those codes
        with pytest.raises((OverflowError, WriteRefusedError), match="too large to convert"):
            write(store, failing)
        write(store, following)
        write(store, _changes("three", {"first": "z"}))
    finally:
        store.close()
    assert_side_table_matches(path)
    rows = side_table(path)
    assert list(rows) == [("u", "two"), ("u", "three")]
    assert rows[("u", "two")][2] == {"first": (TEXT, "x"), "second": (TEXT, "y")}


def test_many_labels_start_new_epochs_without_losing_a_code(tmp_path: Path) -> None:
    """A field of unique strings: the labels the merger caches are bounded, codes stay unique."""
    path = tmp_path / "labels.db"
    store = SQLiteStore(path)
    store._report_rows.MAX_CACHED_LABELS = 50
    try:
        pending = None
        for batch in range(12):
            changes = WriteSet(
                arcs=[
                    (("u", f"a{batch}-{i}"), _document(f"a{batch}-{i}", {"id": f"v{batch * 7 + i}"})) for i in range(30)
                ]
            )
            store.freeze(changes)  # encoded while the one before is not written yet
            if pending is not None:
                store.write(pending)
            pending = changes
        assert pending is not None
        store.write(pending)
    finally:
        store.close()
    assert_side_table_matches(path)
