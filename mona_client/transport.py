"""The sender: moves encoded entries from ``export()`` to a Forward peer (Fluentd or the collector).

Why not fluent-logger: version 0.11 sends Message mode only (one frame per record), has no acks, no TLS
and no shared-key auth, does its network I/O on the caller's thread (a stuck peer blocks the caller for
its 3 s timeout), and drops its whole buffer when the peer is down. This sender is written on msgpack
and :mod:`mona_client.forward` instead:

* ``put()`` is the only thing the caller pays for: a bounded ``deque.append`` of bytes already encoded.
  No lock, no syscall, no wake-up per record.
* A background thread (a greenlet under gevent's monkey patching) drains the queue into PackedForward
  chunks of up to ``chunk_records`` entries, each with a unique ``chunk`` id, and keeps up to
  ``max_inflight`` chunks on the wire before it waits for their acks.
* A chunk leaves memory only when the peer acked it. On a refused connection, a reset or an ack that
  does not come, the connection is dropped, and the unacked chunks are sent again, in order, after a
  backoff. The peer drops records it already has by their ``record_id``.
* When the queue is full the record is dropped and counted (``stats()["dropped"]``) with a
  rate-limited log line: the caller is never blocked.

``blocking=True`` runs the same drain on the caller's thread right after each ``put`` (for scripts and
debugging, where you'd rather wait than keep anything in memory).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

from . import forward
from .logs import RateLimitedLog, logger
from .record import TAG

__all__ = ["Sender", "SenderStats"]

SenderStats = Dict[str, int]


class _Chunk:
    __slots__ = ("chunk_id", "data", "count", "attempts")

    def __init__(self, chunk_id: str, data: bytes, count: int) -> None:
        self.chunk_id = chunk_id
        self.data = data
        self.count = count
        self.attempts = 0


class Sender:
    """Queue, batch and deliver Forward entries to ``host:port`` with acks, reconnecting by itself."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = forward.DEFAULT_PORT,
        *,
        tag: str = TAG,
        max_queue: int = 200_000,
        chunk_records: int = 1000,
        chunk_bytes: int = 1024 * 1024,
        max_inflight: int = 4,
        flush_interval: float = 0.05,
        require_ack: bool = True,
        ack_timeout: float = 10.0,
        connect_timeout: float = 3.0,
        max_backoff: float = 5.0,
        blocking: bool = False,
        connect: Optional[Callable[[], socket.socket]] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tag = tag
        self.max_queue = max_queue
        self.chunk_records = chunk_records
        self.chunk_bytes = chunk_bytes
        self.max_inflight = max_inflight if require_ack else 1
        self.flush_interval = flush_interval
        self.require_ack = require_ack
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.blocking = blocking
        self._connect_hook = connect

        self._queue: Deque[bytes] = deque()
        # Waking the thread per record would cost a lock per export: wake it once a chunk is full,
        # otherwise it looks every flush_interval.
        self._wake_at = chunk_records
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._drain_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._closing = False

        self._sock: Optional[socket.socket] = None
        self._decoder: Optional[forward.FrameDecoder] = None
        self._inflight: Deque[_Chunk] = deque()
        self._retry: Deque[_Chunk] = deque()
        self._backoff = 0.0
        self._next_attempt = 0.0

        self._log = RateLimitedLog()
        self.sent_records = 0
        self.acked_records = 0
        self.dropped_records = 0
        self.resent_chunks = 0
        self.connections = 0

    # --- the caller's side ----------------------------------------------------------------------

    def put(self, entry: bytes) -> bool:
        """Queue one encoded entry. Never blocks (except in blocking mode); False when it was dropped."""
        queue = self._queue
        if len(queue) >= self.max_queue:
            self.dropped_records += 1
            self._log.log(
                logging.WARNING,
                "queue-full",
                "mona-client queue is full (%d records): dropping exports until the forwarder at "
                "%s:%d catches up",
                self.max_queue,
                self.host,
                self.port,
            )
            return False
        queue.append(entry)
        if self.blocking:
            self.drain_now()
        elif self._thread is None:
            self._start()
        elif len(queue) == self._wake_at:
            self._wake.set()
        return True

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued record was acked (or sent, without acks). True when it got there."""
        if self.blocking:
            self.drain_now()
            return self.pending() == 0
        if self._thread is None:
            return not self._queue
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._idle.clear()
            self._wake.set()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._idle.wait(remaining) and self.pending() == 0:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return self.pending() == 0

    def close(self, timeout: Optional[float] = None) -> bool:
        """Flush within ``timeout``, then stop the thread and the connection. True when nothing is left."""
        delivered = self.flush(timeout)
        self._closing = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        with self._drain_lock:
            self._disconnect()
        return delivered

    def pending(self) -> int:
        """Records not yet acked: queued, in flight or waiting to be resent."""
        return (
            len(self._queue)
            + sum(c.count for c in self._inflight)
            + sum(c.count for c in self._retry)
        )

    def stats(self) -> SenderStats:
        return {
            "queued": len(self._queue),
            "inflight": sum(c.count for c in self._inflight) + sum(c.count for c in self._retry),
            "sent": self.sent_records,
            "acked": self.acked_records,
            "dropped": self.dropped_records,
            "resent_chunks": self.resent_chunks,
            "connections": self.connections,
        }

    # --- the sender's side ----------------------------------------------------------------------

    def _start(self) -> None:
        with self._drain_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="mona-sender", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.drain_now()
            except Exception:  # noqa: BLE001 - the sender must outlive any surprise
                logger.exception("mona-client sender failed; it goes on")
                self._disconnect()
            if self.pending() == 0:
                self._idle.set()
            if self._closing:
                return

    def drain_now(self) -> None:
        """Send what is queued and collect acks until the queue is empty or the peer is unusable."""
        with self._drain_lock:
            while True:
                if time.monotonic() < self._next_attempt:
                    return
                if not self._retry and not self._queue and not self._inflight:
                    return
                if self._sock is None and not self._connect():
                    return
                try:
                    self._pump()
                except (OSError, forward.ForwardProtocolError) as exc:
                    self._fail(f"{type(exc).__name__}: {exc}")
                    return
                if not self._inflight and not self._retry and not self._queue:
                    self._backoff = 0.0
                    return

    def _pump(self) -> None:
        """Fill the window with chunks, then wait for the oldest ack (raises on any failure)."""
        while len(self._inflight) < self.max_inflight:
            chunk = self._retry.popleft() if self._retry else self._take_chunk()
            if chunk is None:
                break
            if chunk.attempts:
                self.resent_chunks += 1
            chunk.attempts += 1
            self._inflight.append(chunk)
            assert self._sock is not None
            self._sock.sendall(chunk.data)
            self.sent_records += chunk.count
            if not self.require_ack:
                self._inflight.popleft()
                self.acked_records += chunk.count
        if self._inflight:
            self._await_acks()

    def _take_chunk(self) -> Optional[_Chunk]:
        queue = self._queue
        if not queue:
            return None
        entries: List[bytes] = []
        size = 0
        limit_records = self.chunk_records
        limit_bytes = self.chunk_bytes
        while queue and len(entries) < limit_records and size < limit_bytes:
            entry = queue.popleft()
            entries.append(entry)
            size += len(entry)
        chunk_id = forward.new_chunk_id() if self.require_ack else None
        data = forward.pack_packed_forward(self.tag, b"".join(entries), len(entries), chunk_id)
        return _Chunk(chunk_id or "", data, len(entries))

    def _await_acks(self) -> None:
        """Read until the oldest in-flight chunk is acked (acks of later ones are taken as they come)."""
        assert self._sock is not None and self._decoder is not None
        deadline = time.monotonic() + self.ack_timeout
        oldest = self._inflight[0]
        while self._inflight and self._inflight[0] is oldest:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no ack within {self.ack_timeout:g}s")
            self._sock.settimeout(remaining)
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionResetError("the peer closed the connection")
            for obj in self._decoder.feed(data):
                self._on_ack(obj)

    def _on_ack(self, obj: Any) -> None:
        if not isinstance(obj, dict) or "ack" not in obj:
            raise forward.ForwardProtocolError(f"unexpected answer from the peer: {obj!r:.100}")
        ack = obj["ack"]
        for i, chunk in enumerate(self._inflight):
            if chunk.chunk_id == ack:
                del self._inflight[i]
                self.acked_records += chunk.count
                return
        logger.debug("mona-client got an ack for an unknown chunk %r", ack)

    def _connect(self) -> bool:
        try:
            if self._connect_hook is not None:
                sock = self._connect_hook()
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            self._fail(f"cannot connect: {exc}")
            return False
        sock.settimeout(self.ack_timeout)
        self._sock = sock
        self._decoder = forward.FrameDecoder(64 * 1024)
        self.connections += 1
        if self.connections > 1:
            logger.info("mona-client reconnected to %s:%d", self.host, self.port)
        return True

    def _fail(self, reason: str) -> None:
        """Drop the connection, put unacked chunks back in front, and back off before the next try."""
        self._disconnect()
        self._backoff = min(self.max_backoff, max(0.1, self._backoff * 2))
        self._next_attempt = time.monotonic() + self._backoff
        self._log.log(
            logging.WARNING,
            "send-failed",
            "mona-client cannot deliver to %s:%d (%s); %d records wait, next try in %.1fs",
            self.host,
            self.port,
            reason,
            self.pending(),
            self._backoff,
        )

    def _disconnect(self) -> None:
        if self._inflight:
            self._retry.extendleft(reversed(self._inflight))
            self._inflight.clear()
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._decoder = None

