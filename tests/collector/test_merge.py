"""ARC merging, duplicate drops and restarts, through a running collector, on each store (SQLite, PostgreSQL)."""

from __future__ import annotations

import msgpack

from mona_collector import Collector
from mona_collector.databases import open_store
from tests.support.collector import (
    BASE,
    TAG,
    RawClient,
    bin32,
    entry,
    packed_message,
    record,
    stats,
    stored_arcs,
    time_fixext8,
)


def _send(client: RawClient, records: list, chunk: str) -> None:
    blob = b"".join(entry(time_fixext8(BASE, 0), rec) for rec in records)
    client.send(packed_message(TAG, bin32(blob), {"chunk": chunk}))
    assert client.answer() == {"ack": chunk}


def test_later_export_wins_by_timestamp_then_arrival(any_collector, any_db):
    client = RawClient(any_collector.port)
    _send(client, [record("m", {"a": "new", "b": "first"}, BASE + 10)], "1")
    # Arrives later but was exported earlier: must not replace "a"; "c" is new.
    _send(client, [record("m", {"a": "old", "c": 1}, BASE + 5)], "2")
    # Same timestamp as the first: the later arrival wins.
    _send(client, [record("m", {"b": "second"}, BASE + 10)], "3")
    arc = stored_arcs(any_db, "m")[0]
    assert arc["fields"] == {"a": "new", "b": "second", "c": 1}
    assert (arc["first_export"], arc["last_export"], arc["export_count"]) == (BASE + 5, BASE + 10, 3)


def test_sub_arcs_classes_globals_and_reserved_keys(any_collector, any_db):
    client = RawClient(any_collector.port)
    _send(
        client,
        [
            record("run", {"MONA_ARC_CLASS": "training", "MONA_GLOBALS": {"model": "m1"}, "loss": 0.5}),
            record("run.fold1", {"MONA_ARC_CLASS": "fold", "acc": 0.9}),
            record("run.fold1.epoch3", {"acc": 0.7, "MONA_INVALID_EXPORT_TIMESTAMP": True}),
            record("run.fold2", {"acc": 0.8}),
            record("run", {"MONA_GLOBALS": {"dataset": "d"}}, BASE + 1),
        ],
        "nest",
    )
    arc = stored_arcs(any_db, "run.fold1.epoch3")[0]  # a sub-context id shows its root ARC
    assert arc["context_id"] == "run"
    assert arc["arc_class"] == "training"
    assert arc["fields"] == {"loss": 0.5}
    assert arc["globals"] == {"model": "m1", "dataset": "d"}
    fold1 = arc["sub_arcs"]["fold1"]
    assert fold1["arc_class"] == "fold" and fold1["fields"] == {"acc": 0.9}
    assert fold1["sub_arcs"]["epoch3"]["fields"] == {"acc": 0.7, "MONA_INVALID_EXPORT_TIMESTAMP": True}
    assert arc["sub_arcs"]["fold2"] == {"arc_class": None, "fields": {"acc": 0.8}, "sub_arcs": {}}
    assert stats(any_db)["arcs_by_class"] == {"training": 1}


def test_users_have_separate_arcs(any_collector, any_db):
    client = RawClient(any_collector.port)
    _send(client, [record("shared", {"x": 1}, user="alice"), record("shared", {"x": 2}, user="bob")], "u")
    assert sorted(arc["fields"]["x"] for arc in stored_arcs(any_db, "shared")) == [1, 2]


def test_resent_chunks_are_stored_once(any_collector, any_db):
    client = RawClient(any_collector.port)
    records = [record(f"dup.s{i}", {"i": i}, record_id=f"proc-1:{i}") for i in range(5)]
    records += [record("dup", {"free": "form"}, record_id="other-client-id-a")]
    _send(client, records, "first")
    _send(client, records, "resent")  # what an ack timeout makes a client do
    _send(client, [*records[2:4], record("dup.s9", {"i": 9}, record_id="proc-1:9")], "partly-new")
    arc = stored_arcs(any_db, "dup")[0]
    assert arc["export_count"] == 7
    counts = stats(any_db)
    assert counts["duplicates"] == 6 + 2
    assert counts["tags"][TAG]["events"] == 7


def test_restart_keeps_arcs_and_late_ground_truth_updates_them(any_db):
    with Collector(port=0, db_path=any_db) as first:
        client = RawClient(first.port)
        _send(client, [record(f"r{i}", {"pred": i}, record_id=f"s:{i}") for i in range(50)], "a")
    with Collector(port=0, db_path=any_db) as second:
        client = RawClient(second.port)
        # Hours later: ground truth for an existing context id, and a resend of an old record.
        late = [
            record("r7", {"truth": 1}, BASE + 4 * 3600, record_id="s:100"),
            record("r3", {"pred": -1}, record_id="s:3"),
        ]
        _send(client, late, "b")
    store = open_store(any_db, readonly=True)
    try:
        assert len(store.list_arcs(limit=None)) == 50
        arc = store.find_arcs("r7")[0]
        assert arc["fields"] == {"pred": 7, "truth": 1} and arc["last_export"] == BASE + 4 * 3600
        assert store.find_arcs("r3")[0]["fields"] == {"pred": 3}
        # The raw log keeps every event received, the resent one too (50 + 2); the ARCs count it once.
        raw = list(store.iter_raw_events(TAG))
        assert len(raw) == 52 and raw[-2][1].record["message"] == {"truth": 1}
        assert store.stats()["duplicates"] == 1
    finally:
        store.close()


def test_events_of_other_tags_are_kept_raw(any_collector, any_db):
    client = RawClient(any_collector.port)
    client.send(msgpack.packb(["app.log", [[BASE, {"line": 1}], [BASE + 1, {"line": 2}]], {"chunk": "o"}]))
    assert client.answer() == {"ack": "o"}
    store = open_store(any_db, readonly=True)
    try:
        assert [event.record for _, event in store.iter_raw_events("app.log")] == [{"line": 1}, {"line": 2}]
        assert store.list_arcs() == []
    finally:
        store.close()


def test_merger_killed_then_restarted_merges_the_rest_once(any_db):
    with Collector(port=0, db_path=any_db) as first:
        client = RawClient(first.port)
        _send(client, [record("k", {"a": 1}, record_id="k:1")], "1")
        assert first.wait_for_records(1)
        first._merger.kill()  # the merger process dies; the network side goes on storing and acking
        _send(client, [record("k", {"b": 2}, BASE + 1, record_id="k:2"), record("k", {"a": 1}, record_id="k:1")], "2")
        store = open_store(any_db, readonly=True)
        try:
            counts = store.stats()
            assert (counts["unmerged_rows"], counts["unmerged_events"]) == (1, 2)  # the merge lag
            assert store.find_arcs("k")[0]["fields"] == {"a": 1}
        finally:
            store.close()
    with Collector(port=0, db_path=any_db):
        arc = stored_arcs(any_db, "k")[0]  # waits until the new merger caught up
        assert arc["fields"] == {"a": 1, "b": 2} and arc["export_count"] == 2
        counts = stats(any_db)
        assert counts["duplicates"] == 1 and counts["unmerged_events"] == 0
