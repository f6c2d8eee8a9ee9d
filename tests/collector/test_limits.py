"""The collector's limits on what clients can hold: connections, idle time, stalled frames, bytes in
incomplete frames, and accept() running out of file descriptors. Real sockets, a real collector,
and a real subprocess under a low file descriptor limit."""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from mona_client.forward import pack_entry
from mona_client.transport import Sender, SenderOptions
from mona_collector import Collector
from tests.support.collector import (
    BASE,
    TAG,
    RawClient,
    bin32,
    entry,
    packed_message,
    record,
    stored_arcs,
    time_fixext8,
)

ROOT = Path(__file__).resolve().parents[2]
COLLECTOR_LOG = "mona_collector"


def message(context: str, chunk: str, padding: int = 0) -> bytes:
    """One PackedForward message with an ack request; ``padding`` characters make it as big as wanted."""
    rec = record(context, {"pad": "x" * padding}, record_id=f"{chunk}:1")
    return packed_message(TAG, bin32(entry(time_fixext8(BASE, 0), rec)), {"chunk": chunk})


def lines(caplog, text: str) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == COLLECTOR_LOG and text in r.getMessage()]


def closed_by_peer(sock: socket.socket, timeout: float = 20.0) -> bool:
    """True once the collector closed ``sock`` (EOF or reset) within ``timeout``; False if still open."""
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def start(tmp_path: Path, **options) -> Collector:
    collector = Collector(port=0, db_path=tmp_path / "limits.db", synchronous="NORMAL", udp_heartbeat=False, **options)
    collector.start()
    return collector


def test_connections_beyond_the_limit_are_closed_at_once_with_one_log_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, COLLECTOR_LOG)
    with start(tmp_path, max_connections=4) as collector:
        admitted = [RawClient(collector.port) for _ in range(4)]
        for number, client in enumerate(admitted):  # an ack proves the collector counts it
            client.send(message(f"kept-{number}", f"k{number}"))
            assert client.answer() == {"ack": f"k{number}"}
        refused = [RawClient(collector.port) for _ in range(10)]
        for client in refused:
            assert closed_by_peer(client.sock), "a connection beyond --max-connections was kept open"
        assert len(lines(caplog, "--max-connections")) == 1
        admitted[0].send(message("still-served", "s1"))  # the admitted ones carry on
        assert admitted[0].answer() == {"ack": "s1"}
        admitted[1].close()
        deadline = time.monotonic() + 20
        while True:  # its place is given back once the collector saw it go
            late = RawClient(collector.port)
            late.send(message("late", "late"))
            try:
                if late.answer() == {"ack": "late"}:
                    break
            except (AssertionError, ConnectionResetError):
                pass
            assert time.monotonic() < deadline, "a closed connection's place was never given back"
            time.sleep(0.1)
        for client in admitted + refused + [late]:
            client.close()
    assert stored_arcs(tmp_path / "limits.db", "late")


def test_idle_connections_are_closed_and_a_sender_carries_on(tmp_path, caplog):
    caplog.set_level(logging.INFO, COLLECTOR_LOG)
    with start(tmp_path, idle_timeout=1.0) as collector:
        silent = RawClient(collector.port)  # never sends a byte
        assert closed_by_peer(silent.sock), "a connection that never sent anything was kept open"
        talker = RawClient(collector.port)
        talker.send(message("idle-then-closed", "i1"))
        assert talker.answer() == {"ack": "i1"}
        assert closed_by_peer(talker.sock), "a connection idle after its last message was kept open"
        assert lines(caplog, "--idle-timeout")
        # A real client is not hurt: the collector closes its idle connection, it reconnects.
        sender = Sender(SenderOptions("127.0.0.1", collector.port, connect_timeout=2.0, max_backoff=0.2))
        try:
            sender.put(pack_entry(BASE, record("sender-run", {"first": 1}, record_id="snd:1")))
            assert sender.flush(20)
            time.sleep(2.5)  # longer than the idle timeout
            sender.put(pack_entry(BASE, record("sender-run", {"second": 2}, record_id="snd:2")))
            assert sender.flush(20)
        finally:
            sender.close(1)
        silent.close()
        talker.close()
    assert stored_arcs(tmp_path / "limits.db", "sender-run")[0]["fields"] == {"first": 1, "second": 2}


def test_the_stall_timeout_runs_from_the_first_byte_of_a_frame(tmp_path, caplog):
    caplog.set_level(logging.INFO, COLLECTOR_LOG)
    with start(tmp_path, stall_timeout=1.0) as collector:
        frame = message("dribbled", "d1", padding=200)
        client = RawClient(collector.port)
        sent = 0
        deadline = time.monotonic() + 30
        closed = False
        while sent < len(frame) - 1 and time.monotonic() < deadline:
            try:
                client.send(frame[sent : sent + 1])  # one byte every 0.1 s: each resets a per-byte timer
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sent += 1
            if closed_by_peer(client.sock, 0.1):
                closed = True
                break
        assert closed, "a client sending one byte at a time held its incomplete frame past the stall timeout"
        assert sent < len(frame) - 1
        assert lines(caplog, "after its first byte")
        client.close()


def test_bytes_in_incomplete_frames_are_capped_across_connections(tmp_path, caplog):
    caplog.set_level(logging.INFO, COLLECTOR_LOG)
    mib = 1024 * 1024
    with start(tmp_path, max_frame_bytes=mib, max_buffered_bytes=2 * mib, stall_timeout=120.0) as collector:
        server = collector._server
        assert server is not None
        frames = {
            "small": message("small", "a", 400_000),
            "large": message("large", "b", 1_000_000),
            "medium": message("medium", "c", 900_000),
        }
        clients = {name: RawClient(collector.port) for name in frames}
        held = 0
        for name in ("small", "large"):
            clients[name].send(frames[name][:-10])
            held += len(frames[name]) - 10
            deadline = time.monotonic() + 20
            while server.buffered_bytes < held:  # read by the collector, not only sent
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert held < 2 * mib
        clients["medium"].send(frames["medium"][:-10])  # now above the cap: the largest holder goes
        assert closed_by_peer(clients["large"].sock), "the connection holding the most was not closed"
        for name, chunk in (("small", "a"), ("medium", "c")):
            clients[name].send(frames[name][-10:])
            assert clients[name].answer() == {"ack": chunk}
        assert len(lines(caplog, "--max-buffered-bytes")) == 1
        assert server.buffered_bytes == 0
        for client in clients.values():
            client.close()


_EMFILE_COLLECTOR = """
import logging, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
from mona_collector import Collector
with Collector(port=0, db_path=sys.argv[1], idle_timeout=3.0, udp_heartbeat=False, synchronous="NORMAL") as c:
    print(c.port, flush=True)
    sys.stdin.read()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_NOFILE is POSIX")
def test_out_of_file_descriptors_pauses_accepting_logs_one_line_and_recovers(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-c", _EMFILE_COLLECTOR, str(tmp_path / "emfile.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    idle: List[socket.socket] = []
    try:
        assert process.stdout is not None and process.stdin is not None
        port = int(process.stdout.readline())
        for _ in range(300):  # more than the collector has descriptors for; they never send a byte
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            idle.append(sock)
        time.sleep(2.0)  # the collector is out of descriptors now
        client = RawClient(port)
        client.sock.settimeout(90)
        client.send(message("served-after-all", "emfile"))
        assert client.answer() == {"ack": "emfile"}, "idle sockets locked every client out"
        client.close()
    finally:
        for sock in idle:
            sock.close()
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    stderr = process.stderr.read() if process.stderr is not None else ""
    assert "Traceback" not in stderr, stderr[-3000:]
    assert 1 <= stderr.count("cannot accept connections") <= 2, stderr[-3000:]
    assert process.returncode == 0, stderr[-3000:]
