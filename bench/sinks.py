"""Peers for the benchmark, each in a process of its own so it takes no GIL time from the measured one.

* :func:`start_sink`: a Forward receiver that decodes every frame, counts its records, acks the chunks
  that ask for an ack, and discards everything. fluent-logger (Message mode, no acks) and the mona
  sender (PackedForward, acks) both talk to it.
* :func:`start_collector`: ``mona collect`` on a free port with a database in a given directory.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import socketserver
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Optional, Sequence

import msgpack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, timeout: float = 20.0, process: Optional[subprocess.Popen[bytes]] = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the peer on port {port} exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {timeout:g}s") from None
            time.sleep(0.02)


# --- the decode-and-discard sink ---------------------------------------------------------------------


def _records_in(frame: Any) -> tuple[int, Optional[Any]]:
    """(records, chunk id to ack or None) of one Forward frame."""
    if not isinstance(frame, (list, tuple)) or len(frame) < 2:
        return 0, None
    body = frame[1]
    option = frame[-1] if len(frame) >= 3 and isinstance(frame[-1], dict) else {}
    if isinstance(body, (bytes, bytearray)):  # PackedForward
        count = option.get("size")
        if not isinstance(count, int):
            entries = msgpack.Unpacker(raw=False, strict_map_key=False)
            entries.feed(body)
            count = sum(1 for _ in entries)
    elif isinstance(body, list):  # Forward
        count = len(body)
    else:  # Message
        count = 1
    return count, option.get("chunk")


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        counter = self.server.counter  # type: ignore[attr-defined]  # set on the server below, for its handlers
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=64 * 1024 * 1024)
        while True:
            data = sock.recv(1 << 18)
            if not data:
                return
            unpacker.feed(data)
            records = 0
            acks = []
            for frame in unpacker:
                count, chunk = _records_in(frame)
                records += count
                if chunk is not None:
                    acks.append(msgpack.packb({"ack": chunk}))
            if records:
                with counter.get_lock():
                    counter.value += records
            if acks:
                sock.sendall(b"".join(acks))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve(port_pipe: Any, counter: Any) -> None:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.counter = counter  # type: ignore[attr-defined]  # socketserver gives handlers only .server
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port_pipe.send(server.server_address[1])
    port_pipe.recv()  # told to stop
    server.shutdown()


class Sink:
    """A running decode-and-discard Forward sink in a child process."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.counter = context.Value("q", 0)
        self._pipe, child_end = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_end, self.counter), daemon=True)
        self.process.start()
        self.port: int = self._pipe.recv()

    @property
    def records(self) -> int:
        value: int = self.counter.value
        return value

    def wait_for(self, count: int, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.counter.value < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def stop(self) -> None:
        try:
            self._pipe.send("stop")
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


def start_sink() -> Sink:
    return Sink()


# --- the collector ---------------------------------------------------------------------------------


class CollectorProcess:
    """``mona collect`` on a free port, storing in ``directory``; :meth:`stored` reads its database."""

    def __init__(self, directory: str, synchronous: str = "FULL", options: Sequence[str] = ()) -> None:
        self.db_path = os.path.join(directory, "collector.db")
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from mona_collector.cli import main; sys.exit(main(sys.argv[1:]))",
                "collect",
                "--port",
                str(self.port),
                "--db",
                self.db_path,
                "--synchronous",
                synchronous,
                "--quiet",
                *options,
            ],
            stdin=subprocess.DEVNULL,
        )
        wait_listening(self.port, process=self.process)
        self._db: Optional[sqlite3.Connection] = None

    def stored(self) -> int:
        """Records the collector has committed (merged into ARCs), read from its database."""
        if self._db is None:
            self._db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        row = self._db.execute("SELECT coalesce(sum(events), 0) FROM tag_stats").fetchone()
        return int(row[0])

    def arcs(self) -> tuple[int, int]:
        """(ARC documents, sum of their export counts)."""
        assert self._db is not None
        count, exports = self._db.execute("SELECT count(*), coalesce(sum(export_count), 0) FROM arcs").fetchone()
        return int(count), int(exports)

    def wait_stored(self, count: int, timeout: float = 300.0, poll: float = 0.005) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.stored() >= count:
                    return True
            except sqlite3.OperationalError:  # the schema is not there yet
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)

    def rss(self) -> tuple[int, int]:
        """(current RSS, peak RSS) of the collector process (the network side), in bytes."""
        return _rss(self.process.pid)

    def processes(self) -> Dict[str, int]:
        """The pids of the collector's processes: ``network side``, ``merger`` and ``writer`` (the
        merger's writer), those that run."""
        import psutil

        found = {"network side": self.process.pid}
        for child in psutil.Process(self.process.pid).children(recursive=True):
            command = " ".join(child.cmdline())
            if "mona_collector.merging.writer" in command:
                found["writer"] = child.pid
            elif "mona_collector.merging" in command:
                found["merger"] = child.pid
        return found

    def merger_rss(self) -> tuple[int, int]:
        """(current RSS, peak RSS) of the collector's merger process, in bytes ((0, 0): none runs)."""
        pid = self.processes().get("merger")
        return (0, 0) if pid is None else _rss(pid)

    def writer_rss(self) -> tuple[int, int]:
        """(current RSS, peak RSS) of the merger's writer process, in bytes ((0, 0): none runs)."""
        pid = self.processes().get("writer")
        return (0, 0) if pid is None else _rss(pid)

    def idle_cpu_seconds(self, timeout: float = 10.0) -> Dict[str, float]:
        """:meth:`cpu_seconds` once the merger has started its writer and every process is idle (the
        same in two readings 50 ms apart): what they used to start, not to be counted for a run."""
        deadline = time.monotonic() + timeout
        used = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.cpu_seconds()
            if len(now) == 3 and now == used:
                break
            used = now
        return used

    def cpu_seconds(self) -> Dict[str, float]:
        """CPU seconds (user + system) each of :meth:`processes` used so far."""
        import psutil

        used = {}
        for name, pid in self.processes().items():
            times = psutil.Process(pid).cpu_times()
            used[name] = times.user + times.system
        return used

    def stop(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _rss(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS: ``VmHWM``) of process ``pid``, in bytes."""
    import psutil

    rss: int = psutil.Process(pid).memory_info().rss
    peak = rss
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, peak
