"""The merger's writer process: it writes what a writing thread writes, byte for byte, and its death
(or its merger's) loses nothing and leaves no process behind."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from mona_client.record import TAG
from mona_collector import Collector
from mona_collector.merging.process import MergeLoop
from mona_collector.merging.writer import ThreadCommitter, WriterProcess
from mona_collector.report_rows import TEXT
from mona_collector.store import RawChunk, SQLiteRawLog, SQLiteStore, WriteSet, raw_log_path
from tests.support.collector import BASE, RawClient, bin32, entry, packed_message, record, stats, time_fixext8
from tests.support.waiting import wait_until

from .report.test_report_row_codes import _changes
from .report.test_report_side_table import assert_side_table_matches, side_table

#: Tables compared row by row between two databases (their own order: by every column).
TABLES = ("arcs", "arc_nodes", "tag_stats", "seen_ranges", "seen_ids")


def _records() -> List[List[Dict[str, Any]]]:
    """Messages of records that exercise every write: ARCs of two users, sub-contexts, a later
    export that wins, duplicates, texts for the side table, and one long ARC (beyond 16 KiB, kept as
    node rows) growing over many transactions."""
    messages = []
    for batch in range(40):
        records = []
        for arc in range(25):
            context = f"run-{batch % 7}-{arc}"
            user = "alice" if arc % 3 else "bob"
            records.append(
                record(context, {"MONA_ARC_CLASS": "scorer", "score": arc * 0.25, "tier": f"t{arc % 4}"}, user=user)
            )
            records.append(record(f"{context}.step", {"ms": batch + arc}, ts=BASE + batch, user=user))
            records.append(
                record(context, {"score": -1.0}, ts=BASE - 10, user=user, record_id=f"s:{batch * 100 + arc}")
            )
        records.append(record("long", {f"step-{batch}": "x" * 600}, record_id=f"l:{batch}"))
        records.append(record(f"long.s{batch}", {"loss": 1 / (batch + 1)}, record_id=f"l:{1000 + batch}"))
        records.append(record("long", {"dup": batch}, record_id=f"l:{batch}"))  # a duplicate of the first
        messages.append(records)
    return messages


def _fill(db_path: Path, messages: List[List[Dict[str, Any]]]) -> SQLiteRawLog:
    raw_log = SQLiteRawLog(raw_log_path(db_path), synchronous="OFF")
    for records in messages:
        blob = b"".join(entry(time_fixext8(BASE, 0), rec) for rec in records)
        raw_log.append([RawChunk(TAG, time.time(), len(records), None, None, blob)])
    raw_log.append([RawChunk("other.tag", time.time(), 1, None, None, entry(time_fixext8(BASE, 0), {"a": 1}))])
    return raw_log


def _merge(db_path: Path, with_process: bool) -> None:
    raw_log = _fill(db_path, _records())
    store = SQLiteStore(db_path, synchronous="OFF")
    committer = WriterProcess(store, "OFF") if with_process else ThreadCommitter(store)
    try:
        loop = MergeLoop(store, raw_log, committer=committer, batch_events=200)  # many transactions
        loop.merge_available()
        loop.close()
    finally:
        store.close()
        raw_log.close()


def _rows(db_path: Path, table: str) -> List[Any]:
    with sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True) as db:
        return sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def test_the_writer_process_writes_what_a_writing_thread_writes(tmp_path: Path) -> None:
    by_thread, by_process = tmp_path / "thread.db", tmp_path / "process.db"
    _merge(by_thread, with_process=False)
    _merge(by_process, with_process=True)
    for table in TABLES:
        assert _rows(by_process, table) == _rows(by_thread, table), table
    assert len(_rows(by_process, "arc_nodes")) == 40  # the long ARC's nodes are rows of their own
    assert side_table(by_process) == side_table(by_thread)
    assert_side_table_matches(by_process)
    counts = {tag: (events, duplicates) for tag, events, _, duplicates, *_ in _rows(by_process, "tag_stats")}
    assert counts == {TAG: (40 * 77, 40), "other.tag": (1, 0)}  # duplicates are not events


# --- what the writer answers ------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Any:
    opened = SQLiteStore(tmp_path / "answers.db")
    yield opened
    opened.close()


def _at_watermark(changes: WriteSet, watermark: int) -> WriteSet:
    changes.watermark, changes.log_id = watermark, "log"
    return changes


def test_the_writer_encodes_the_side_table_and_translates_codes_taken_between_its_writes(store: SQLiteStore) -> None:
    writer = WriterProcess(store)
    try:
        writer.commit(_changes("zero", {"score": 1.0})).result(timeout=60)  # "score" is code 1
        taken = _changes("one", {"score": 2.0, "country": "BR"})
        store.freeze(taken)
        assert taken.frozen[2] is None  # no rows encoded in the merging process
        with sqlite3.connect(str(store.path)) as other:  # a filling `mona report` takes the next codes
            other.execute("INSERT INTO report_names (code, name) VALUES (2, 'other')")
            other.execute("INSERT INTO report_labels (code, label) VALUES (1, 'elsewhere')")
        writer.commit(taken).result(timeout=60)
        writer.commit(_changes("two", {"country": "DE"})).result(timeout=60)
        writer.commit(_changes("three", {"country": "FR", "new": "x"})).result(timeout=60)
    finally:
        writer.close()
    assert_side_table_matches(store.path)
    rows = side_table(store.path)
    assert rows[("u", "one")][2] == {"score": (0, 2.0), "country": (TEXT, "BR")}
    assert rows[("u", "two")][2]["country"] == (TEXT, "DE") and rows[("u", "three")][2]["new"] == (TEXT, "x")
    with sqlite3.connect(str(store.path)) as db:
        assert db.execute("SELECT name FROM report_names WHERE code = 2").fetchone() == ("other",)


def test_a_watermark_already_merged_is_a_store_error_not_a_storage_failure(store: SQLiteStore) -> None:
    from mona_collector.store import StoreError, StoreUnavailable, is_storage_failure

    writer = WriterProcess(store)
    try:
        writer.commit(_at_watermark(_changes("one", {"a": 1}), 5)).result(timeout=60)
        future = writer.commit(_at_watermark(_changes("two", {"a": 2}), 5))
        with pytest.raises(StoreError, match="merged already") as raised:
            future.result(timeout=60)
        assert not isinstance(raised.value, StoreUnavailable) and not is_storage_failure(raised.value)
    finally:
        writer.close()


def test_a_dead_writer_fails_every_transaction_as_a_storage_failure(store: SQLiteStore) -> None:
    from mona_collector.store import StoreUnavailable

    writer = WriterProcess(store)
    try:
        writer.commit(_changes("one", {"a": 1})).result(timeout=60)
        os.kill(writer._process.pid, signal.SIGKILL)
        writer._process.wait(30)
        deadline = time.monotonic() + 30
        while True:  # the one given as it died fails; so does every later one, at once
            future = writer.commit(_changes("two", {"a": 2}))
            with pytest.raises(StoreUnavailable):
                future.result(timeout=60)
            if "exited" in str(future.exception()) or time.monotonic() > deadline:
                break
        assert "killed" in str(future.exception()) or "status -9" in str(future.exception())
    finally:
        writer.close()


# --- in a running collector --------------------------------------------------------------------------------


def _children(pid: int) -> List[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        return [int(child) for child in f.read().split()]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent has ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _send(client: RawClient, records: List[Dict[str, Any]], chunk: str) -> None:
    blob = b"".join(entry(time_fixext8(BASE, 0), rec) for rec in records)
    client.send(packed_message(TAG, bin32(blob), {"chunk": chunk}))
    assert client.answer() == {"ack": chunk}


def _arc_records(first: int, count: int) -> List[Dict[str, Any]]:
    return [record(f"arc-{n % 50}", {f"f{n}": n}, record_id=f"k:{n}") for n in range(first, first + count)]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Tuple[Path, Collector, RawClient]]:
    """A collector whose merger merged a first chunk of 500 records (ARCs ``arc-0`` to ``arc-49``)."""
    db_path = tmp_path / "collector.db"
    with Collector(port=0, db_path=db_path, synchronous="NORMAL", merger_max_backoff=0.5) as collector:
        client = RawClient(collector.port)
        _send(client, _arc_records(0, 500), "0")
        assert collector.wait_merged()
        yield db_path, collector, client


def test_a_killed_writer_restarts_the_merger_and_loses_nothing(running: Tuple[Path, Collector, RawClient]) -> None:
    db_path, collector, client = running
    (writer,) = _children(collector._merger.pid)
    for chunk in range(1, 11):  # the writer dies while these arrive
        if chunk == 3:
            os.kill(writer, signal.SIGKILL)
        _send(client, _arc_records(chunk * 500, 500), str(chunk))
    _send(client, _arc_records(1000, 500), "again")  # resent: every record is a duplicate
    assert collector.wait_merged(60), "the merger did not come back"
    assert collector.merger_restarts >= 1
    (new_writer,) = _children(collector._merger.pid)
    assert new_writer != writer
    counts = stats(db_path)
    assert counts["events"] == 5500 and counts["duplicates"] == 500
    assert "writer" in counts["merger_last_error"]
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT count(*), sum(export_count) FROM arcs").fetchone() == (50, 5500)


def test_the_writer_ends_with_its_merger(running: Tuple[Path, Collector, RawClient]) -> None:
    db_path, collector, client = running
    merger = collector._merger.pid
    (writer,) = _children(merger)
    os.kill(merger, signal.SIGKILL)
    assert wait_until(lambda: not _alive(writer)), "the writer outlived its merger"
    _send(client, _arc_records(500, 100), "1")
    assert collector.wait_merged(30), "the merger was not restarted"
    assert stats(db_path)["events"] == 600
