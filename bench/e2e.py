"""End to end: exports from one thread of this process until the collector has merged them into ARCs.

The mona client sends to ``mona collect`` (a separate process, fresh temporary database each run); a
run counts from the first export to the moment the collector's database holds every record (read
from its ``tag_stats``, the same counters ``mona stats`` shows). Each ARC is one context with an
``arc_class`` (which exports one record of its own), four exports, then a sub-context with five more.

fluent-logger's async sender sends the same messages (no contexts: it has none) to a sink that decodes
and discards; a run ends when the sink has decoded them all.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

from bench.micro import ARC_CLASS
from bench.sinks import CollectorProcess, Sink

EXPORTS_PER_ARC = 9  # 4 in the root context, 5 in a sub-context
RECORDS_PER_ARC = EXPORTS_PER_ARC + 1  # and the arc_class record

#: One message per step of an ARC, each with its own KAPIs (as a real run exports different ones).
STEP_MESSAGES: List[Dict[str, Any]] = [
    {f"score_{step}": 0.5 + step / 100, "segment": "eu", f"rows_{step}": 1000 + step, "model": "m-3"}
    for step in range(EXPORTS_PER_ARC)
]


@dataclass
class MonaRun:
    exports: int
    records: int
    seconds: float  # first export until every record is stored
    export_seconds: float  # the caller's loop alone
    arcs: int
    stored_exports: int
    spooled: int
    dropped: int
    rss: int = 0
    peak_rss: int = 0

    @property
    def exports_per_s(self) -> float:
        """User exports merged into ARCs per second (records the client dropped do not count)."""
        return self.exports * (self.records - self.dropped) / self.records / self.seconds

    @property
    def records_per_s(self) -> float:
        return (self.records - self.dropped) / self.seconds


@dataclass
class FluentRun:
    exports: int
    seconds: float

    @property
    def exports_per_s(self) -> float:
        return self.exports / self.seconds


def mona_run(arcs: int, workdir: str, config_path: str, flush_every: int = 0, timeout: float = 600.0) -> MonaRun:
    """One run into a fresh collector; the client is closed afterwards.

    ``flush_every`` > 0 paces the caller: ``client.flush()`` after every that many ARCs (inside the
    timed span). Records the client dropped (queue full) are counted, not waited for.
    """
    from mona_client import client

    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        collector = CollectorProcess(directory)
        try:
            client.init_client(
                port=collector.port,
                user_id="bench-user",
                config_file=config_path,
                spool_dir=os.path.join(directory, "spool"),
                print_logs=False,
            )
            export = client.export
            new_context = client.new_mona_context
            new_sub = client.new_mona_sub_context
            root_messages = STEP_MESSAGES[:4]
            sub_messages = STEP_MESSAGES[4:]
            flush = client.flush
            started = time.perf_counter()
            for arc in range(1, arcs + 1):
                if flush_every and arc % flush_every == 0:
                    flush(timeout)
                with new_context(arc_class=ARC_CLASS):
                    for message in root_messages:
                        export(message)
                    with new_sub():
                        for message in sub_messages:
                            export(message)
            exported = time.perf_counter()
            records = arcs * RECORDS_PER_ARC
            if not client.flush(timeout):
                raise RuntimeError(f"the client did not deliver within {timeout:g}s: {client.stats()}")
            stats = client.stats()
            delivered = records - stats.get("dropped", 0)
            if not collector.wait_stored(delivered, timeout):
                raise RuntimeError(f"the collector stored {collector.stored()} of {delivered} records")
            finished = time.perf_counter()
            arc_count, stored_exports = collector.arcs()
            rss, peak = collector.rss()
            return MonaRun(
                exports=arcs * EXPORTS_PER_ARC,
                records=records,
                seconds=finished - started,
                export_seconds=exported - started,
                arcs=arc_count,
                stored_exports=stored_exports,
                spooled=stats.get("spooled", 0),
                dropped=stats.get("dropped", 0),
                rss=rss,
                peak_rss=peak,
            )
        finally:
            client.close(30)
            collector.stop()


def fluent_run(arcs: int, sink: Sink, timeout: float = 600.0) -> FluentRun:
    """The same messages through fluent-logger's async sender (default queue) into the sink."""
    from fluent import asyncsender

    sender = asyncsender.FluentSender("bench", host="127.0.0.1", port=sink.port)
    try:
        emit = sender.emit
        exports = arcs * EXPORTS_PER_ARC
        target = sink.records + exports
        started = time.perf_counter()
        for _ in range(arcs):
            for message in STEP_MESSAGES:
                emit("run", message)
        if not sink.wait_for(target, timeout):
            raise RuntimeError(f"the sink got {sink.records - target + exports} of {exports} records")
        return FluentRun(exports, time.perf_counter() - started)
    finally:
        sender.close()


def client_frames(arcs: int, subs_per_arc: int = 1, chunk: int = 1000) -> List[Tuple[bytes, str]]:
    """PackedForward chunks (with their chunk ids) of :func:`client_entries`, acks requested."""
    from mona_client import forward
    from mona_client.record import TAG

    frames = []
    for entries, count in client_entries(arcs, subs_per_arc, chunk):
        chunk_id = forward.new_chunk_id()
        frames.append((forward.pack_packed_forward(TAG, entries, count, chunk_id), chunk_id))
    return frames


def client_entries(arcs: int, subs_per_arc: int = 1, chunk: int = 1000) -> List[Tuple[bytes, int]]:
    """The entries (a PackedForward blob and its count per chunk of ``chunk``) of the records the mona
    client sends for ``arcs`` ARCs of :func:`mona_run`'s shape, in the client's form: each ARC its
    ``arc_class`` record and four exports in the root context, then ``subs_per_arc`` sub-contexts of
    five exports each (one in :func:`mona_run`), context ids and record ids made as the client makes
    them."""
    from mona_client import forward

    source = os.urandom(8).hex()
    process = os.urandom(8).hex()
    now = int(time.time())
    entries: List[bytes] = []
    blobs: List[Tuple[bytes, int]] = []
    sequence = 0
    context_number = 0

    def add(context: str, message: Dict[str, Any]) -> None:
        nonlocal sequence
        sequence += 1
        record = {
            "user_id": "bench-user",
            "context": context,
            "export_timestamp": now,
            "message": message,
            "record_id": f"{source}:{sequence}",
        }
        entries.append(forward.pack_entry(now, record))
        if len(entries) == chunk:
            blobs.append((b"".join(entries), len(entries)))
            entries.clear()

    for _ in range(arcs):
        context_number += 1
        root = f"{process}-{context_number}"
        add(root, {"MONA_ARC_CLASS": ARC_CLASS})
        for message in STEP_MESSAGES[:4]:
            add(root, message)
        for _ in range(subs_per_arc):
            context_number += 1
            sub = f"{root}.{process}-{context_number}"
            for message in STEP_MESSAGES[4:]:
                add(sub, message)
    if entries:
        blobs.append((b"".join(entries), len(entries)))
    return blobs


@dataclass
class CollectorRun:
    """The collector alone fed pre-encoded chunks: seconds until the last ack and until merged."""

    records: int
    acked_seconds: float
    merged_seconds: float
    arcs: int = 0
    rss: int = 0
    peak_rss: int = 0
    merger_rss: int = 0
    merger_peak_rss: int = 0
    writer_rss: int = 0
    writer_peak_rss: int = 0
    #: CPU seconds each of the collector's processes used from the first record to the last merged.
    cpu: Dict[str, float] = field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        """Records merged into ARCs and queryable per second (the clock stops when the last is)."""
        return self.records / self.merged_seconds

    @property
    def acked_per_s(self) -> float:
        return self.records / self.acked_seconds


def collector_alone_run(frames: List[Tuple[bytes, str]], records: int, workdir: str, window: int = 8) -> CollectorRun:
    """The collector alone: pre-encoded chunks sent ``window`` in flight; timed until the last ack and
    until its database counts every record merged (its ``tag_stats``, what ``mona stats`` shows)."""
    from bench.bench_collector import send_all

    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        collector = CollectorProcess(directory)
        try:
            cpu_before = collector.idle_cpu_seconds()
            started = time.perf_counter()
            acked = send_all(collector.port, frames, window)
            if not collector.wait_stored(records, 600, poll=0.002):
                raise RuntimeError(f"the collector stored {collector.stored()} of {records} records")
            merged = time.perf_counter() - started
            arcs, stored_exports = collector.arcs()
            if stored_exports != records:
                raise RuntimeError(f"{stored_exports} of {records} records found merged in the ARCs")
            cpu = {name: seconds - cpu_before.get(name, 0.0) for name, seconds in collector.cpu_seconds().items()}
            rss, peak = collector.rss()
            merger_rss, merger_peak = collector.merger_rss()
            writer_rss, writer_peak = collector.writer_rss()
        finally:
            collector.stop()
    return CollectorRun(records, acked, merged, arcs, rss, peak, merger_rss, merger_peak, writer_rss, writer_peak, cpu)


def split_ceiling_run(
    halves: Sequence[List[Tuple[bytes, str]]], records: int, workdir: str, window: int = 8
) -> CollectorRun:
    """Seconds for two collectors, each with its own database, to merge one half of the ARCs each,
    sent at once from two threads: the most a merger split in two by ARC key could reach on this
    machine (a split within one collector would also decode every record twice and share one writer)."""
    import threading

    from bench.bench_collector import send_all

    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        collectors = []
        try:
            for half in range(len(halves)):
                os.mkdir(os.path.join(directory, str(half)))
                collectors.append(CollectorProcess(os.path.join(directory, str(half))))
            failures: List[BaseException] = []

            def send(port: int, frames: List[Tuple[bytes, str]]) -> None:
                try:
                    send_all(port, frames, window)
                except BaseException as exc:  # SystemExit included: reported by the caller's thread
                    failures.append(exc)

            started = time.perf_counter()
            senders = [
                threading.Thread(target=send, args=(collector.port, frames))
                for collector, frames in zip(collectors, halves)
            ]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            acked = time.perf_counter() - started
            if failures:
                raise RuntimeError(f"sending to the two collectors failed: {failures[0]}")
            share = records // len(halves)
            for collector in collectors:
                if not collector.wait_stored(share, 600, poll=0.002):
                    raise RuntimeError(f"a collector stored {collector.stored()} of {share} records")
            merged = time.perf_counter() - started
            if sum(collector.arcs()[1] for collector in collectors) != records:
                raise RuntimeError("the two collectors' ARCs do not add up to every record")
        finally:
            for collector in collectors:
                collector.stop()
    return CollectorRun(records, acked, merged)
