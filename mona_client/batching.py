"""What the sender holds and what it decides about it, without sockets and without threads.

:class:`Batcher` keeps the records on their way: the queue ``put()`` appends to, the chunks on the
wire (the window), the chunks to send again, and a chunk the peer keeps refusing. It decides how
records are cut into chunks, what goes to the disk spool and when (past half of the queue's bounds,
when the queue is full, when the peer is away), which chunk is set aside in the dead-letter folder,
and what is dropped and counted. The worker in :mod:`mona_client.transport` calls it from its thread;
``put()`` (and, when the queue is full, the spill of its oldest records) runs on the caller's.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable, Deque, List, Optional

from .logs import RateLimitedLog
from .sender_options import SenderOptions
from .spool import Spool, SpooledChunk

__all__ = ["MAX_REFUSALS", "Batcher", "Chunk"]

#: Times the peer may close the connection on one chunk before the chunk is set aside (dead-lettered).
#: The first close may have been caused by another chunk on the same connection, so after it the chunk
#: travels alone: the later closes are its own.
MAX_REFUSALS = 3


class Chunk:
    """Entries that travel (and are acked, spooled or set aside) together."""

    __slots__ = ("attempts", "chunk_id", "count", "entries", "refusals", "spooled")

    def __init__(self, entries: bytes, count: int, spooled: Optional[SpooledChunk] = None) -> None:
        self.entries = entries
        self.count = count
        self.spooled = spooled  # the spool file it was replayed from, done with once acked
        self.chunk_id = ""  # the id of its latest attempt, which its ack carries
        self.attempts = 0
        self.refusals = 0  # times the peer closed the connection while this chunk was the oldest unacked


class Batcher:
    """The queue, the window of unacked chunks and the spill policy of one sender.

    ``after_slow_put`` is called after each put that left the fast path (the worker wakes or starts
    its thread there, or drains at once in blocking mode). The fast path is closed until
    :meth:`open_fast_path`: until then every put takes the slow path.
    """

    def __init__(self, options: SenderOptions, spool: Optional[Spool], after_slow_put: Callable[[], None]) -> None:
        self.options = options
        self.spool = spool
        self._after_slow_put = after_slow_put
        self.max_queue = options.max_queue
        self.max_queue_bytes = options.max_queue_bytes
        self.chunk_bytes = options.chunk_bytes

        self.queue: Deque[bytes] = deque()
        # Bytes of the entries in the queue. Updated with one in-place add of a local integer (put) or
        # subtraction (the sender): CPython switches threads only at calls and jumps, so neither is
        # torn by the other.
        self.queued_bytes = 0
        # A peer that is connected and acking, only slower than the exports, keeps the records in
        # memory up to half the queue; beyond that the excess goes to the spool, leaving the
        # rest of the queue as headroom for the moments the exporting threads hold the GIL.
        self.spill_at = max(options.max_queue // 2, 1)
        self._yield_at = options.max_queue * 3 // 4
        # The same two marks in bytes: big records reach them long before the record count does.
        self.spill_bytes_at = max(options.max_queue_bytes // 2, 1)
        self._yield_bytes_at = options.max_queue_bytes * 3 // 4
        # put() takes its fast path below this length and these bytes: the worker runs and needs no
        # wake-up yet.
        self._fast_limit = 0
        self._fast_bytes = 0
        #: True from the moment a put wakes the worker until the worker has looked at the queue: a
        #: put past the fast path's mark then has nobody to wake and skips ``after_slow_put``. Set by
        #: the waker before it wakes, cleared by the worker after it woke (see the transport).
        self.worker_woken = False

        self.inflight: Deque[Chunk] = deque()
        self.retry: Deque[Chunk] = deque()
        # A chunk refused MAX_REFUSALS times, waiting for the peer to ack another one (which shows
        # that the fault is this chunk's, not the peer's) before it goes to the dead-letter folder.
        self.suspect: Optional[Chunk] = None

        self._log = RateLimitedLog()
        self.acked_records = 0
        self.dropped_records = 0
        self.dead_lettered_records = 0

    # --- the caller's side ----------------------------------------------------------------------

    def put(self, entry: bytes) -> bool:
        """Queue one encoded entry. Returns False when it was dropped because the queue is full."""
        queue = self.queue
        size = len(entry)
        # The common case: two comparisons, the append and an integer add.
        if len(queue) < self._fast_limit and self.queued_bytes < self._fast_bytes:
            queue.append(entry)
            self.queued_bytes += size
            return True
        return self._put_slow(entry, size)

    def _put_slow(self, entry: bytes, size: int) -> bool:
        queue = self.queue
        queued = len(queue)
        full = queued >= self.max_queue or (queued and self.queued_bytes + size > self.max_queue_bytes)
        if full and not self._spill_oldest():
            self.dropped_records += 1
            self._log.log(
                logging.WARNING,
                "queue-full",
                "mona-client queue is full (%d records or %d bytes max): dropping exports until the "
                "forwarder at %s:%d catches up",
                self.max_queue,
                self.max_queue_bytes,
                self.options.host,
                self.options.port,
            )
            return False
        queue.append(entry)
        self.queued_bytes += size
        if not self.worker_woken:  # a burst: once woken, the worker needs no second call per record
            self._after_slow_put()
        if (queued > self._yield_at or self.queued_bytes > self._yield_bytes_at) and self.spool is not None:
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
        chunk = self.take_from_queue(max_bytes=self.chunk_bytes)
        if chunk is None:
            return False
        spool.write(chunk.entries, chunk.count)  # when it cannot, those records are counted as dropped
        return True

    def open_fast_path(self) -> None:
        """Let put() skip the slow path while fewer than a chunk's worth of records are queued."""
        self._fast_limit = min(self.options.chunk_records, self.max_queue)
        self._fast_bytes = min(self.chunk_bytes, self.spill_bytes_at)

    def close_fast_path(self) -> None:
        """Make every put() take the slow path (which wakes the worker)."""
        self._fast_limit = 0
        self._fast_bytes = 0

    # --- what is held -----------------------------------------------------------------------------

    def in_memory(self) -> int:
        """Records in memory: queued, in flight, waiting to be resent or waiting aside."""
        in_memory = len(self.queue) + sum(c.count for c in self.inflight) + sum(c.count for c in self.retry)
        suspect = self.suspect
        return in_memory + (suspect.count if suspect is not None else 0)

    def spooled_records(self) -> int:
        """Records in spool files, this process's and those left by others."""
        return self.spool.pending_records() if self.spool is not None else 0

    def has_work(self) -> bool:
        """Anything to send: chunks to resend, queued records, chunks in flight, spool files."""
        return bool(self.retry or self.queue or self.inflight or self.spooled_records())

    # --- chunks -----------------------------------------------------------------------------------

    def next_to_send(self) -> Optional[Chunk]:
        """The next chunk to put on the wire, added to the window; None when the window is full or
        nothing waits. A chunk the peer closed the connection on travels alone."""
        inflight = self.inflight
        if len(inflight) >= self.options.max_inflight or (inflight and inflight[-1].refusals):
            return None
        chunk = self._next_chunk()
        if chunk is None:
            return None
        if chunk.refusals and inflight:
            self.retry.appendleft(chunk)  # its turn comes when the window is empty
            return None
        inflight.append(chunk)
        return chunk

    def _next_chunk(self) -> Optional[Chunk]:
        """Oldest first: chunks to resend, then the spool, then the queue."""
        if self.retry:
            return self.retry.popleft()
        if self.spool is not None:
            spooled = self.spool.claim_next()
            if spooled is not None:
                return Chunk(spooled.entries, spooled.count, spooled)
        return self.take_from_queue()

    def take_from_queue(self, limit: Optional[int] = None, max_bytes: Optional[int] = None) -> Optional[Chunk]:
        """The oldest queued records as one chunk of at most ``limit`` records and ``max_bytes``."""
        queue = self.queue
        if not queue:
            return None
        entries: List[bytes] = []
        size = 0
        max_bytes = self.chunk_bytes if max_bytes is None else max_bytes
        # A long queue goes in bigger chunks (up to chunk_bytes): fewer round trips and spool files,
        # and fewer waits for the GIL when the exporting threads keep it busy.
        records = max(self.options.chunk_records, len(queue) // self.options.max_inflight)
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
        self.queued_bytes -= size
        return Chunk(b"".join(entries), len(entries))

    def ack(self, chunk_id: str) -> bool:
        """The peer acked ``chunk_id``: the chunk leaves the window. False for an id not in it."""
        for i, chunk in enumerate(self.inflight):
            if chunk.chunk_id == chunk_id:
                del self.inflight[i]
                self.delivered(chunk)
                return True
        return False

    def delivered(self, chunk: Chunk) -> None:
        """``chunk`` (already out of the window) arrived: its spool file goes, a suspect is condemned."""
        self.acked_records += chunk.count
        if chunk.spooled is not None and self.spool is not None:
            self.spool.done(chunk.spooled)
        suspect = self.suspect
        if suspect is not None:  # the peer takes other chunks: the one it refuses is at fault
            self.suspect = None
            self._dead_letter(suspect)

    def requeue_inflight(self) -> None:
        """The connection is gone: what was on the wire waits to be sent again, in its order."""
        if self.inflight:
            self.retry.extendleft(reversed(self.inflight))
            self.inflight.clear()

    # --- chunks the peer refuses --------------------------------------------------------------------

    def note_refusal(self) -> Optional[Chunk]:
        """The peer closed the connection on what was sent: counted against the oldest unacked chunk.

        Returns that chunk, taken out of the window, once it was refused ``MAX_REFUSALS`` times: hand
        it to :meth:`hold_suspect` once the connection's failure is dealt with.
        """
        if not self.inflight:
            return None
        chunk = self.inflight[0]
        chunk.refusals += 1
        if chunk.refusals < MAX_REFUSALS:
            return None
        self.inflight.popleft()
        return chunk

    def hold_suspect(self, chunk: Chunk) -> None:
        """Keep a chunk refused MAX_REFUSALS times aside until the peer shows it takes other chunks."""
        if self.suspect is None:
            self.suspect = chunk
            return
        # A second chunk refused as often while the first waits: the peer refuses everything, the
        # chunks are not to blame. Both go back in line, oldest first, with their counts cleared.
        first, self.suspect = self.suspect, None
        first.refusals = chunk.refusals = 0
        self.retry.extendleft((chunk, first))

    def _dead_letter(self, chunk: Chunk) -> None:
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
            self.options.host,
            self.options.port,
            MAX_REFUSALS,
            chunk.count,
            len(chunk.entries),
            where,
        )

    # --- the spool ----------------------------------------------------------------------------------

    def lagging(self) -> bool:
        """The queue is past half of either bound and a spool could take the excess."""
        return self.spool is not None and (len(self.queue) > self.spill_at or self.queued_bytes > self.spill_bytes_at)

    def spill(self, keep: int = 0, keep_bytes: int = 0, *, everything: bool = False, connected: bool = False) -> None:
        """Move records from memory to the spool, oldest first, keeping ``keep`` records and at most
        ``keep_bytes`` queued (``keep_bytes`` is only looked at when ``keep`` is given).

        Chunks waiting to be resent go too unless ``connected`` (they are about to be sent again);
        one that counts refusals stays, its count must not be lost. With ``everything`` (at close;
        the window must have been requeued) all of them go, the suspect too, and claimed spool files
        are given back. Without a spool nothing moves.
        """
        spool = self.spool
        if spool is None:
            return
        if everything and self.suspect is not None:
            self.retry.appendleft(self.suspect)  # leaves memory now; the next process tries again
            self.suspect = None
        kept: List[Chunk] = []
        while self.retry and (everything or not connected):
            chunk = self.retry.popleft()
            if chunk.refusals and not everything:
                kept.append(chunk)  # stays in memory: its count of refusals must not be lost
            elif chunk.spooled is not None:
                spool.release(chunk.spooled)
            else:
                spool.write(chunk.entries, chunk.count)
        self.retry.extendleft(reversed(kept))
        # What is queued now, not what arrives meanwhile: a caller faster than the disk must not
        # keep this loop (and the sender) busy for ever.
        budget = len(self.queue)
        keep_bytes = keep_bytes if keep else 0
        while budget > 0 and (len(self.queue) > keep or self.queued_bytes > keep_bytes):
            # Files as big as a chunk (a file is replayed as one chunk): each file costs a few
            # system calls, and each call a wait for the GIL.
            taken = self.take_from_queue(limit=budget, max_bytes=self.chunk_bytes)
            if taken is None:
                break
            budget -= taken.count
            spool.write(taken.entries, taken.count)

    def spill_excess(self) -> None:
        """While connected: move what is beyond half the queue's bounds to the spool."""
        if self.lagging():
            self.spill(self.spill_at, self.spill_bytes_at, connected=True)
