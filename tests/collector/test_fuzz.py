"""Fuzzing what untrusted peers and callers can reach.

* The collector's receive path: :class:`FrameDecoder` (and the server's JSON decoder), the event
  message checks, the ack, the raw log; then the merger: decoding, duplicate filtering, the ARC merge
  and the packing of what gets stored. A plain seeded loop throws 100,000+ malformed frames at it
  (random bytes, truncated frames, wrong shapes, giant declared lengths, deep nesting, wrong ext
  types, gzip bombs, records with wrong types in every field); hypothesis generates further shapes.
  The only failure allowed on the network side is :class:`ForwardProtocolError` (the connection would
  be closed); the merger counts what it cannot merge as rejected and never fails a transaction; the
  decoder's buffer never exceeds its cap.
* A real collector, through real sockets, given a sample of the same frames: it keeps serving.
* ``client.export()`` with exceptions off, given arbitrary Python objects: it returns a bool.
"""

from __future__ import annotations

import gzip
import logging
import math
import random
import socket
import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any, List, Optional

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mona_client import client
from mona_client.forward import ForwardProtocolError, FrameDecoder
from mona_client.record import TAG
from mona_collector import Collector, SQLiteStore
from mona_collector.forward_codec import pack_ack, split_event_message
from mona_collector.ingest import Ingestor, IngestResult, Submission
from mona_collector.merging.process import MergeLoop
from mona_collector.server import JsonFrameDecoder
from mona_collector.store import SQLiteRawLog, raw_log_path
from tests.support.collector import BASE, RawClient, bin32, entry, packed_message, record, stats, time_fixext8

CAP = 64 * 1024  # the decoders' frame cap here: small, so that the limits are reached often
FRAMES = 100_000


# --- the receive path, without sockets ------------------------------------------------------------


class Pipeline:
    """What a connection does with bytes, minus the socket: decode, check, ack, and (with an ingestor)
    hand the entries to the raw-log writer, as the server does; :func:`merge_all` then merges."""

    def __init__(self, ingestor: Optional[Ingestor] = None) -> None:
        self.ingestor = ingestor
        self.results: List[IngestResult] = []
        self.closed = 0
        self.stats: dict = {}

    def feed(self, pieces: List[bytes], json: bool = False) -> None:
        decoder: Any = JsonFrameDecoder(CAP) if json else FrameDecoder(CAP)
        try:
            for piece in pieces:
                frames = decoder.feed(piece)
                assert decoder.pending_bytes <= CAP
                for frame in frames:
                    if frame is not None:
                        self.handle(frame)
        except ForwardProtocolError:
            self.closed += 1

    def handle(self, frame: Any) -> None:
        message = split_event_message(frame, CAP)
        if message.chunk is not None:
            assert pack_ack(message.chunk)
        if self.ingestor is not None:
            self.ingestor.submit(Submission(message.tag, message.entries, message.events, self.results.append))


def rand_obj(r: random.Random, depth: int = 0) -> Any:
    """A random msgpack-able value, wrong types included."""
    kind = r.randrange(12 if depth < 4 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return r.choice([True, False])
    if kind == 2:
        return r.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, r.randrange(-(2**40), 2**40)])
    if kind == 3:
        return r.choice([0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, r.random()])
    if kind == 4:
        return r.choice(["", "mona.client.message", "a.b.c", "root.", ".", ":", "x:1", "x:01", "é\u2028", "\x00"])
    if kind == 5:
        return r.randbytes(r.randrange(0, 20))
    if kind == 6:
        return msgpack.ExtType(r.randrange(0, 128) if r.random() < 0.5 else 0, r.randbytes(r.choice([0, 1, 4, 8, 12])))
    if kind == 7:
        return r.choice(
            ["context", "message", "user_id", "record_id", "export_timestamp", "MONA_ARC_CLASS", "MONA_GLOBALS"]
        )
    if kind in (8, 9):
        return [rand_obj(r, depth + 1) for _ in range(r.randrange(0, 5))]
    keys = [rand_obj(r, 4) for _ in range(r.randrange(0, 5))]  # scalars: hashable
    return {k: rand_obj(r, depth + 1) for k in keys}


def bad_record(r: random.Random) -> Any:
    """A mona record with a wrong type (or a strange value) in some fields."""
    good = record(
        f"ctx{r.randrange(50)}.sub{r.randrange(3)}",
        {"k": 1, "MONA_ARC_CLASS": "c"},
        BASE,
        record_id=f"src:{r.randrange(1000)}",
    )
    for field in ("user_id", "context", "message", "export_timestamp", "record_id"):
        if r.random() < 0.5:
            good[field] = rand_obj(r, 2)
    if r.random() < 0.3:
        good["message"] = {rand_obj(r, 4): rand_obj(r, 2) for _ in range(3) if True}
    if r.random() < 0.2:
        good["message"] = {"MONA_GLOBALS": rand_obj(r, 1), "MONA_ARC_CLASS": rand_obj(r, 2)}
    if r.random() < 0.1:
        good = rand_obj(r)
    return good


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogateescape")


def valid_frame(r: random.Random) -> bytes:
    """A well-formed message of one of the four modes, with records that may be malformed."""
    recs = [bad_record(r) for _ in range(r.randrange(1, 5))]
    time_bytes = time_fixext8(BASE, r.randrange(10**9))
    mode = r.randrange(4)
    if mode == 0:
        return b"\x94" + packb(TAG) + time_bytes + packb(recs[0]) + packb({"chunk": "c"})
    if mode == 1:
        return packb([TAG, [[BASE, rec] for rec in recs], {"chunk": r.randbytes(3)}])
    blob = b"".join(entry(time_bytes, rec) for rec in recs)
    if mode == 2:
        return packed_message(TAG, bin32(blob), {"size": len(recs), "chunk": "x"})
    return packed_message(TAG, bin32(gzip.compress(blob)), {"compressed": "gzip"})


_BOMB = gzip.compress(b"\x00" * (CAP * 16))  # inflates 16 times beyond the cap


def malformed(r: random.Random) -> List[bytes]:
    """One malformed input, as the pieces it arrives in."""
    kind = r.randrange(11)
    if kind == 0:  # random bytes
        data = r.randbytes(r.randrange(1, 200))
    elif kind == 1:  # a valid frame cut short, or with garbage after the cut
        frame = valid_frame(r)
        data = frame[: r.randrange(1, len(frame))] + (r.randbytes(r.randrange(0, 8)) if r.random() < 0.5 else b"")
    elif kind == 2:  # valid msgpack of a wrong shape
        data = packb(
            r.choice(
                [
                    rand_obj(r),
                    [TAG, rand_obj(r)],
                    [TAG, rand_obj(r), rand_obj(r)],
                    [TAG, rand_obj(r), rand_obj(r), rand_obj(r)],
                    [rand_obj(r)] * r.randrange(5),
                ]
            )
        )
    elif kind == 3:  # giant declared lengths, at the top or inside the entries
        header = r.choice([b"\xdb", b"\xc6", b"\xdd", b"\xdf", b"\xc9"]) + struct.pack(
            ">I", r.choice([2**32 - 1, 2**31, CAP, CAP * 2, 10**6])
        )
        data = header + r.randbytes(r.randrange(0, 50))
        if r.random() < 0.5:
            data = packed_message(TAG, bin32(header + b"\x00" * 10), {"chunk": "g"})
    elif kind == 4:  # deep nesting, bare or inside a record
        depth = r.choice([100, 600, 1100, 5000])
        nested = r.choice([b"\x91", b"\x81\xa1k"]) * depth + b"\xc0"
        data = (
            nested
            if r.random() < 0.5
            else (
                b"\x93"
                + packb(TAG)
                + packb(BASE)
                + b"\x83"
                + packb("context")
                + packb("deep")
                + packb("message")
                + b"\x81\xa1v"
                + nested
                + packb("user_id")
                + packb("u")
            )
        )
    elif kind == 5:  # wrong ext types where the time goes, and in records
        ext = r.choice(
            [
                b"\xd7\x01" + r.randbytes(8),
                b"\xd6\x00" + r.randbytes(4),
                b"\xd8\x00" + r.randbytes(16),
                b"\xc7\x0c\x00" + r.randbytes(12),
                b"\xd6\xff" + r.randbytes(4),
                b"\xd7\xff" + r.randbytes(8),
                b"\xc7\x0c\xff" + r.randbytes(12),
                b"\xc7\x03\xff" + r.randbytes(3),
            ]
        )
        if r.random() < 0.5:
            data = packed_message(TAG, bin32(b"\x92" + ext + packb(bad_record(r))), None)
        else:
            data = (
                b"\x93" + packb(TAG) + ext + packb({"context": "e", "message": {"v": 1}})
                if r.random() < 0.5
                else (
                    b"\x93"
                    + packb(TAG)
                    + packb(BASE)
                    + b"\x82"
                    + packb("context")
                    + packb("e")
                    + packb("message")
                    + b"\x81\xa1v"
                    + ext
                )
            )
    elif kind == 6:  # gzip: bombs, truncated members, garbage, several members
        payload = r.choice(
            [
                _BOMB,
                _BOMB[: r.randrange(1, len(_BOMB))],
                r.randbytes(40),
                gzip.compress(b"\x92\x01") * 3,
                gzip.compress(entry(time_fixext8(BASE, 0), bad_record(r))) + b"\x1f\x8b",
            ]
        )
        data = packed_message(TAG, bin32(payload), {"compressed": "gzip", "chunk": "z"})
    elif kind == 7:  # well-formed frames, malformed records
        data = valid_frame(r)
    elif kind == 8:  # unhashable map keys, invalid UTF-8 in strings and in the chunk id
        data = r.choice(
            [
                b"\x81\x91\x01\x02",
                b"\x81\x81\x01\x02\x03",
                b"\x93"
                + packb(TAG)
                + bin32(entry(time_fixext8(BASE, 0), record("u", {"v": 1})))
                + b"\x81\xa5chunk\xa2\xff\xfe",
                b"\x93" + packb(TAG) + packb(BASE) + b"\x82\xa7context\xa2\xff\xfe\xa7message\x81\xa1v\xa1\xff",
            ]
        )
    elif kind == 9:  # several frames, one of them broken somewhere
        data = b"".join(valid_frame(r) for _ in range(r.randrange(1, 4))) + r.randbytes(r.randrange(0, 5))
    else:  # entries that end inside an entry, or are not pairs
        blob = r.choice([entry(time_fixext8(BASE, 0), bad_record(r))[:-1], packb([1, 2, 3]), packb(5), b"\x92\x01"])
        data = packed_message(TAG, r.choice([bin32(blob), packb(blob.decode("latin-1"))]), {"size": 1})
    # Arrive in random pieces, as TCP may cut them.
    cuts = sorted(r.randrange(len(data) + 1) for _ in range(r.randrange(0, 3)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def malformed_json(r: random.Random) -> List[bytes]:
    kind = r.randrange(6)
    if kind == 0:
        text = "[" * r.choice([10, 900, 5000, 100000])
    elif kind == 1:
        text = '["mona.client.message", 1700000000, {{"context": "j", "message": {{"v": {}}}}}]'.format(
            r.choice(
                ["1" * 30, "-" + "9" * 25, "1e999", "NaN", "-Infinity", '"\\ud800"', '"\\udcff"', '"\\ud83d\\ude00"']
            )
        )
    elif kind == 2:
        text = r.randbytes(r.randrange(1, 50)).decode("latin-1")
        text = "[" + text
    elif kind == 3:
        text = '["t", [[1, {}]], {"compressed": "gzip"}]' if r.random() < 0.5 else '["t", "entries as text", {}]'
    elif kind == 4:
        text = '{"a": 1}' + "]" * r.randrange(3)
    else:
        text = '["mona.client.message", 1700000000, ' + '{"context": "x", "message": {"k": [' * 50 + "]}}" * 50 + "]"
    data = text.encode("utf-8", "surrogatepass")
    cut = r.randrange(len(data) + 1)
    return [data[:cut], data[cut:]]


def merge_all(store: SQLiteStore, raw_log: SQLiteRawLog, caplog: Any) -> dict:
    """Merge every raw row; no transaction of the merger may fail. The store's stats."""
    caplog.set_level(logging.WARNING, logger="mona_collector")
    loop = MergeLoop(store, raw_log)
    try:
        loop.merge_available()
    finally:
        loop.close()
    assert loop.committed == raw_log.last_id()
    failures = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not failures, failures[:3]
    return store.stats()


def run_through_the_writer(path: Path, seed: int, frames: int, caplog: Any, json_too: bool = True) -> Pipeline:
    """``frames`` malformed inputs through the decoders and a real Ingestor on a real SQLite raw log,
    then through the merger into the real SQLite store."""
    r = random.Random(seed)
    store = SQLiteStore(path, synchronous="NORMAL")
    raw_log = SQLiteRawLog(raw_log_path(path), synchronous="NORMAL")
    ingestor = Ingestor(raw_log)
    ingestor.start()
    pipeline = Pipeline(ingestor)
    try:
        for i in range(frames):
            if json_too and i % 10 == 9:
                pipeline.feed(malformed_json(r), json=True)
            else:
                pipeline.feed(malformed(r))
        assert ingestor.drain(60)
        ingestor.stop()
        pipeline.stats = merge_all(store, raw_log, caplog)
    finally:
        ingestor.stop()
        raw_log.close()
        store.close()
    return pipeline


def test_hundred_thousand_malformed_frames(tmp_path, caplog):
    started = time.monotonic()
    pipeline = run_through_the_writer(tmp_path / "fuzz.db", 20240607, FRAMES, caplog)
    elapsed = time.monotonic() - started
    stored = sum(result.stored for result in pipeline.results)
    rejected = pipeline.stats["rejected"]
    # Every kind of outcome happened: closed connections, stored events, records kept raw only.
    assert pipeline.closed > FRAMES // 4 and stored > 1000 and rejected > 1000, (pipeline.closed, stored, rejected)
    assert elapsed < 60, elapsed


def test_no_message_fails_the_writers_group(tmp_path, caplog):
    # Records the store cannot take as they are (text that is not UTF-8, integers beyond SQLite's, a
    # NaN export_timestamp, map keys that are arrays) are rejected or stored apart, one by one.
    pipeline = run_through_the_writer(tmp_path / "group.db", 5, 5000, caplog, json_too=False)
    failed = [result.error for result in pipeline.results if not result.ok]
    assert not failed, sorted(set(map(str, failed)))
    assert pipeline.stats["unmerged_rows"] == 0 and pipeline.stats["rejected"] > 0


def test_memory_stays_bounded_on_the_largest_inputs():
    """Giant declared lengths, bombs and deep nesting allocate about the cap, not what they claim."""
    r = random.Random(7)
    inputs = []
    while len(inputs) < 1500:
        pieces = malformed(r)
        if sum(map(len, pieces)) and pieces[0][:1] in (
            b"\xdb",
            b"\xc6",
            b"\xdd",
            b"\xdf",
            b"\xc9",
            b"\x91",
            b"\x81",
            b"\x93",
        ):
            inputs.append(pieces)
        inputs.append([packed_message(TAG, bin32(_BOMB), {"compressed": "gzip"})])
    pipeline = Pipeline()
    tracemalloc.start()
    try:
        for pieces in inputs:
            pipeline.feed(pieces)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * CAP + 8 * 1024 * 1024, peak  # a few buffers of the cap, not gigabytes


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=5) | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=4), children, max_size=4
        )
    ),
    max_leaves=20,
)
records = st.fixed_dictionaries(
    {},
    optional={
        "user_id": msgpack_values,
        "context": st.text(max_size=12) | msgpack_values,
        "message": st.dictionaries(st.text(max_size=8) | st.integers(-(2**63), 2**63), msgpack_values, max_size=4)
        | msgpack_values,
        "export_timestamp": msgpack_values | st.floats(),
        "record_id": st.text(max_size=12) | msgpack_values,
    },
)


_shapes_ingestor: Any = None


class _Log:
    """A caplog stand-in for a module-scoped fixture."""

    def __init__(self) -> None:
        self.records: List[logging.LogRecord] = []
        self.handler = logging.Handler()
        self.handler.emit = self.records.append  # type: ignore[method-assign]

    def set_level(self, level: int, logger: str) -> None:
        logging.getLogger(logger).addHandler(self.handler)


@pytest.fixture(scope="module")
def shapes_ingestor(tmp_path_factory):
    global _shapes_ingestor
    path = tmp_path_factory.mktemp("shapes") / "s.db"
    store = SQLiteStore(path, synchronous="NORMAL")
    raw_log = SQLiteRawLog(raw_log_path(path), synchronous="NORMAL")
    _shapes_ingestor = Ingestor(raw_log)
    _shapes_ingestor.start()
    yield _shapes_ingestor
    assert _shapes_ingestor.drain(30)
    _shapes_ingestor.stop()
    captured = _Log()
    try:
        assert merge_all(store, raw_log, captured)["unmerged_rows"] == 0
    finally:
        logging.getLogger("mona_collector").removeHandler(captured.handler)
        raw_log.close()
        store.close()


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.lists(records | msgpack_values, min_size=1, max_size=5),
    st.sampled_from(["packed", "message", "forward", "raw"]),
    msgpack_values,
)
def test_shapes_from_hypothesis(shapes_ingestor, recs, mode, option):
    if mode == "packed":
        frame = packed_message(TAG, bin32(b"".join(entry(time_fixext8(BASE, 1), rec) for rec in recs)), None)
    elif mode == "message":
        frame = packb([TAG, BASE, recs[0], option])
    elif mode == "forward":
        frame = packb([TAG, [[BASE, rec] for rec in recs], option])
    else:
        frame = packb(recs)
    pipeline = Pipeline(_shapes_ingestor)
    pipeline.feed([frame])
    pipeline.feed([frame[: len(frame) // 2]])


# --- a real collector, through real sockets -----------------------------------------------------------


def test_collector_survives_malformed_frames_on_real_sockets(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    r = random.Random(99)
    with Collector(
        port=0,
        db_path=tmp_path / "fuzz.db",
        stall_timeout=0.5,
        synchronous="NORMAL",
        max_frame_bytes=CAP,
        udp_heartbeat=False,
    ) as collector:
        for i in range(300):
            pieces = malformed_json(r) if i % 10 == 9 else malformed(r)
            sock = socket.create_connection(("127.0.0.1", collector.port), timeout=5)
            try:
                for piece in pieces:
                    sock.sendall(piece)
            except OSError:
                pass  # closed by the collector mid-send
            sock.close()
        good = RawClient(collector.port)  # still serving
        good.send(
            packed_message(TAG, bin32(entry(time_fixext8(BASE, 0), record("after-fuzz", {"v": 1}))), {"chunk": "ok"})
        )
        assert good.answer() == {"ack": "ok"}
        good.close()
    # No exception escaped into asyncio (it would log "Exception in callback" or "Fatal error"), and
    # nothing failed to be stored or merged.
    assert not stats(tmp_path / "fuzz.db")["unmerged_rows"]
    unexpected = [
        rec.getMessage()
        for rec in caplog.records
        if rec.name == "asyncio" or rec.exc_info or rec.levelno >= logging.ERROR
    ]
    assert not unexpected, unexpected[:3]


# --- client.export() with anything --------------------------------------------------------------------


class Hostile:
    """An object whose every protocol method raises."""

    def _raise(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("hostile")

    __eq__ = __hash__ = __iter__ = __len__ = __repr__ = __str__ = __float__ = __int__ = __index__ = _raise  # type: ignore
    __getitem__ = __contains__ = __bool__ = __format__ = __reduce__ = __reduce_ex__ = _raise  # type: ignore


class HostileKey(Hostile):
    """Hashable (it can be a dict key), but comparing, printing or converting it raises."""

    def __hash__(self) -> int:
        return id(self) >> 4  # distinct: __eq__ is never needed to build a dict


class HostileMapping(dict):
    def items(self):  # type: ignore[override]
        raise RuntimeError("items")

    def keys(self):  # type: ignore[override]
        raise RuntimeError("keys")

    def __iter__(self):
        raise RuntimeError("iter")


class SelfContaining(list):
    def __init__(self) -> None:
        super().__init__()
        self.append(self)


class Slotted:
    __slots__ = ("a",)

    def __init__(self) -> None:
        self.a = 1


hashables = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.tuples(st.integers(), st.text(max_size=3)),
    st.frozensets(st.integers(), max_size=3),
)
anything = st.recursive(
    hashables
    | st.integers(min_value=2**64, max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.builds(Hostile)
    | st.builds(SelfContaining)
    | st.builds(Slotted)
    | st.builds(object)
    | st.from_type(complex)
    | st.from_type(bytearray)
    | st.just(Hostile)
    | st.just(print),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(hashables, children, max_size=4)
        | st.sets(hashables, max_size=3)
        | st.tuples(children, children)
        | st.builds(HostileMapping, st.dictionaries(st.text(max_size=3), children, max_size=2))
        | st.builds(
            lambda d: {HostileKey(): 1, HostileKey(): 2, **d},
            st.dictionaries(st.text(max_size=3), children, max_size=2),
        )
    ),
    max_leaves=15,
)
deeply_nested = st.integers(100, 3000).map(
    lambda n: __import__("functools").reduce(lambda acc, _: {"k": [acc]}, range(n), 0)
)


@pytest.fixture
def exporting(mona):
    client.init_client(port=mona.port, user_id="fuzz", print_logs=False, should_raise_exceptions=False)
    with client.new_mona_context(arc_class="fuzz"):
        yield mona


@settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    message=st.one_of(
        st.dictionaries(hashables | st.builds(HostileKey), anything, max_size=5), anything, deeply_nested
    ),
    timestamp=st.one_of(st.none(), st.floats(), st.integers(-(2**70), 2**70), st.text(max_size=5), st.builds(Hostile)),
)
def test_export_never_raises_with_exceptions_off(exporting, message, timestamp):
    logging.disable(logging.CRITICAL)  # thousands of rate-limited warnings are not the point here
    try:
        result = client.export(message, timestamp)
    finally:
        logging.disable(logging.NOTSET)
    assert isinstance(result, bool)
