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
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

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


def collector_frames(records: int) -> List[Tuple[bytes, str]]:
    """Pre-encoded PackedForward chunks of ``records`` mona records, as bench/bench_collector.py makes them."""
    from bench.bench_collector import make_frames

    return make_frames(records, 1000, RECORDS_PER_ARC)


def collector_alone_run(frames: List[Tuple[bytes, str]], records: int, workdir: str) -> float:
    """Records/s the collector alone stores: pre-encoded chunks, 8 in flight, until the last ack."""
    from bench.bench_collector import send_all

    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        collector = CollectorProcess(directory)
        try:
            elapsed = send_all(collector.port, frames, 8)
            if not collector.wait_stored(records, 60):
                raise RuntimeError(f"the collector stored {collector.stored()} of {records} records")
        finally:
            collector.stop()
    return records / elapsed
