"""The writer thread: drops duplicates, merges ARCs and stores, with group commit.

Connections hand over decoded messages with :meth:`Ingestor.submit` and get a callback once the
transaction holding them is committed (that is when an ack may be sent) or has failed. Whatever has
queued up while the previous transaction was being written goes into the next one, so many chunks
share a commit under load and a lone chunk is written at once.

All store access happens on this thread.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from operator import itemgetter
from typing import Callable, Deque, List, NamedTuple, Optional, Tuple

from ..forward import Event, EventBatch, EventTime, pack_entry
from ..record import TAG
from .dedup import RecordIdFilter
from .merge import ArcMerger
from .store import ArcStore, RawChunk, TagCounts, WriteSet

log = logging.getLogger("mona_client.collector")

_SECONDS_OF = itemgetter(0)  # of an Event


@dataclass
class IngestResult:
    """What became of one submitted message."""

    ok: bool
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    reject_reason: Optional[str] = None
    error: Optional[str] = None


class Submission(NamedTuple):
    batch: EventBatch
    entries: Optional[bytes]  # the PackedForward entries as received, when there are some
    done: Callable[[IngestResult], None]


def _pack_events(events: List[Event]) -> bytes:
    return b"".join(
        pack_entry(EventTime(event.seconds, event.nanoseconds) if event.nanoseconds else event.seconds, event.record)
        for event in events
    )


class Ingestor:
    """Owns the store on a thread of its own and writes submitted messages in grouped transactions."""

    def __init__(self, store: ArcStore, max_group_events: int = 50000, arc_cache_size: int = 5000) -> None:
        self.store = store
        self.max_group_events = max_group_events
        self._merger = ArcMerger(store.load_arcs, arc_cache_size)
        self._dedup = RecordIdFilter(store.load_id_ranges, store.known_record_ids)
        self._queue: Deque[Submission] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = 0  # groups taken and not yet committed or failed
        self._thread: Optional[threading.Thread] = None
        #: Events that went through a committed transaction (stored or dropped as duplicates).
        self.processed_events = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mona-collector-writer", daemon=True)
        self._thread.start()

    def submit(self, submission: Submission) -> None:
        """Queue a message for the next transaction (thread-safe, never blocks on the database)."""
        with self._cond:
            self._queue.append(submission)
            self._cond.notify_all()

    def wait_for_events(self, count: int, timeout: Optional[float] = None) -> bool:
        """Block until ``processed_events >= count``; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.processed_events >= count, timeout)

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Block until everything submitted so far is committed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Write what is queued, then end the thread (the store stays open: its owner closes it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take_group(self) -> List[Submission]:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._stopping)
            group: List[Submission] = []
            events = 0
            while self._queue and (not group or events < self.max_group_events):
                submission = self._queue.popleft()
                group.append(submission)
                events += len(submission.batch.events)
            self._busy += bool(group)
            return group

    def _run(self) -> None:
        """Merge a group, hand it to the committer, merge the next one while it is written.

        With a store that allows it (:attr:`ArcStore.concurrent_write`) the database work of a
        transaction (most of it outside the GIL) overlaps the merging of the next one. The next group
        is handed over only once the previous one is committed; if that failed (every cache is then
        dropped), the next one, merged on top of it, is merged again from what the store holds.
        """
        committer = ThreadPoolExecutor(1, "mona-collector-commit") if self.store.concurrent_write else None
        writing: Optional["Future[bool]"] = None
        try:
            while True:
                group = self._take_group()
                if not group:
                    return  # stopping and nothing left
                prepared = self._prepare(group)
                if writing is not None and not writing.result() and prepared is not None:
                    # Merged on top of a transaction that failed (whose caches are dropped): again.
                    self._forget()
                    prepared = self._prepare(group)
                writing = None
                if prepared is None:
                    continue  # failed and reported
                if committer is None:
                    if not self._commit(group, *prepared):
                        self._forget()
                else:
                    writing = committer.submit(self._commit, group, *prepared)
        finally:
            if committer is not None:
                committer.shutdown(wait=True)

    def _prepare(self, group: List[Submission]) -> Optional[Tuple[WriteSet, List[IngestResult]]]:
        """Drop duplicates and merge a group in memory, and take what its transaction writes."""
        # Merging allocates many small dicts while thousands of documents are alive; the cyclic
        # garbage collector would rescan them all again and again (it cost more than the merge
        # itself). Nothing here makes cycles, so it is paused for the duration of one group.
        collecting = gc.isenabled()
        if collecting:
            gc.disable()
        try:
            changes = WriteSet()
            results = [self._merge(submission, changes) for submission in group]
            changes.arcs = self._merger.take_dirty()
            changes.id_ranges, changes.record_ids = self._dedup.take_changes()
            self.store.freeze(changes)
            return changes, results
        except Exception as exc:  # a lookup failed: nothing of this group is stored or acked
            self._failed(group, exc)
            return None
        finally:
            if collecting:
                gc.enable()

    def _commit(self, group: List[Submission], changes: WriteSet, results: List[IngestResult]) -> bool:
        """Write one prepared group, then report it (on the committer thread when there is one).

        On failure the caches are left to the writer thread to drop (it may be merging with them).
        """
        try:
            self.store.write(changes)
        except Exception as exc:  # the database failed: nothing of this group is stored or acked
            self._report_failure(group, exc)
            return False
        self._merger.committed()
        self._dedup.committed()
        self._finish(group, results)
        return True

    def _failed(self, group: List[Submission], exc: Exception) -> None:
        self._forget()
        self._report_failure(group, exc)

    def _report_failure(self, group: List[Submission], exc: Exception) -> None:
        log.error("collector: could not store %d messages: %s", len(group), exc)
        self._finish(group, [IngestResult(ok=False, error=str(exc)) for _ in group])

    def _forget(self) -> None:
        self._merger.forget()
        self._dedup.forget()

    def _finish(self, group: List[Submission], results: List[IngestResult]) -> None:
        # Callbacks first, so that whoever waits in drain() finds every ack already scheduled.
        for submission, result in zip(group, results):
            try:
                submission.done(result)
            except Exception:  # a callback must never stop the writer
                log.exception("collector: ack callback failed")
        with self._cond:
            self._busy -= 1
            if all(result.ok for result in results):
                self.processed_events += sum(result.stored + result.duplicates for result in results)
            self._cond.notify_all()

    def _write_group(self, group: List[Submission]) -> List[IngestResult]:
        """Merge and write one group on the calling thread (tests and measurements)."""
        results: List[IngestResult] = []
        group = [Submission(s.batch, s.entries, _collect(results, s.done)) for s in group]
        with self._cond:
            self._busy += 1
        prepared = self._prepare(group)
        if prepared is not None and not self._commit(group, *prepared):
            self._forget()
        return results

    def _merge(self, submission: Submission, changes: WriteSet) -> IngestResult:
        batch = submission.batch
        result = IngestResult(ok=True)
        events = batch.events
        if batch.tag == TAG:
            merged = self._merger.merge_events(events, self._dedup)
            result.rejected = merged.rejected
            result.reject_reason = merged.reject_reason
            if merged.dropped:
                result.duplicates = len(merged.dropped)
                dropped = set(merged.dropped)
                events = [event for index, event in enumerate(events) if index not in dropped]
        result.stored = len(events)
        counts = changes.tags.get(batch.tag)
        if counts is None:
            counts = changes.tags[batch.tag] = TagCounts()
        counts.events += result.stored
        counts.rejected += result.rejected
        counts.duplicates += result.duplicates
        if events:
            first, last = _time_span(events)
            counts.add_times(first, last)
            if result.duplicates == 0 and submission.entries is not None:
                entries = submission.entries
            else:
                entries = _pack_events(events)
            changes.raw_chunks.append(RawChunk(batch.tag, time.time(), len(events), first, last, entries))
        return result


def _time_span(events: List[Event]) -> Tuple[float, float]:
    """The earliest and the latest event time, as float seconds."""
    seconds = list(map(_SECONDS_OF, events))
    low, high = min(seconds), max(seconds)
    # Nanoseconds only matter between events of the same second (Event is (seconds, nanos, record)).
    first_nanos = min(event[1] for event in events if event[0] == low)
    last_nanos = max(event[1] for event in events if event[0] == high)
    return low + first_nanos / 1e9, high + last_nanos / 1e9


def _collect(results: List[IngestResult], done: Callable[[IngestResult], None]) -> Callable[[IngestResult], None]:
    def collect(result: IngestResult) -> None:
        results.append(result)
        done(result)

    return collect
