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
  spool that cannot keep up) the record is dropped and counted (``stats()["dropped"]``) with a
  rate-limited log line: the caller is never blocked.

``blocking=True`` runs the same drain on the caller's thread right after each ``put`` (for scripts and
debugging, where you'd rather wait than keep anything in memory).

The sender is three parts: its options (:class:`~mona_client.sender_options.SenderOptions`), what it
holds and decides without sockets or threads (:class:`~mona_client.batching.Batcher`), the wire
(:class:`~mona_client.connection.ForwardConnection`, seen through the small :class:`Transport`
interface), and this module's :class:`Sender`, the worker that ties them: its thread, retries and
backoff, flush and close, stats.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, Iterator, Optional, Protocol

from . import forward
from .batching import MAX_REFUSALS, Batcher
from .connection import ForwardConnection, HandshakeError, is_refusal
from .logs import RateLimitedLog, logger
from .sender_options import SenderOptions, client_ssl_context
from .spool import Spool

__all__ = [
    "MAX_REFUSALS",
    "HandshakeError",
    "Sender",
    "SenderOptions",
    "SenderStats",
    "Transport",
    "client_ssl_context",
]

SenderStats = Dict[str, int]


class Transport(Protocol):
    """What the worker needs of a connection (:class:`~mona_client.connection.ForwardConnection`).

    Each call raises ``OSError`` or :class:`~mona_client.forward.ForwardProtocolError` on any failure
    and calls ``between_slices`` at least every few milliseconds while it waits on the peer.
    """

    def send_chunk(self, entries: bytes, count: int, between_slices: Callable[[], None]) -> str:
        """Send one chunk; returns the id its ack will carry ("" without acks)."""

    def receive_acks(self, deadline: float, between_slices: Callable[[], None]) -> Iterator[str]:
        """Read once (until ``deadline``, monotonic) and yield the chunk ids acked."""

    def close(self) -> None:
        """Close the connection; never raises."""


class _IOInterruptedError(Exception):
    """Socket I/O given up because the sender is closing or a flush's deadline passed."""


class Sender:
    """Queue, batch and deliver Forward entries to ``options.host:port`` with acks, reconnecting by itself.

    ``put(entry)`` queues one encoded entry and returns False when it was dropped because the queue is
    full; it never waits on the network (except in blocking mode). ``open_transport`` makes each new
    connection (default: :meth:`ForwardConnection.open` with :attr:`options`).
    """

    #: The batcher's own method: put() is on the path of every export, a wrapper would add a call.
    put: Callable[[bytes], bool]

    def __init__(
        self,
        options: SenderOptions,
        spool: Optional[Spool] = None,
        open_transport: Optional[Callable[[], Transport]] = None,
    ) -> None:
        self.options = options
        self.spool = spool
        self.batcher = Batcher(options, spool, self._after_slow_put)
        self.put = self.batcher.put
        self._open_transport: Callable[[], Transport] = open_transport or self._open_forward_connection
        self._transport: Optional[Transport] = None

        # A flush in blocking mode gives up socket I/O at this time (monotonic).
        self._io_deadline = float("inf")
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._drain_lock = threading.RLock()
        self._thread: Optional[threading.Thread] = None
        self._closing = False
        self._backoff = 0.0
        self._next_attempt = 0.0

        self._log = RateLimitedLog()
        self.sent_records = 0
        self.resent_chunks = 0
        self.connections = 0

    # --- the caller's side ----------------------------------------------------------------------

    def _after_slow_put(self) -> None:
        """A put that left the fast path: deliver now (blocking), or start or wake the thread."""
        if self.options.blocking:
            self.drain_now()
        elif self._thread is None:
            self._start()
        else:
            # Waking the thread per record would cost a lock per export: it is woken once a chunk's
            # worth is queued, otherwise it looks every flush_interval. Marked before the wake-up,
            # so that the mark never outlives a wake-up the worker has already taken.
            self.batcher.worker_woken = True
            if not self._wake.is_set():
                self._wake.set()

    def replay_spool(self) -> None:
        """Start sending at once when the spool holds records (left by this or an earlier process)."""
        if self.batcher.spooled_records() > 0 and not self.options.blocking:
            self._start()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued record was acked (or sent, without acks). True when it got there.

        Records in the spool count as not delivered yet: they are replayed when the peer is back.
        """
        if self.spool is not None:
            self.spool.rescan()  # what other processes (children that ended) left counts too
        if self.options.blocking:
            self._io_deadline = float("inf") if timeout is None else time.monotonic() + timeout
            try:
                self.drain_now()
            finally:
                self._io_deadline = float("inf")
            return self.pending() == 0
        if self._thread is None and not self.batcher.queue and self.batcher.spooled_records() == 0:
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
        self.batcher.close_fast_path()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.options.send_timeout + 1)
        self.spill(everything=True)
        return delivered

    def spill(self, everything: bool = False) -> None:
        """Move what memory holds to the spool (at close and on SIGTERM: ``everything``, chunks on the
        wire and waiting aside too, after dropping the connection). Without a spool nothing moves."""
        with self._drain_lock:
            if everything:
                self._disconnect()
            self.batcher.spill(everything=everything, connected=self._transport is not None)

    def pending(self) -> int:
        """Records not yet acked: queued, in flight, waiting to be resent, or in the spool."""
        return self.batcher.in_memory() + self.batcher.spooled_records()

    def stats(self) -> SenderStats:
        batcher = self.batcher
        spool = self.spool
        return {
            "queued": len(batcher.queue),
            "queued_bytes": batcher.queued_bytes,
            "inflight": batcher.in_memory() - len(batcher.queue),
            "sent": self.sent_records,
            "acked": batcher.acked_records,
            "spooled": spool.spooled_records if spool else 0,
            "replayed": spool.replayed_records if spool else 0,
            "dropped": batcher.dropped_records + (spool.dropped_records if spool else 0),
            "resent_chunks": self.resent_chunks,
            "connections": self.connections,
            "dead_lettered": batcher.dead_lettered_records,
        }

    # --- the sender's side ----------------------------------------------------------------------

    def _start(self) -> None:
        with self._drain_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="mona-sender", daemon=True)
            self._thread.start()
            if not self.options.blocking:
                self.batcher.open_fast_path()

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self.options.flush_interval)
            self._wake.clear()
            self.batcher.worker_woken = False  # after the clear: a later put wakes the worker again
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
        batcher = self.batcher
        with self._drain_lock:
            while not self._closing or self.options.blocking:
                if time.monotonic() < self._next_attempt:
                    self.spill()  # the peer is away: keep memory small and records safe
                    return
                if not batcher.has_work():
                    return
                if self._transport is None and not self._connect():
                    return
                try:
                    self._pump()
                except _IOInterruptedError:
                    self._disconnect()  # what is unacked waits to be resent or spooled
                    return
                except (OSError, forward.ForwardProtocolError) as exc:
                    refused = batcher.note_refusal() if is_refusal(exc) else None
                    self._fail(f"{type(exc).__name__}: {exc}")
                    if refused is not None:
                        batcher.hold_suspect(refused)
                    return
                if not batcher.has_work():
                    self._backoff = 0.0
                    return

    def _pump(self) -> None:
        """Fill the window with chunks, then wait for the oldest ack (raises on any failure)."""
        batcher = self.batcher
        transport = self._transport
        assert transport is not None
        while True:
            chunk = batcher.next_to_send()
            if chunk is None:
                break
            if chunk.attempts:
                self.resent_chunks += 1
            chunk.attempts += 1
            chunk.chunk_id = transport.send_chunk(chunk.entries, chunk.count, self._between_slices)
            self.sent_records += chunk.count
            if not self.options.require_ack:
                batcher.inflight.popleft()
                batcher.delivered(chunk)
        if batcher.inflight:
            self._await_acks(transport)

    def _await_acks(self, transport: Transport) -> None:
        """Read until the oldest in-flight chunk is acked (acks of later ones are taken as they come)."""
        inflight = self.batcher.inflight
        deadline = time.monotonic() + self.options.ack_timeout
        oldest = inflight[0]
        while inflight and inflight[0] is oldest:
            for chunk_id in transport.receive_acks(deadline, self._between_slices):
                if not self.batcher.ack(chunk_id):
                    logger.debug("mona-client got an ack for an unknown chunk %r", chunk_id)

    def _between_slices(self) -> None:
        """Between two I/O slices: give up when closing or past a blocking flush's deadline; move a
        growing queue to the spool, so a peer that accepts but never reads cannot make it overflow."""
        if self._closing and not self.options.blocking:
            raise _IOInterruptedError()
        if time.monotonic() > self._io_deadline:
            raise _IOInterruptedError()
        self.batcher.spill_excess()

    # --- connections ----------------------------------------------------------------------------

    def _open_forward_connection(self) -> Transport:
        """The default transport. It reads ``self.options`` at each connection: options replaced
        meanwhile (a new shared key) hold from the next connection on."""
        return ForwardConnection.open(self.options)

    def _connect(self) -> bool:
        try:
            self._transport = self._open_transport()
        except (OSError, forward.ForwardProtocolError) as exc:
            self._fail(f"cannot connect: {exc}")
            return False
        self.connections += 1
        if self.connections > 1:
            logger.info("mona-client connected again to %s:%d", self.options.host, self.options.port)
        return True

    def _fail(self, reason: str) -> None:
        """Drop the connection, keep or spool unacked chunks, and back off before the next try."""
        self._disconnect()
        self.spill()
        self._backoff = min(self.options.max_backoff, max(0.1, self._backoff * 2))
        self._next_attempt = time.monotonic() + self._backoff
        self._log.log(
            logging.WARNING,
            "send-failed",
            "mona-client cannot deliver to %s:%d (%s); records wait%s, next try in %.1fs",
            self.options.host,
            self.options.port,
            reason,
            f" in the spool {self.spool.directory}" if self.spool is not None else " in memory",
            self._backoff,
        )

    def _disconnect(self) -> None:
        self.batcher.requeue_inflight()
        if self._transport is not None:
            self._transport.close()
        self._transport = None
