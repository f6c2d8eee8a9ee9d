"""The merger's parts on their own: its line protocol, the event-time decoder, the duplicate test of a
message, the merge of a message at once against record by record, extensions kept as they came, and a
merger module that imports without ``fcntl``."""

from __future__ import annotations

import math
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import msgpack
import pytest

from mona_client.forward import EventTime, ForwardProtocolError, pack_entry
from mona_client.record import TAG
from mona_collector.event_time import decode_time, keep_extension, time_seconds
from mona_collector.forward_codec import scan_entries
from mona_collector.merging import protocol
from mona_collector.merging.documents import ArcMerger, is_later_or_same
from mona_collector.merging.process import MergeLoop, decode_entries, time_span
from mona_collector.merging.record_ids import RecordIdFilter
from mona_collector.store import RawChunk, SQLiteRawLog, SQLiteStore, raw_log_path
from tests.support.collector import BASE, entry, record, time_fixext8

# --- the line protocol between the collector and the merger process ---------------------------------


@pytest.mark.parametrize(
    "message, line",
    [
        (protocol.RowsAppended(12), b"raw 12\n"),
        (protocol.StopAt(0), b"stop 0\n"),
        (protocol.Merged(7, 3000), b"merged 7 3000\n"),
        (
            protocol.Failed("OSError: [Errno 28] No space left on device"),
            b"error OSError: [Errno 28] No space left on device\n",
        ),
        (protocol.Stopped(), b"stopped\n"),
    ],
)
def test_each_protocol_message_round_trips(
    message: Union[protocol.RowsAppended, protocol.StopAt, protocol.Merged, protocol.Failed, protocol.Stopped],
    line: bytes,
) -> None:
    assert protocol.encode(message) == line
    parse = (
        protocol.parse_command
        if isinstance(message, (protocol.RowsAppended, protocol.StopAt))
        else protocol.parse_report
    )
    assert parse(line) == message


def test_an_error_report_is_one_line() -> None:
    line = protocol.encode(protocol.Failed("disk\nfull \t now"))
    assert line == b"error disk full now\n"
    assert protocol.parse_report(line) == protocol.Failed("disk full now")


@pytest.mark.parametrize("line", [b"raw\n", b"raw x\n", b"raw -1\n", b"stop 1 2\n", b"merge 1\n", b"raw \xd9\xa3\n"])
def test_a_line_that_is_no_command_is_refused(line: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_command(line)


@pytest.mark.parametrize("line", [b"merged 1\n", b"merged a b\n", b"stopped 0 0\n", b"hello\n"])
def test_a_line_that_is_no_report_is_refused(line: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_report(line)


# --- one event-time decoder ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (1_700_000_000, (1_700_000_000, 0)),
        (EventTime(1_700_000_000, 5), (1_700_000_000, 5)),
        (msgpack.ExtType(0, struct.pack(">II", 1_700_000_000, 5)), (1_700_000_000, 5)),
        (keep_extension(0, struct.pack(">II", 1_700_000_000, 5)), (1_700_000_000, 5)),
        (1_700_000_000.25, (1_700_000_000, 250_000_000)),
    ],
)
def test_every_form_of_an_event_time_decodes_the_same(value: object, expected: Tuple[int, int]) -> None:
    assert decode_time(value) == expected


@pytest.mark.parametrize(
    "value",
    [True, math.nan, math.inf, "1700000000", None, keep_extension(5, b"12345678"), keep_extension(0, b"1234")],
)
def test_what_is_no_event_time_is_refused(value: object) -> None:
    with pytest.raises(ForwardProtocolError):
        decode_time(value)


@pytest.mark.parametrize(
    "time_value, time_bytes",
    [
        (1_700_000_000, msgpack.packb(1_700_000_000)),
        (1.5, msgpack.packb(1.5)),
        (EventTime(1, 2), time_fixext8(1, 2)),
        (msgpack.ExtType(3, b"12345678"), msgpack.packb(msgpack.ExtType(3, b"12345678"))),
        (math.nan, msgpack.packb(math.nan)),
        (-math.inf, msgpack.packb(-math.inf)),
        (True, msgpack.packb(True)),
        ("t", msgpack.packb("t")),
    ],
)
def test_the_byte_scan_and_the_decoder_agree(time_value: object, time_bytes: bytes) -> None:
    entries = entry(time_bytes, {"k": 1})
    try:
        decode_time(time_value)
    except ForwardProtocolError:
        with pytest.raises(ForwardProtocolError):
            scan_entries(entries)
    else:
        assert scan_entries(entries) == 1


def test_the_merger_keeps_extensions_as_they_came() -> None:
    blob = b"".join(
        [entry(time_fixext8(BASE, 7), record("a", {"v": 1})), entry(time_fixext8(BASE + 1, 0), record("a", {"v": 2}))]
    )
    items, undecodable = decode_entries(blob, 2)
    assert undecodable == 0
    assert decode_time(items[0][0]) == (BASE, 7)
    assert time_span(items) == (time_seconds(items[0][0]), BASE + 1)


def test_an_extension_in_a_record_is_stored_as_an_extension(tmp_path: Path) -> None:
    db_path = tmp_path / "c.db"
    raw_log = SQLiteRawLog(raw_log_path(db_path))
    store = SQLiteStore(db_path)
    try:
        rec = record("ext", {"blob": msgpack.ExtType(42, b"xyz"), "list": [1, 2]})
        blob = pack_entry(EventTime(BASE, 0), rec)
        raw_log.append([RawChunk(TAG, time.time(), 1, None, None, blob)])
        loop = MergeLoop(store, raw_log)
        loop.merge_available()
        loop.close()
        (document,) = store.find_arcs("ext")
    finally:
        store.close()
        raw_log.close()
    assert document["fields"] == {"blob": msgpack.ExtType(42, b"xyz"), "list": [1, 2]}


# --- the merge rule and the duplicate test ---------------------------------------------------------------


def test_the_merge_rule() -> None:
    assert is_later_or_same(5.0, None)
    assert is_later_or_same(5.0, 5.0)  # a tie: the later arrival wins
    assert is_later_or_same(6.0, 5.0)
    assert not is_later_or_same(4.0, 5.0)


def _entries(*ids: Tuple[str, str]) -> List[List[Any]]:
    return [[BASE, {"user_id": user, "record_id": record_id}] for user, record_id in ids]


def test_seen_ids_of_a_message_drop_duplicates_within_and_across_messages() -> None:
    stored_ranges = {("u1", "s"): [(0, 9)]}
    stored_ids = {("u1", "other-1")}
    ids = RecordIdFilter(
        lambda keys: {k: stored_ranges[k] for k in keys if k in stored_ranges}, lambda keys: stored_ids & set(keys)
    )
    first = _entries(
        ("u1", "s:9"),
        ("u1", "s:10"),
        ("u1", "s:11"),
        ("u1", "s:11"),
        ("u2", "s:11"),
        ("u1", "other-1"),
        ("u1", "other-2"),
        ("u1", "other-2"),
    )
    seen = ids.for_message(first)
    verdicts = [seen.is_new(rec["user_id"], rec["record_id"], index) for index, (_, rec) in enumerate(first)]
    assert verdicts == [False, True, True, False, True, False, True, False]
    # The next message of the same transaction sees what the first one admitted.
    second = _entries(("u1", "s:12"), ("u1", "s:10"), ("u2", "s:11"), ("u1", "other-2"))
    seen = ids.for_message(second)
    assert [seen.is_new(rec["user_id"], rec["record_id"], index) for index, (_, rec) in enumerate(second)] == [
        True,
        False,
        False,
        False,
    ]
    ranges, other_ids = ids.take_changes()
    assert sorted(ranges) == [("u1", "s", [(0, 12)]), ("u2", "s", [(11, 11)])]
    assert other_ids == [("u1", "other-2")]


def _random_entries(rng: random.Random, count: int) -> List[List[Any]]:
    """Records in runs of one context (as clients send them) with everything that leaves the fast
    path: other users, earlier and later times, non-string keys, classes, globals, resent ids."""
    entries = []
    context = "r1"
    for number in range(count):
        if rng.random() < 0.3:
            context = rng.choice(["r1", "r1.a", "r1.a.b", "r2", "r2.a"])
        message: Dict[Any, Any] = {f"k{rng.randrange(4)}": number, "shared": number}
        extra = rng.randrange(8)
        if extra == 0:
            message[rng.choice([1, b"k1", 2.5])] = "not a string key"
        elif extra == 1:
            message["MONA_ARC_CLASS"] = rng.choice(["c1", "c2"])
        elif extra == 2:
            message["MONA_GLOBALS"] = {"g": number}
        record_id = f"s:{number if rng.random() < 0.9 else rng.randrange(number + 1)}"
        user = "u1" if rng.random() < 0.9 else "u2"
        when = BASE + rng.choice([0, 0, 0, 1, 2, -1])
        entries.append(
            [
                BASE,
                {
                    "user_id": user,
                    "context": context,
                    "message": message,
                    "export_timestamp": when,
                    "record_id": record_id,
                },
            ]
        )
    return entries


@pytest.mark.parametrize("seed", range(20))
def test_a_message_merged_at_once_equals_its_records_merged_one_by_one(seed: int) -> None:
    """Within a message the merger carries the ARC and the node of the record before to the next; the
    documents are the same as when every record is merged on its own."""
    entries = _random_entries(random.Random(seed), 300)

    def merged(messages: List[List[List[Any]]]) -> Tuple[Any, ...]:
        merger = ArcMerger(lambda keys: {})
        ids = RecordIdFilter(lambda keys: {}, lambda keys: set())
        dropped = rejected = 0
        for message in messages:
            result = merger.merge_entries(msgpack.unpackb(msgpack.packb(message), strict_map_key=False), ids)
            dropped += len(result.dropped)
            rejected += result.rejected
        return dict(merger.take_dirty()), merger.take_changed_nodes(), dropped, rejected

    at_once = merged([entries])
    one_by_one = merged([[one] for one in entries])
    assert at_once == one_by_one
    assert at_once[2] > 0  # resent ids were dropped


def test_keys_that_are_not_strings_are_merged_as_their_text_in_a_run_of_one_node() -> None:
    merger = ArcMerger(lambda keys: {})
    ids = RecordIdFilter(lambda keys: {}, lambda keys: set())
    messages: List[Dict[Any, Any]] = [{"a": 1}, {1: "one", "b": 2}, {b"c": 3}, {"a": 4}]
    merger.merge_entries([[BASE, record("run.sub", message)] for message in messages], ids)
    ((_, document),) = merger.take_dirty()
    assert document["subs"]["sub"][2] == {"a": 4, "1": "one", "b": 2, "b'c'": 3}


def test_the_time_span_of_integer_times() -> None:
    items = [[BASE + 3, {}], [BASE, {}], [BASE + 9, {}], "not an entry"]
    assert time_span(items) == (BASE, BASE + 9)
    assert time_span([[BASE + 1, {}], [BASE + 0.5, {}]]) == (BASE + 0.5, BASE + 1)
    assert time_span([[True, {}], [BASE, {}]]) == (BASE, BASE)  # a boolean is no time


# --- import-time traps -----------------------------------------------------------------------------------


def test_the_merger_imports_where_there_is_no_fcntl() -> None:
    code = "import sys; sys.modules['fcntl'] = None; import mona_collector.merging.process, mona_collector.store"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
