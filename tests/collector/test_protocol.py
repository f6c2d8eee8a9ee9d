"""The collector's Forward server, through real sockets and crafted bytes."""

from __future__ import annotations

import gzip
import json
import socket
import struct

import msgpack

from mona_collector import Collector
from tests.support.collector import (
    BASE,
    TAG,
    RawClient,
    bin32,
    entry,
    packed_message,
    raw_event_count,
    record,
    stats,
    stored_arcs,
    str32,
    time_ext8,
    time_fixext8,
)


def _entries(count: int, time_of=time_fixext8, prefix: str = "run") -> bytes:
    return b"".join(
        entry(time_of(BASE + i, 500), record(f"{prefix}.s{i}", {"k": i}, BASE + i, record_id=f"{prefix}:{i}"))
        for i in range(count)
    )


def test_message_mode_with_both_time_encodings(collector, db_path):
    client = RawClient(collector.port)
    for name, time_of in (("fix", time_fixext8), ("ext8", time_ext8)):
        rec = msgpack.packb(record(f"msg-{name}", {"a": 1}), use_bin_type=True)
        option = msgpack.packb({"chunk": name, "size": 1})
        client.send(b"\x94" + msgpack.packb(TAG) + time_of(BASE, 7) + rec + option)
        assert client.answer() == {"ack": name}
    client.send(msgpack.packb([TAG, BASE, record("msg-int", {"a": 2}), {"chunk": "int"}]))
    assert client.answer() == {"ack": "int"}
    for context in ("msg-fix", "msg-ext8", "msg-int"):
        assert stored_arcs(db_path, context)[0]["fields"]["a"] in (1, 2)


def test_forward_mode(collector, db_path):
    client = RawClient(collector.port)
    events = [[BASE + i, record(f"fwd.s{i}", {"k": i})] for i in range(3)]
    client.send(msgpack.packb([TAG, events, {"chunk": "f1"}]))
    assert client.answer() == {"ack": "f1"}
    assert set(stored_arcs(db_path, "fwd")[0]["sub_arcs"]) == {"s0", "s1", "s2"}


def test_packed_forward_as_bin_and_as_invalid_utf8_str32(collector, db_path):
    client = RawClient(collector.port)
    for field, name in ((bin32, "bin"), (str32, "str")):
        blob = _entries(4, time_ext8 if name == "bin" else time_fixext8, prefix=name)
        client.send(packed_message(TAG, field(blob), {"chunk": name, "size": 4, "compressed": "text"}))
        assert client.answer() == {"ack": name}
        assert stored_arcs(db_path, name)[0]["sub_arcs"]["s3"]["fields"] == {"k": 3}


def test_compressed_packed_forward_with_several_gzip_members(collector, db_path):
    client = RawClient(collector.port)
    blob = _entries(6, prefix="gz")
    payload = gzip.compress(blob[: len(blob) // 2]) + gzip.compress(blob[len(blob) // 2 :])
    # The cut is inside an entry: the members only make sense joined.
    client.send(packed_message(TAG, bin32(payload), {"chunk": "gz", "compressed": "gzip"}))
    assert client.answer() == {"ack": "gz"}
    assert len(stored_arcs(db_path, "gz")[0]["sub_arcs"]) == 6


def test_ack_is_sent_after_the_commit(collector, db_path):
    client = RawClient(collector.port)
    for round_number in range(1, 6):
        blob = _entries(50, prefix=f"commit{round_number}")
        client.send(packed_message(TAG, bin32(blob), {"chunk": f"c{round_number}"}))
        assert client.answer() == {"ack": f"c{round_number}"}
        # Read at once with a connection of our own: everything acked must already be visible.
        assert raw_event_count(db_path) == 50 * round_number


def test_no_chunk_no_ack_but_stored(collector, db_path):
    client = RawClient(collector.port)
    client.send(msgpack.packb([TAG, BASE, record("quiet", {"x": 1})]))
    client.send(msgpack.packb([TAG, BASE, record("loud", {"x": 1}), {"chunk": "only-this"}]))
    assert client.answer() == {"ack": "only-this"}
    assert collector.wait_for_records(2)
    assert stored_arcs(db_path, "quiet")


def test_byte_by_byte_fragmentation_and_keepalives(collector, db_path):
    client = RawClient(collector.port)
    frame = b"\xc0" + packed_message(TAG, str32(_entries(3, prefix="frag")), {"chunk": "frag"}) + b"\xc0"
    for index in range(len(frame)):
        client.send(frame[index : index + 1])
    assert client.answer() == {"ack": "frag"}
    assert len(stored_arcs(db_path, "frag")[0]["sub_arcs"]) == 3


def test_unknown_option_keys_are_ignored_and_chunk_is_echoed_byte_for_byte(collector):
    client = RawClient(collector.port)
    chunk = "q83vEjRWeJCrze8SNFZ4kA==\n"
    client.send(msgpack.packb([TAG, BASE, record("opt", {}), {"chunk": chunk, "size": 1, "future": [1, 2]}]))
    assert client.answer() == {"ack": chunk}


def test_heartbeat_connections_and_udp_heartbeat(collector):
    for _ in range(20):  # what Fluentd's out_forward does every second
        sock = socket.create_connection(("127.0.0.1", collector.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # with linger 0: a reset, like Fluentd
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(10)
    udp.sendto(b"\x00", ("127.0.0.1", collector.port))
    assert udp.recvfrom(16)[0] == b"\x00"
    udp.close()
    client = RawClient(collector.port)
    client.send(msgpack.packb([TAG, BASE, record("after-heartbeats", {}), {"chunk": "hb"}]))
    assert client.answer() == {"ack": "hb"}


def test_json_frames(collector, db_path):
    client = RawClient(collector.port)
    client.send(json.dumps([TAG, BASE, record("json-arc", {"j": True}), {"chunk": "js"}]).encode())
    assert client.answer() == {"ack": "js"}
    assert stored_arcs(db_path, "json-arc")[0]["fields"] == {"j": True}


def test_malformed_input_closes_only_that_connection(collector, db_path):
    good = RawClient(collector.port)
    bad_inputs = [
        b"\xc1",  # a byte msgpack never uses
        msgpack.packb(["only-a-tag"]),
        msgpack.packb({"not": "an array"}),
        msgpack.packb([TAG, "not-a-time", {}]),
        msgpack.packb([TAG, BASE, {}, "option-not-a-map"]),
        packed_message(TAG, bin32(b"\x92\x01"), None),  # entries ending inside an entry
        packed_message(TAG, bin32(b"not gzip"), {"compressed": "gzip"}),
    ]
    for number, data in enumerate(bad_inputs):
        bad = RawClient(collector.port)
        bad.send(data)
        bad.wait_closed()
        good.send(msgpack.packb([TAG, BASE, record("survivor", {"n": number}), {"chunk": str(number)}]))
        assert good.answer() == {"ack": str(number)}
    assert stored_arcs(db_path, "survivor")[0]["fields"] == {"n": len(bad_inputs) - 1}


def test_malformed_mona_records_are_kept_raw_and_do_not_break_the_batch(collector, db_path):
    client = RawClient(collector.port)
    records = [
        "not a map",
        {"user_id": "u1", "message": {}},
        record("ok-arc", {"v": 1}),
        {"context": "x", "message": 3},
    ]
    blob = b"".join(entry(time_fixext8(BASE, 0), rec) for rec in records)
    client.send(packed_message(TAG, bin32(blob), {"chunk": "mixed"}))
    assert client.answer() == {"ack": "mixed"}
    client.send(msgpack.packb(["other.tag", BASE, {"free": "form"}, {"chunk": "other"}]))
    assert client.answer() == {"ack": "other"}
    counts = stats(db_path)
    assert counts["rejected"] == 3
    assert counts["tags"][TAG]["events"] == 4
    assert counts["tags"]["other.tag"]["events"] == 1
    assert stored_arcs(db_path, "ok-arc")[0]["fields"] == {"v": 1}


def test_giant_frame_and_stalled_client_are_closed(tmp_path):
    with Collector(port=0, db_path=tmp_path / "c.db", max_frame_bytes=64 * 1024, stall_timeout=0.5) as small:
        good = RawClient(small.port)
        giant = RawClient(small.port)
        giant.send(packed_message(TAG, bin32(b"\x00" * (1024 * 1024)), None))
        giant.wait_closed()
        stalled = RawClient(small.port)
        frame = msgpack.packb([TAG, BASE, record("stall", {}), {"chunk": "never"}])
        stalled.send(frame[: len(frame) // 2])
        stalled.wait_closed()  # closed by the stall timeout, not by us
        stalled_after_the_tag = RawClient(small.port)  # cut right after a whole inner item
        stalled_after_the_tag.send(b"\x94" + msgpack.packb(TAG))
        stalled_after_the_tag.wait_closed()
        good.send(msgpack.packb([TAG, BASE, record("fine", {}), {"chunk": "fine"}]))
        assert good.answer() == {"ack": "fine"}


def test_float_times_are_accepted_in_every_mode_and_non_finite_ones_refused(collector, db_path):
    """Floats are outside the Forward spec, but fluent-logger's emit_with_time(float) sends them and
    Fluentd takes them: the collector stores them (it is the end of the line, and mona records carry
    their own export time). A time that is not a finite number has no meaning and is refused."""
    client = RawClient(collector.port)
    float32, float64 = b"\xca" + struct.pack(">f", BASE), b"\xcb" + struct.pack(">d", BASE + 0.25)
    for name, time_bytes in (("f32", float32), ("f64", float64)):
        rec = msgpack.packb(record(f"float-{name}", {"t": name}), use_bin_type=True)
        client.send(b"\x94" + msgpack.packb(TAG) + time_bytes + rec + msgpack.packb({"chunk": name}))
        assert client.answer() == {"ack": name}
    client.send(msgpack.packb([TAG, [[BASE + 0.5, record("float-fwd", {"t": "fwd"})]], {"chunk": "fwd"}]))
    assert client.answer() == {"ack": "fwd"}
    blob = b"\x92" + float64 + msgpack.packb(record("float-packed", {"t": "packed"}), use_bin_type=True)
    client.send(packed_message(TAG, bin32(blob), {"chunk": "packed"}))
    assert client.answer() == {"ack": "packed"}
    json_client = RawClient(collector.port)  # a connection speaks msgpack or JSON, as its first byte says
    json_client.send(json.dumps([TAG, BASE + 0.75, record("float-json", {"t": "json"}), {"chunk": "json"}]).encode())
    assert json_client.answer() == {"ack": "json"}
    for context in ("float-f32", "float-f64", "float-fwd", "float-packed", "float-json"):
        assert stored_arcs(db_path, context), context
    for bad_time in (float("nan"), float("inf"), float("-inf")):
        refused = RawClient(collector.port)
        refused.send(msgpack.packb([TAG, bad_time, record("never", {}), {"chunk": "bad"}]))
        refused.wait_closed()
        assert not refused.answers
    bad_entry = b"\x92\xcb" + struct.pack(">d", float("nan")) + msgpack.packb(record("never", {}))
    refused = RawClient(collector.port)
    refused.send(packed_message(TAG, bin32(bad_entry), {"chunk": "bad"}))
    refused.wait_closed()
    assert not stored_arcs(db_path, "never")
