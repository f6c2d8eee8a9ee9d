"""What the shortcuts of the export hot path must not change: checks of keys once known, the arc-class
record built from cached bytes, the record ids built from a cached prefix, a burst past the chunk size.

Every test reads what a real Forward receiver decoded.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List

from mona_client import client


def _messages(receiver: Any, count: int) -> List[Dict[str, Any]]:
    assert client.flush(10)
    return [record["message"] for record in receiver.wait_records(count)]


def test_known_keys_do_not_let_a_reserved_key_through(mona, caplog):
    with client.new_mona_context(context_id="keys"):
        assert client.export({"a": 1, "b": 2})  # "a" and "b" become known good keys
        with caplog.at_level(logging.WARNING, logger="mona-logger"):
            assert client.export({"a": 3, "MONA_ARC_CLASS": "forged"})
        assert client.export({"b": 4})
    assert _messages(mona, 3) == [{"a": 1, "b": 2}, {"a": 3}, {"b": 4}]
    assert any("MONA_ARC_CLASS" in r.getMessage() for r in caplog.records)


def test_a_key_that_is_not_a_string_is_refused_after_string_keys_were_learned(mona):
    with client.new_mona_context(context_id="non-str"):
        assert client.export({"1": "text key"})
        assert client.export({1: "int key"}) is False
    assert _messages(mona, 1) == [{"1": "text key"}]


def test_an_arc_class_that_cannot_be_encoded_is_refused_with_a_line_and_the_block_runs(mona, caplog):
    with caplog.at_level(logging.ERROR, logger="mona-logger"):
        with client.new_mona_context(arc_class="bad\udc80class", context_id="surrogate") as context_id:
            assert context_id == "surrogate"
            assert client.export({"still": "exported"})
    assert _messages(mona, 1) == [{"still": "exported"}]
    assert any("arc class" in r.getMessage() for r in caplog.records)


def test_record_ids_stay_unique_and_well_formed_across_digit_counts(mona):
    pipeline = client._runtime.pipeline
    import itertools

    pipeline._record_counter = itertools.count(95)  # crosses from 2 to 3 digits within the burst
    with client.new_mona_context(arc_class="IDS", context_id="ids"):
        for i in range(10):
            assert client.export({"i": i})
    records = mona.wait_records(11)
    ids = [r["record_id"] for r in records]
    assert len(set(ids)) == 11
    source = ids[0].rsplit(":", 1)[0]
    assert sorted(int(record_id.rsplit(":", 1)[1]) for record_id in ids) == list(range(95, 106))
    assert all(record_id.startswith(source + ":") for record_id in ids)


def test_a_burst_far_past_the_chunk_size_is_delivered_whole(mona):
    with client.new_mona_context(context_id="burst"):
        for i in range(20_000):
            assert client.export({"i": i})
    assert client.flush(30)
    records = mona.wait_records(20_000, timeout=30)
    assert sorted(r["message"]["i"] for r in records) == list(range(20_000))
    assert client.stats()["dropped"] == 0
