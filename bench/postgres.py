"""The merged-records rate into PostgreSQL with 1, 2 and 3 collectors, next to SQLite with one, in one run.

Each configuration starts its collectors as real ``mona collect`` processes (each with its merger
process) on a new database; one client thread per collector sends PackedForward chunks of ``--chunk``
records with acks, ``--window`` chunks in flight; the clock stops when every record is merged
(``mona stats``: no raw row left unmerged). PostgreSQL runs from a temporary cluster with ``fsync=on``
(the tests' fixture, ``tests/support/postgres.py``), on the same machine.

    python -m bench.postgres            # 200,000 records per configuration
    python -m bench.postgres --quick    # 20,000
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Tuple, Union

import msgpack

from mona_client import forward
from mona_client.record import TAG
from mona_collector.databases import open_store

ROOT = Path(__file__).resolve().parent.parent


def _frames(records: int, chunk: int, exports_per_arc: int, salt: str) -> List[Tuple[bytes, str]]:
    frames = []
    for start in range(0, records, chunk):
        entries = []
        for n in range(start, min(start + chunk, records)):
            arc, step = divmod(n, exports_per_arc)
            context = f"{salt}-{arc}" if step == 0 else f"{salt}-{arc}.s{step}"
            record = {
                "user_id": "bench",
                "context": context,
                "message": {"loss": n * 0.001, "acc": 0.5, "step": step},
                "export_timestamp": 1_700_000_000 + n,
                "record_id": f"{salt}:{n}",
            }
            entries.append(forward.pack_entry(1_700_000_000, record))
        chunk_id = f"{salt}-{start}"
        body = msgpack.packb(b"".join(entries), use_bin_type=True)
        frame = b"\x93" + msgpack.packb(TAG) + body + msgpack.packb({"chunk": chunk_id, "size": len(entries)})
        frames.append((frame, chunk_id))
    return frames


def _send(port: int, frames: List[Tuple[bytes, str]], window: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    unpacker = msgpack.Unpacker(raw=False)
    in_flight = 0
    for frame, _ in frames:
        sock.sendall(frame)
        in_flight += 1
        while in_flight >= window:
            in_flight -= _read_acks(sock, unpacker)
    while in_flight:
        in_flight -= _read_acks(sock, unpacker)
    sock.close()


def _read_acks(sock: socket.socket, unpacker: msgpack.Unpacker) -> int:
    data = sock.recv(65536)
    if not data:
        raise RuntimeError("the collector closed the connection")
    unpacker.feed(data)
    return sum(1 for _ in unpacker)


def _start(db: str) -> Tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "mona_collector.cli", "collect", "--port", "0", "--db", db, "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    # --quiet: no "listening" line; ask the OS for the port the process bound.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ports = _listening_ports(process.pid)
        if ports:
            return process, ports[0]
        time.sleep(0.05)
    raise RuntimeError("the collector did not start")


def _listening_ports(pid: int) -> List[int]:
    import psutil

    try:
        return [c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.status == "LISTEN"]
    except psutil.Error:
        return []


def _merged(db: Union[str, Path]) -> bool:
    store = open_store(db, readonly=True)
    try:
        return int(store.stats()["unmerged_rows"]) == 0
    finally:
        store.close()


def run(db: str, collectors: int, records: int, chunk: int, window: int) -> float:
    """Records per second, stored and merged, with ``collectors`` collectors on ``db``."""
    started = [_start(db) for _ in range(collectors)]
    try:
        share = records // collectors
        batches = [_frames(share, chunk, 8, f"c{i}") for i in range(collectors)]
        threads = [
            threading.Thread(target=_send, args=(port, frames, window)) for (_, port), frames in zip(started, batches)
        ]
        begin = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        while not _merged(db):
            time.sleep(0.02)
        return share * collectors / (time.perf_counter() - begin)
    finally:
        for process, _ in started:
            process.send_signal(signal.SIGTERM)
        for process, _ in started:
            process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--window", type=int, default=8)
    args = parser.parse_args()
    records = 20_000 if args.quick else args.records
    sys.path.insert(0, str(ROOT))
    from tests.support.postgres import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        sys.exit("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    server = PostgresServer(bin_dir, fsync=True)
    server.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            sqlite_rate = run(str(Path(folder) / "bench.db"), 1, records, args.chunk, args.window)
        print(f"{'store':<12} {'collectors':>10} {'merged records/s':>18}")
        print(f"{'SQLite':<12} {1:>10} {sqlite_rate:>18,.0f}")
        for collectors in (1, 2, 3):
            rate = run(server.create_database(), collectors, records, args.chunk, args.window)
            print(f"{'PostgreSQL':<12} {collectors:>10} {rate:>18,.0f}")
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
