"""A small real Forward receiver for the client's tests: a TCP server on loopback that decodes the
bytes it is sent, keeps every event, and answers acks (or misbehaves on purpose)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, List

from mona_client.forward import FrameDecoder
from mona_collector import forward_codec


class ForwardReceiver:
    """Accepts Forward connections on 127.0.0.1:<free port> in a background thread.

    ``ack=False`` never answers acks; ``read=False`` accepts connections but never reads from them
    (a stuck forwarder); ``drop_acks`` swallows that many acks (as if they were lost on the way);
    ``ack_delay`` waits that long before each ack (a slow forwarder).
    """

    def __init__(
        self, ack: bool = True, read: bool = True, drop_acks: int = 0, port: int = 0, ack_delay: float = 0.0
    ) -> None:
        self.ack = ack
        self.ack_delay = ack_delay
        self.read = read
        self.drop_acks = drop_acks
        self.batches: List[forward_codec.EventBatch] = []
        self.raw_frames: List[Any] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stopping = False
        self._clients: List[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    # --- what the tests read --------------------------------------------------------------------

    @property
    def records(self) -> List[Any]:
        with self._lock:
            return [event.record for batch in self.batches for event in batch.events]

    @property
    def events(self) -> List[forward_codec.Event]:
        with self._lock:
            return [event for batch in self.batches for event in batch.events]

    def wait_for(self, predicate: Callable[[ForwardReceiver], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.01)
        return predicate(self)

    def wait_records(self, count: int, timeout: float = 10.0) -> List[Any]:
        self.wait_for(lambda r: len(r.records) >= count, timeout)
        return self.records

    def close(self) -> None:
        self._stopping = True
        self._thread.join(2)
        for client in list(self._clients):
            try:
                client.close()
            except OSError:
                pass
        self._server.close()

    def __enter__(self) -> ForwardReceiver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- the server ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            self._clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = FrameDecoder()
        try:
            # Inside the try: close() may have closed this connection already (a receiver stopped
            # right after accepting it).
            conn.settimeout(0.2)
            while not self._stopping:
                if not self.read:
                    time.sleep(0.05)
                    continue
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                for obj in decoder.feed(data):
                    if obj is None:
                        continue
                    batch = forward_codec.parse_event_batch(obj)
                    with self._lock:
                        self.raw_frames.append(obj)
                        self.batches.append(batch)
                    if batch.chunk is not None and self.ack:
                        if self.drop_acks > 0:
                            self.drop_acks -= 1
                            continue
                        if self.ack_delay:
                            time.sleep(self.ack_delay)
                        conn.sendall(forward_codec.pack_ack(batch.chunk))
        except OSError:
            return
        finally:
            conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
