"""The sender: moves encoded entries from ``export()`` to a Forward peer (Fluentd or the collector).

Why not fluent-logger: version 0.11 sends Message mode only (one frame per record), has no acks, no TLS
and no shared-key auth, does its network I/O on the caller's thread (a stuck peer blocks the caller for
its 3 s timeout), and drops its whole buffer when the peer is down. This sender is written on msgpack
and :mod:`mona_client.forward` instead:

* ``put()`` is the only thing the caller pays for: a bounded ``deque.append`` of bytes already encoded.
  No lock, no syscall, no wake-up per record.
* A background thread (a greenlet under gevent's monkey patching) drains the queue into PackedForward
  chunks of up to ``chunk_records`` entries and never more than ``chunk_bytes`` (one record larger than
  that travels alone), each with a unique ``chunk`` id, and keeps up to ``max_inflight`` chunks on the
  wire before it waits for their acks.
* A chunk on which the peer closes the connection is sent again alone. One it refuses
  ``MAX_REFUSALS`` times waits aside while the others go on; as soon as the peer acks another chunk,
  it is set aside for good in the spool's ``dead-letter`` folder (counted in
  ``stats()["dead_lettered"]``, logged), so that one chunk the peer cannot take (a frame above its size
  cap) does not stop everything behind it. A peer that closes the connection on every chunk (a
  client certificate it wants, a broken peer) acks nothing: then nothing is set aside.
* A chunk leaves memory only when the peer acked it, or when it is safe in the disk spool.
  On a refused connection, a reset or an ack that does not come, the connection is dropped and what
  is not acked goes to the spool (without a spool: stays in memory to be sent again). Spooled chunks
  are replayed, oldest first, before anything newer. The peer drops records it already has by their
  ``record_id``, so a resend never duplicates anything.
* Socket I/O happens in short slices: between two slices the thread moves a growing queue to the
  spool, so a peer that accepts but never reads cannot make the queue overflow.
* The queue is bounded in records (``max_queue``) and in bytes (``max_queue_bytes``): past half of
  either, the thread moves the excess to the spool. When the queue is full anyway (no spool, or a
  spool that cannot keep up) the record is dropped and counted (``stats()["dropped"]``) with a rate-limited log line: the caller is never blocked.

``blocking=True`` runs the same drain on the caller's thread right after each ``put`` (for scripts and
debugging, where you'd rather wait than keep anything in memory).
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Union

from . import forward
from .logs import RateLimitedLog, logger
from .record import TAG
from .spool import Spool, SpooledChunk

__all__ = ["HandshakeError", "Sender", "SenderStats", "client_ssl_context"]

SenderStats = Dict[str, int]

#: Times the peer may close the connection on one chunk before the chunk is set aside (dead-lettered).
#: The first close may have been caused by another chunk on the same connection, so after it the chunk
#: travels alone: the later closes are its own.
MAX_REFUSALS = 3

# Failures that mean "the peer closed the connection on what we sent", as a frame above its size cap
# does; timeouts, refused connections and handshake failures are something else.
_REFUSALS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, ssl.SSLEOFError, ssl.SSLZeroReturnError)

# How long closing a TLS connection may wait to send its close_notify (a TLS shutdown).
_TLS_SHUTDOWN_TIMEOUT = 0.2

# How long one blocking socket call may last before the thread looks at its queue again.
_IO_SLICE = 0.01


class HandshakeError(ConnectionError):
    """The shared-key handshake failed: wrong key, or a server that is not who it claims."""


class _Interrupted(Exception):
    """Socket I/O given up because the sender is closing or a flush's deadline passed."""


class _Chunk:
    __slots__ = ("attempts", "chunk_id", "count", "data", "entries", "refusals", "spooled")

    def __init__(self, entries: bytes, count: int, spooled: Optional[SpooledChunk] = None) -> None:
        self.entries = entries
        self.count = count
        self.spooled = spooled
        self.chunk_id = ""
        self.data = b""
        self.attempts = 0
        self.refusals = 0  # times the peer closed the connection while this chunk was the oldest unacked


class Sender:
    """Queue, batch and deliver Forward entries to ``host:port`` with acks, reconnecting by itself."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = forward.DEFAULT_PORT,
        *,
        tag: str = TAG,
        max_queue: int = 200_000,
        max_queue_bytes: int = 64 * 1024 * 1024,
        chunk_records: int = 1000,
        chunk_bytes: int = 1024 * 1024,
        max_inflight: int = 4,
        flush_interval: float = 0.05,
        require_ack: bool = True,
        ack_timeout: float = 10.0,
        send_timeout: float = 5.0,
        connect_timeout: float = 3.0,
        max_backoff: float = 5.0,
        blocking: bool = False,
        spool: Optional[Spool] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        shared_key: Optional[str] = None,
        username: str = "",
        password: str = "",
        client_hostname: Optional[str] = None,
        connect: Optional[Callable[[], socket.socket]] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tag = tag
        self.max_queue = max_queue
        self.max_queue_bytes = max(1, max_queue_bytes)
        self.chunk_records = chunk_records
        self.chunk_bytes = max(1, chunk_bytes)
        self.max_inflight = max_inflight if require_ack else 1
        self.flush_interval = flush_interval
        self.require_ack = require_ack
        self.ack_timeout = ack_timeout
        self.send_timeout = send_timeout
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.blocking = blocking
        self.spool = spool
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or host
        self.shared_key = shared_key
        self.username = username
        self.password = password
        self.client_hostname = client_hostname or socket.gethostname()
        self._connect_hook = connect

        self._queue: Deque[bytes] = deque()
        # Bytes of the entries in _queue. Updated with one in-place add of a local integer (put) or
        # subtraction (the sender): CPython switches threads only at calls and jumps, so neither is
        # torn by the other.
        self._queued_bytes = 0
        # Waking the thread per record would cost a lock per export: it is woken once a chunk's worth
        # is queued, otherwise it looks every flush_interval.
        self._wake_at = chunk_records
        # A peer that is connected and acking, only slower than the exports, keeps the records in
        # memory up to half the queue; beyond that the excess goes to the spool, leaving the
        # rest of the queue as headroom for the moments the exporting threads hold the GIL.
        self._spill_at = max(max_queue // 2, 1)
        self._yield_at = max_queue * 3 // 4
        # The same two marks in bytes: big records reach them long before the record count does.
        self._spill_bytes_at = max(self.max_queue_bytes // 2, 1)
        self._yield_bytes_at = self.max_queue_bytes * 3 // 4
        # put() takes its fast path below this length and these bytes: the thread runs and needs no
        # wake-up yet.
        self._fast_limit = 0
        self._fast_bytes = 0
        # A flush in blocking mode gives up socket I/O at this time (monotonic).
        self._io_deadline = float("inf")
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._drain_lock = threading.RLock()
        self._thread: Optional[threading.Thread] = None
        self._closing = False

        self._sock: Optional[socket.socket] = None
        self._decoder: Optional[forward.FrameDecoder] = None
        self._inflight: Deque[_Chunk] = deque()
        self._retry: Deque[_Chunk] = deque()
        # A chunk refused MAX_REFUSALS times, waiting for the peer to ack another one (which shows
        # that the fault is this chunk's, not the peer's) before it goes to the dead-letter folder.
        self._suspect: Optional[_Chunk] = None
        self._backoff = 0.0
        self._next_attempt = 0.0

        self._log = RateLimitedLog()
        self.sent_records = 0
        self.acked_records = 0
        self.dropped_records = 0
        self.resent_chunks = 0
        self.connections = 0
        self.dead_lettered_records = 0

    # --- the caller's side ----------------------------------------------------------------------

    def put(self, entry: bytes) -> bool:
        """Queue one encoded entry. Never waits on the network (except in blocking mode).

        Returns False when the entry was dropped because the queue is full.
        """
        queue = self._queue
        size = len(entry)
        # The common case: two comparisons, the append and an integer add.
        if len(queue) < self._fast_limit and self._queued_bytes < self._fast_bytes:
            queue.append(entry)
            self._queued_bytes += size
            return True
        return self._put_slow(entry, size)

    def _put_slow(self, entry: bytes, size: int) -> bool:
        queue = self._queue
        queued = len(queue)
        full = queued >= self.max_queue or (queued and self._queued_bytes + size > self.max_queue_bytes)
        if full and not self._spill_oldest():
            self.dropped_records += 1
            self._log.log(
                logging.WARNING,
                "queue-full",
                "mona-client queue is full (%d records or %d bytes max): dropping exports until the "
                "forwarder at %s:%d catches up",
                self.max_queue,
                self.max_queue_bytes,
                self.host,
                self.port,
            )
            return False
        queue.append(entry)
        self._queued_bytes += size
        if self.blocking:
            self.drain_now()
        elif self._thread is None:
            self._start()
        elif not self._wake.is_set():
            self._wake.set()
        if (queued > self._yield_at or self._queued_bytes > self._yield_bytes_at) and self.spool is not None:
            # Near the bound: hand the GIL to the sender thread so that it can move the excess to the
            # spool. A yield, not a wait on the network; without it a thread that exports faster than
            # the disk takes records would fill the queue and lose exports.
            time.sleep(0)
        return True

    def _spill_oldest(self) -> bool:
        """The queue is full: move its oldest chunk to the spool on the caller's thread; True if done.

        The sender thread spills past half the queue, but a caller that exports faster than that
        thread writes to disk reaches the bound anyway. Then the caller pays for one file (the disk,
        never the network) rather than lose the record.
        """
        spool = self.spool
        if spool is None:
            return False
        chunk = self._take_from_queue(max_bytes=self.chunk_bytes)
        if chunk is None:
            return False
        spool.write(chunk.entries, chunk.count)  # when it cannot, those records are counted as dropped
        return True

    def replay_spool(self) -> None:
        """Start sending at once when the spool holds records (left by this or an earlier process)."""
        if self._spool_has_files() and not self.blocking:
            self._start()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued record was acked (or sent, without acks). True when it got there.

        Records in the spool count as not delivered yet: they are replayed when the peer is back.
        """
        if self.spool is not None:
            self.spool.rescan()  # what other processes (children that ended) left counts too
        if self.blocking:
            self._io_deadline = float("inf") if timeout is None else time.monotonic() + timeout
            try:
                self.drain_now()
            finally:
                self._io_deadline = float("inf")
            return self.pending() == 0
        if self._thread is None and not self._queue and not self._spool_has_files():
            return True
        if self._thread is None:
            self._start()
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
        """Flush within ``timeout``, spool what is left, stop. True when everything was delivered."""
        delivered = self.flush(timeout)
        self._closing = True  # also makes the thread give up the socket I/O it is in
        self._fast_limit = 0
        self._fast_bytes = 0
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.send_timeout + 1)
        with self._drain_lock:
            self._disconnect()
            self.spill(everything=True)
        return delivered

    def pending(self) -> int:
        """Records not yet acked: queued, in flight, waiting to be resent, or in the spool."""
        return self._in_memory() + (self.spool.pending_records() if self.spool is not None else 0)

    def _in_memory(self) -> int:
        """Records in memory: queued, in flight, waiting to be resent or waiting aside."""
        in_memory = len(self._queue) + sum(c.count for c in self._inflight) + sum(c.count for c in self._retry)
        suspect = self._suspect
        return in_memory + (suspect.count if suspect is not None else 0)

    def stats(self) -> SenderStats:
        spool = self.spool
        return {
            "queued": len(self._queue),
            "queued_bytes": self._queued_bytes,
            "inflight": self._in_memory() - len(self._queue),
            "sent": self.sent_records,
            "acked": self.acked_records,
            "spooled": spool.spooled_records if spool else 0,
            "replayed": spool.replayed_records if spool else 0,
            "dropped": self.dropped_records + (spool.dropped_records if spool else 0),
            "resent_chunks": self.resent_chunks,
            "connections": self.connections,
            "dead_lettered": self.dead_lettered_records,
        }

    # --- the sender's side ----------------------------------------------------------------------

    def _start(self) -> None:
        with self._drain_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="mona-sender", daemon=True)
            self._thread.start()
            if not self.blocking:
                self._fast_limit = min(self._wake_at, self.max_queue)
                self._fast_bytes = min(self.chunk_bytes, self._spill_bytes_at)

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.drain_now()
            except Exception:
                logger.exception("mona-client sender failed; it goes on")
                with self._drain_lock:
                    self._disconnect()
            if self.pending() == 0:
                self._idle.set()

    def drain_now(self) -> None:
        """Send what is queued and collect acks until the queue is empty or the peer is unusable."""
        with self._drain_lock:
            while not self._closing or self.blocking:
                if time.monotonic() < self._next_attempt:
                    self.spill()  # the peer is away: keep memory small and records safe
                    return
                if not self._has_work():
                    return
                if self._sock is None and not self._connect():
                    return
                try:
                    self._pump()
                except _Interrupted:
                    self._disconnect()  # what is unacked waits to be resent or spooled
                    return
                except (OSError, forward.ForwardProtocolError) as exc:
                    refused = self._note_refusal(exc)
                    self._fail(f"{type(exc).__name__}: {exc}")
                    if refused is not None:
                        self._hold_suspect(refused)
                    return
                if not self._has_work():
                    self._backoff = 0.0
                    return

    def _has_work(self) -> bool:
        return bool(self._retry or self._queue or self._inflight or self._spool_has_files())

    def _spool_has_files(self) -> bool:
        return self.spool is not None and self.spool.pending_records() > 0

    def _pump(self) -> None:
        """Fill the window with chunks, then wait for the oldest ack (raises on any failure)."""
        while len(self._inflight) < self.max_inflight:
            if self._inflight and self._inflight[-1].refusals:
                break  # a chunk the peer closed the connection on travels alone
            chunk = self._next_chunk()
            if chunk is None:
                break
            if chunk.refusals and self._inflight:
                self._retry.appendleft(chunk)  # its turn comes when the window is empty
                break
            if chunk.attempts:
                self.resent_chunks += 1
            chunk.attempts += 1
            self._frame(chunk)
            self._inflight.append(chunk)
            self._send(chunk.data)
            self.sent_records += chunk.count
            if not self.require_ack:
                self._inflight.popleft()
                self._acked(chunk)
        if self._inflight:
            self._await_acks()

    def _next_chunk(self) -> Optional[_Chunk]:
        """Oldest first: chunks to resend, then the spool, then the queue."""
        if self._retry:
            return self._retry.popleft()
        if self.spool is not None:
            spooled = self.spool.claim_next()
            if spooled is not None:
                return _Chunk(spooled.entries, spooled.count, spooled)
        return self._take_from_queue()

    def _take_from_queue(self, limit: Optional[int] = None, max_bytes: Optional[int] = None) -> Optional[_Chunk]:
        queue = self._queue
        if not queue:
            return None
        entries: List[bytes] = []
        size = 0
        max_bytes = self.chunk_bytes if max_bytes is None else max_bytes
        # A long queue goes in bigger chunks (up to chunk_bytes): fewer round trips and spool files,
        # and fewer waits for the GIL when the exporting threads keep it busy.
        records = max(self.chunk_records, len(queue) // self.max_inflight)
        if limit is not None:
            records = min(records, limit)
        # The caller's thread may take from the queue too (_spill_oldest): deque operations are atomic,
        # and whatever one of the two pops is that one's to send or spool.
        while queue and len(entries) < records:
            try:
                if entries and size + len(queue[0]) > max_bytes:
                    break  # never above the cap, except a single record larger than it: it goes alone
                entry = queue.popleft()
            except IndexError:
                break
            entries.append(entry)
            size += len(entry)
        if not entries:
            return None
        self._queued_bytes -= size
        return _Chunk(b"".join(entries), len(entries))

    def _frame(self, chunk: _Chunk) -> None:
        # A fresh chunk id per attempt: an ack that arrives late for an earlier attempt is ignored.
        chunk.chunk_id = forward.new_chunk_id() if self.require_ack else ""
        chunk.data = forward.pack_packed_forward(self.tag, chunk.entries, chunk.count, chunk.chunk_id or None)

    def _note_refusal(self, exc: BaseException) -> Optional[_Chunk]:
        """Count a connection the peer closed against the oldest unacked chunk.

        Returns that chunk, taken out of the window, once it was refused ``MAX_REFUSALS`` times.
        """
        if not isinstance(exc, _REFUSALS) or not self._inflight:
            return None
        chunk = self._inflight[0]
        chunk.refusals += 1
        if chunk.refusals < MAX_REFUSALS:
            return None
        self._inflight.popleft()
        return chunk

    def _dead_letter(self, chunk: _Chunk) -> None:
        """Set aside a chunk the peer keeps refusing, so that what follows it is delivered."""
        self.dead_lettered_records += chunk.count
        where = "dropped (no spool to keep it in)"
        if self.spool is not None:
            path = self.spool.dead_letter(chunk.entries, chunk.count, chunk.spooled)
            where = f"set aside in {path}" if path is not None else "dropped (it could not be written)"
        self._log.log(
            logging.ERROR,
            "dead-letter",
            "mona-client: %s:%d closed the connection %d times on a chunk of %d records (%d bytes; its "
            "size cap may be lower): %s; the records behind it go on",
            self.host,
            self.port,
            MAX_REFUSALS,
            chunk.count,
            len(chunk.entries),
            where,
        )

    def _check_interrupt(self) -> None:
        """Between two I/O slices: give up when closing, or when a blocking flush ran out of time."""
        if self._closing and not self.blocking:
            raise _Interrupted()
        if time.monotonic() > self._io_deadline:
            raise _Interrupted()

    def _hold_suspect(self, chunk: _Chunk) -> None:
        """Keep a chunk refused MAX_REFUSALS times aside until the peer shows it takes other chunks."""
        if self._suspect is None:
            self._suspect = chunk
            return
        # A second chunk refused as often while the first waits: the peer refuses everything, the
        # chunks are not to blame. Both go back in line, oldest first, with their counts cleared.
        first, self._suspect = self._suspect, None
        first.refusals = chunk.refusals = 0
        self._retry.extendleft((chunk, first))

    def _acked(self, chunk: _Chunk) -> None:
        self.acked_records += chunk.count
        if chunk.spooled is not None and self.spool is not None:
            self.spool.done(chunk.spooled)
        suspect = self._suspect
        if suspect is not None:  # the peer takes other chunks: the one it refuses is at fault
            self._suspect = None
            self._dead_letter(suspect)

    def _send(self, data: bytes) -> None:
        """sendall in slices, spilling a growing queue between them; raises after send_timeout."""
        assert self._sock is not None
        view = memoryview(data)
        deadline = time.monotonic() + self.send_timeout
        while view:
            try:
                sent = self._sock.send(view)
            except _SLICE_ENDED:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the peer took nothing for {self.send_timeout:g}s") from None
                self._check_interrupt()
                self._spill_if_lagging()
                continue
            view = view[sent:]

    def _await_acks(self) -> None:
        """Read until the oldest in-flight chunk is acked (acks of later ones are taken as they come)."""
        assert self._sock is not None and self._decoder is not None
        deadline = time.monotonic() + self.ack_timeout
        oldest = self._inflight[0]
        while self._inflight and self._inflight[0] is oldest:
            try:
                data = self._sock.recv(65536)
            except _SLICE_ENDED:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no ack within {self.ack_timeout:g}s") from None
                self._check_interrupt()
                self._spill_if_lagging()
                continue
            if not data:
                raise ConnectionResetError("the peer closed the connection")
            for obj in self._decoder.feed(data):
                self._on_ack(obj)

    def _on_ack(self, obj: Any) -> None:
        if isinstance(obj, list) and obj[:1] == ["HELO"]:
            raise HandshakeError("the server requires shared-key authentication (set MONA_SHARED_KEY)")
        if not isinstance(obj, dict) or "ack" not in obj:
            raise forward.ForwardProtocolError(f"unexpected answer from the peer: {obj!r:.100}")
        ack = obj["ack"]
        for i, chunk in enumerate(self._inflight):
            if chunk.chunk_id == ack:
                del self._inflight[i]
                self._acked(chunk)
                return
        logger.debug("mona-client got an ack for an unknown chunk %r", ack)

    # --- the spool ------------------------------------------------------------------------------

    def _spill_if_lagging(self) -> None:
        if self.spool is not None and (len(self._queue) > self._spill_at or self._queued_bytes > self._spill_bytes_at):
            self.spill(keep=self._spill_at, keep_bytes=self._spill_bytes_at)

    def spill(self, keep: int = 0, everything: bool = False, keep_bytes: int = 0) -> None:
        """Move records from memory to the spool, oldest first, keeping ``keep`` records and at most
        ``keep_bytes`` queued (``keep_bytes`` is only looked at when ``keep`` is given).

        With ``everything`` (at close) chunks waiting to be resent go too, and claimed spool files are
        given back. Without a spool nothing moves.
        """
        spool = self.spool
        if spool is None:
            return
        with self._drain_lock:
            if everything:
                self._disconnect()
            if everything and self._suspect is not None:
                self._retry.appendleft(self._suspect)  # leaves memory now; the next process tries again
                self._suspect = None
            kept: List[_Chunk] = []
            while self._retry and (everything or self._sock is None):
                chunk = self._retry.popleft()
                if chunk.refusals and not everything:
                    kept.append(chunk)  # stays in memory: its count of refusals must not be lost
                elif chunk.spooled is not None:
                    spool.release(chunk.spooled)
                else:
                    spool.write(chunk.entries, chunk.count)
            self._retry.extendleft(reversed(kept))
            # What is queued now, not what arrives meanwhile: a caller faster than the disk must not
            # keep this loop (and the sender) busy for ever.
            budget = len(self._queue)
            keep_bytes = keep_bytes if keep else 0
            while budget > 0 and (len(self._queue) > keep or self._queued_bytes > keep_bytes):
                # Files as big as a chunk (a file is replayed as one chunk): each file costs a few
                # system calls, and each call a wait for the GIL.
                taken = self._take_from_queue(limit=budget, max_bytes=self.chunk_bytes)
                if taken is None:
                    break
                budget -= taken.count
                spool.write(taken.entries, taken.count)

    # --- connections ----------------------------------------------------------------------------

    def _connect(self) -> bool:
        try:
            sock = self._open_socket()
        except (OSError, forward.ForwardProtocolError) as exc:
            self._fail(f"cannot connect: {exc}")
            return False
        _slice_io(sock)
        self._sock = sock
        self._decoder = forward.FrameDecoder(64 * 1024)
        self.connections += 1
        if self.connections > 1:
            logger.info("mona-client connected again to %s:%d", self.host, self.port)
        return True

    def _open_socket(self) -> socket.socket:
        if self._connect_hook is not None:
            return self._connect_hook()
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.server_hostname)
            if self.shared_key is not None:
                self._handshake(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def _handshake(self, sock: socket.socket) -> None:
        """The Forward protocol's HELO / PING / PONG exchange (shared-key authentication)."""
        decoder = forward.FrameDecoder(64 * 1024)
        sock.settimeout(self.connect_timeout)
        received: Deque[Any] = deque()

        def receive() -> Any:
            while not received:
                data = sock.recv(65536)
                if not data:
                    raise HandshakeError("the server closed the connection during the handshake")
                received.extend(decoder.feed(data))
            return received.popleft()

        helo = receive()
        if not (isinstance(helo, list) and len(helo) == 2 and helo[0] == "HELO" and isinstance(helo[1], dict)):
            raise HandshakeError(f"expected HELO, got a {type(helo).__name__}")
        nonce = helo[1].get("nonce", b"")
        auth_salt = helo[1].get("auth", b"")
        if not isinstance(nonce, (bytes, str)) or not isinstance(auth_salt, (bytes, str)):
            raise HandshakeError("the server's HELO carries a nonce or auth salt that is not bytes")
        nonce, auth_salt = _as_bytes(nonce), _as_bytes(auth_salt)
        assert self.shared_key is not None
        ping, salt = forward.pack_ping(
            self.client_hostname, self.shared_key, nonce, auth_salt, self.username, self.password
        )
        sock.sendall(ping)
        pong = receive()
        if not (isinstance(pong, list) and len(pong) == 5 and pong[0] == "PONG"):
            raise HandshakeError(f"expected PONG, got a {type(pong).__name__}")
        _, ok, reason, server_hostname, digest = pong
        if not ok:
            raise HandshakeError(f"the server refused the shared key: {reason}")
        if server_hostname == self.client_hostname:
            raise HandshakeError("the server claims this client's own hostname")
        expected = forward.shared_key_digest(salt, server_hostname, nonce, self.shared_key)
        if digest != expected:
            raise HandshakeError("the server does not know the shared key")

    def _fail(self, reason: str) -> None:
        """Drop the connection, keep or spool unacked chunks, and back off before the next try."""
        self._disconnect()
        self.spill()
        self._backoff = min(self.max_backoff, max(0.1, self._backoff * 2))
        self._next_attempt = time.monotonic() + self._backoff
        self._log.log(
            logging.WARNING,
            "send-failed",
            "mona-client cannot deliver to %s:%d (%s); records wait%s, next try in %.1fs",
            self.host,
            self.port,
            reason,
            f" in the spool {self.spool.directory}" if self.spool is not None else " in memory",
            self._backoff,
        )

    def _disconnect(self) -> None:
        if self._inflight:
            self._retry.extendleft(reversed(self._inflight))
            self._inflight.clear()
        if self._sock is not None:
            _close_socket(self._sock)
        self._sock = None
        self._decoder = None


def _close_socket(sock: socket.socket) -> None:
    """Close a connection; a TLS one first says so with a close_notify (a peer such as Fluentd
    warns about every TLS connection that ends without one). Waits at most _TLS_SHUTDOWN_TIMEOUT."""
    if isinstance(sock, ssl.SSLSocket):
        try:
            sock.settimeout(_TLS_SHUTDOWN_TIMEOUT)
            sock.unwrap()
        except (OSError, ValueError):
            pass  # a peer that is gone or does not answer: the socket is closed anyway
    try:
        sock.close()
    except OSError:
        pass


# What a socket call says when its I/O slice ended with nothing done.
_SLICE_ENDED = (socket.timeout, BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def _slice_io(sock: socket.socket) -> None:
    """Make each send and recv return after at most ``_IO_SLICE`` seconds.

    On Linux the kernel's own socket timeouts do it in one system call per send or recv. Python's
    ``settimeout`` polls first, and each of those two calls releases the GIL and waits to get it back
    (up to the 5 ms switch interval while exporting threads run), which halves what the sender moves.
    Cooperative sockets (gevent's) keep ``settimeout``: their waits go through the hub.
    """
    cooperative = not type(sock).__module__.startswith(("socket", "ssl"))
    if sys.platform.startswith("linux") and not cooperative:
        slice_time = struct.pack("ll", 0, int(_IO_SLICE * 1_000_000))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, slice_time)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, slice_time)
            sock.settimeout(None)
            return
        except OSError:
            pass
    sock.settimeout(_IO_SLICE)


def _as_bytes(value: Union[str, bytes]) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return value


def client_ssl_context(
    ca_file: Optional[str] = None,
    cert_file: Optional[str] = None,
    key_file: Optional[str] = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """A TLS client context: the system store (or ``ca_file``), TLS 1.2 or 1.3, optional client cert."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
