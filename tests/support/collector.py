"""Helpers for the collector tests: crafted Forward bytes and a raw socket client.

The bytes are written out by hand where the encoding is the point (fixext8 vs ext8 times, str32
entries), so the tests do not depend on how msgpack-python chooses to encode.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import msgpack
import pytest

from mona_client.forward import FrameDecoder
from mona_client.record import TAG
from mona_collector import Collector
from mona_collector.databases import open_store
from mona_collector.store import raw_log_path

BASE = 1_700_000_000


def record(
    context: str, message: Dict[str, Any], ts: int = BASE, user: str = "u1", record_id: Optional[str] = None
) -> Dict[str, Any]:
    out = {"user_id": user, "context": context, "message": message, "export_timestamp": ts}
    if record_id is not None:
        out["record_id"] = record_id
    return out


def time_fixext8(seconds: int, nanoseconds: int) -> bytes:
    return b"\xd7\x00" + struct.pack(">II", seconds, nanoseconds)


def time_ext8(seconds: int, nanoseconds: int) -> bytes:
    return b"\xc7\x08\x00" + struct.pack(">II", seconds, nanoseconds)


def entry(time_bytes: bytes, rec: Any) -> bytes:
    """One packed ``[time, record]`` with the time's bytes as given."""
    packed: bytes = msgpack.packb(rec, use_bin_type=True)
    return b"\x92" + time_bytes + packed


def str32(data: bytes) -> bytes:
    return b"\xdb" + struct.pack(">I", len(data)) + data


def bin32(data: bytes) -> bytes:
    return b"\xc6" + struct.pack(">I", len(data)) + data


def packed_message(tag: str, entries_field: bytes, option: Optional[Dict[str, Any]]) -> bytes:
    """``[tag, <entries field bytes as given>, option?]``."""
    items = [msgpack.packb(tag), entries_field]
    if option is not None:
        items.append(msgpack.packb(option, use_bin_type=True))
    return bytes([0x90 + len(items)]) + b"".join(items)


ROOT = Path(__file__).resolve().parents[2]
#: The environment of the ``mona`` subprocesses: this tree's packages first.
MONA_ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def run_mona(
    *args: str, check: bool = True, env: Optional[Mapping[str, str]] = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``mona ARGS`` as a user runs it (this tree's packages first, in ``env`` or this environment);
    with ``check`` it must exit 0."""
    result = subprocess.run(
        [sys.executable, "-m", "mona_collector.cli", *args],
        capture_output=True,
        text=True,
        env=MONA_ENV if env is None else dict(env, PYTHONPATH=str(ROOT)),
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


class MonaCollect:
    """``mona collect --port PORT --db DB EXTRA...`` as a real process, its port read from the line that
    says it listens (``listening_line``; its merger may log before it). ``drain`` keeps reading its log
    afterwards so that it never blocks on a full pipe; without it the test reads ``process.stderr``."""

    def __init__(
        self,
        db: Union[Path, str],
        *extra: str,
        port: int = 0,
        umask: Optional[int] = None,
        env: Optional[Dict[str, str]] = None,
        drain: bool = False,
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mona_collector.cli", "collect", "--port", str(port), "--db", str(db), *extra],
            stderr=subprocess.PIPE,
            text=True,
            env=MONA_ENV if env is None else env,
            preexec_fn=None if umask is None else (lambda: os.umask(umask)),
        )
        assert self.process.stderr is not None
        seen = ""
        match = None
        while match is None:
            line = self.process.stderr.readline()
            if not line:
                self.process.wait(30)
                raise AssertionError("mona collect did not start: " + seen)
            seen += line
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        self.listening_line = line
        self.port = int(match.group(1))
        if drain:
            threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def store_through_a_collector(db: Union[Path, str], records: List[Any], chunk: str = "fill") -> None:
    """Store ``records`` (strings may carry surrogates: they go out as their raw bytes) in ``db`` through
    a real collector: one acked PackedForward chunk, merged before the collector stops."""
    with Collector(port=0, db_path=db, synchronous="NORMAL", udp_heartbeat=False) as running:
        client = RawClient(running.port)
        blob = b"".join(
            b"\x92" + time_fixext8(BASE, 0) + msgpack.packb(rec, use_bin_type=True, unicode_errors="surrogateescape")
            for rec in records
        )
        client.send(packed_message(TAG, bin32(blob), {"chunk": chunk}))
        assert client.answer() == {"ack": chunk}
        client.close()


class RawClient:
    """A plain TCP client: sends bytes, reads msgpack answers, notices when it is closed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = FrameDecoder()
        self.answers: List[Any] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> Any:
        """The next answer (an ack); fails the test if the connection closes first."""
        while not self.answers:
            data = self.sock.recv(65536)
            assert data, "the collector closed the connection instead of answering"
            self.answers.extend(self.decoder.feed(data))
        return self.answers.pop(0)

    def wait_closed(self) -> None:
        """Block until the collector closes this connection (EOF or reset)."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "collector.db"


@pytest.fixture
def collector(db_path: Path) -> Iterator[Collector]:
    with Collector(port=0, db_path=db_path, stall_timeout=1.0, synchronous="NORMAL") as running:
        yield running


@pytest.fixture
def any_collector(any_db: Union[Path, str]) -> Iterator[Collector]:
    """A collector on each store in turn (see ``any_db``)."""
    with Collector(port=0, db_path=any_db, stall_timeout=1.0, synchronous="NORMAL") as running:
        yield running


def wait_merged(db_path: Union[Path, str], timeout: float = 20.0) -> None:
    """Wait until the merger has merged every raw row (acks come once a row is stored raw; the ARCs
    follow a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        store = open_store(db_path, readonly=True)
        try:
            if store.stats()["unmerged_rows"] == 0:
                return
        finally:
            store.close()
        assert time.monotonic() < deadline, "the merger did not catch up"
        time.sleep(0.01)


def stored_arcs(db_path: Union[Path, str], context_id: str) -> List[Dict[str, Any]]:
    wait_merged(db_path)
    store = open_store(db_path, readonly=True)
    try:
        return store.find_arcs(context_id)
    finally:
        store.close()


def stats(db_path: Union[Path, str]) -> Dict[str, Any]:
    wait_merged(db_path)
    store = open_store(db_path, readonly=True)
    try:
        return store.stats()
    finally:
        store.close()


def raw_event_count(db_path: Path) -> int:
    """Events in the raw log, read with a connection of its own (what another process would see)."""
    with sqlite3.connect(raw_log_path(db_path)) as db:
        count: int = db.execute("SELECT coalesce(sum(events), 0) FROM raw_chunks").fetchone()[0]
        return count


__all__ = [
    "BASE",
    "TAG",
    "RawClient",
    "any_collector",
    "bin32",
    "collector",
    "db_path",
    "entry",
    "packed_message",
    "raw_event_count",
    "record",
    "stats",
    "stored_arcs",
    "str32",
    "time_ext8",
    "time_fixext8",
    "wait_merged",
]
