"""How many records per second the collector stores and merges into ARCs.

One client sends PackedForward chunks of ``--chunk`` records (EventTime times, ack requested) over a
real loopback socket to a collector running in a separate process (which runs its merger in a process
of its own), keeping ``--window`` chunks in flight. Two rates: records acked (durably in the raw log),
and records stored, merged into ARCs, acked and queryable (the clock stops once the merger has
committed the last record and the collector process has been told so). Next to them, the same bytes
are only decoded with msgpack in this process, as the floor to compare with.

Each ARC gets ``--exports-per-arc`` records (one on the root context, the others on sub-contexts),
with a few KAPIs each, like a real instrumented run.

    python bench/bench_collector.py            # 1,000,000 records
    python bench/bench_collector.py --quick    # a smoke run of 20,000 records
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import sqlite3
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Deque, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack
import psutil

from mona_client import forward
from mona_client.record import TAG


def make_frames(records: int, chunk: int, exports_per_arc: int) -> List[Tuple[bytes, str]]:
    """PackedForward frames (and their chunk ids) for ``records`` mona records."""
    frames = []
    for entries, count in make_entries(records, chunk, exports_per_arc):
        chunk_id = forward.new_chunk_id()
        frames.append((forward.pack_packed_forward(TAG, entries, count, chunk_id), chunk_id))
    return frames


def make_entries(records: int, chunk: int, exports_per_arc: int) -> List[Tuple[bytes, int]]:
    """The entries of those frames: a PackedForward entries blob and its count per chunk."""
    blobs = []
    base = 1_700_000_000
    for start in range(0, records, chunk):
        entries = []
        for seq in range(start, min(start + chunk, records)):
            arc, step = divmod(seq, exports_per_arc)
            context = f"run-{arc}" if step == 0 else f"run-{arc}.step-{step}"
            message = {"loss": seq * 0.001, "accuracy": 0.5, "model": "m-3", "rows": seq}
            if step == 0:
                message["MONA_ARC_CLASS"] = "training"
            record = {
                "user_id": "bench-user",
                "context": context,
                "message": message,
                "export_timestamp": base + seq // 1000,
                "record_id": f"bench-source:{seq}",
            }
            entries.append(forward.pack_entry(forward.EventTime(base + seq // 1000, seq % 1000), record))
        blobs.append((b"".join(entries), len(entries)))
    return blobs


def decode_rate(frames: List[Tuple[bytes, str]], records: int) -> float:
    """Records per second msgpack alone decodes from the same frames (frame, then its entries)."""
    started = time.perf_counter()
    for frame, _ in frames:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(frame)
        for message in unpacker:
            entries = msgpack.Unpacker(raw=False, strict_map_key=False)
            entries.feed(message[1])
            for _ in entries:
                pass
    return records / (time.perf_counter() - started)


def run_collector(db_path: str, synchronous: str, port_pipe: multiprocessing.connection.Connection) -> None:
    from mona_collector import Collector

    collector = Collector(port=0, db_path=db_path, synchronous=synchronous)
    port_pipe.send(collector.start())
    port_pipe.recv()  # every chunk is acked: wait until all of it is merged
    port_pipe.send(collector.wait_merged(timeout=600))
    port_pipe.recv()  # told to stop
    collector.stop()
    port_pipe.send("stopped")


def send_all(port: int, frames: List[Tuple[bytes, str]], window: int) -> float:
    """Send every frame keeping ``window`` unacked; seconds from the first byte to the last ack."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    decoder = forward.FrameDecoder()
    waiting: Deque[str] = deque()
    started = time.perf_counter()
    for frame, chunk_id in frames:
        while len(waiting) >= window:
            _read_acks(sock, decoder, waiting)
        sock.sendall(frame)
        waiting.append(chunk_id)
    while waiting:
        _read_acks(sock, decoder, waiting)
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed


def _read_acks(sock: socket.socket, decoder: forward.FrameDecoder, waiting: Deque[str]) -> None:
    data = sock.recv(65536)
    if not data:
        raise SystemExit("the collector closed the connection")
    for answer in decoder.feed(data):
        expected = waiting.popleft()
        if answer != {"ack": expected}:
            raise SystemExit(f"unexpected answer {answer!r}, wanted the ack of {expected!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="a smoke run of 20,000 records")
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--window", type=int, default=8, help="chunks in flight (unacked)")
    parser.add_argument("--exports-per-arc", type=int, default=8)
    parser.add_argument("--synchronous", default="FULL", help="SQLite synchronous setting")
    parser.add_argument("--db", help="database file (default: a temporary one)")
    args = parser.parse_args()
    records = 20_000 if args.quick else args.records

    frames = make_frames(records, args.chunk, args.exports_per_arc)
    total_bytes = sum(len(frame) for frame, _ in frames)
    decode = decode_rate(frames, records)

    with tempfile.TemporaryDirectory() as tmp:
        db_path = args.db or os.path.join(tmp, "bench.db")
        parent_end, child_end = multiprocessing.Pipe()
        process = multiprocessing.get_context("spawn").Process(
            target=run_collector, args=(db_path, args.synchronous, child_end)
        )
        process.start()
        port = parent_end.recv()
        started = time.perf_counter()
        elapsed = send_all(port, frames, args.window)
        parent_end.send("merged?")
        if not parent_end.recv():
            raise SystemExit("the merger did not catch up")
        merged_elapsed = time.perf_counter() - started
        collector = psutil.Process(process.pid)
        each = [p.memory_info().rss for p in [collector, *collector.children(recursive=True)]]
        rss = sum(each)
        parent_end.send("stop")
        parent_end.recv()
        process.join()
        db_size = sum(os.path.getsize(p) for p in Path(db_path).parent.glob(Path(db_path).stem + ".*"))  # + raw log
        check = sqlite3.connect(db_path)
        merged_records = check.execute("SELECT coalesce(sum(export_count), 0) FROM arcs").fetchone()[0]
        check.close()
        if merged_records != records:
            raise SystemExit(f"{merged_records} records merged into ARCs, expected {records}")

    acked = records / elapsed
    stored = records / merged_elapsed
    print(
        f"records: {records:,} in chunks of {args.chunk} ({total_bytes / records:.0f} B each on the wire), "
        f"{args.exports_per_arc} exports per ARC, window {args.window}, synchronous={args.synchronous}"
    )
    print(f"{'measure':<52}{'records/s':>14}")
    print(f"{'msgpack decode only (same bytes)':<52}{decode:>14,.0f}")
    print(f"{'collector: acked (stored in the raw log)':<52}{acked:>14,.0f}")
    print(f"{'collector: stored + merged + acked + queryable':<52}{stored:>14,.0f}")
    print(f"{'ratio collector (merged) / decode':<52}{stored / decode:>14.2f}")
    print(f"merge lag at the last ack: {merged_elapsed - elapsed:.2f} s")
    print(
        f"collector RSS (its three processes: network side, merger, writer) after {records:,} records: "
        f"{rss / 2**20:.1f} MiB "
        f"({' + '.join(f'{one / 2**20:.0f}' for one in each)}); "
        f"database {db_size / 2**20:.1f} MiB"
    )
    goal = 400_000
    print(f"goal {goal:,} records/s: {'met' if stored >= goal else 'NOT met'}")


if __name__ == "__main__":
    main()
