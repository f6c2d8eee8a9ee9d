"""The network side's writer thread: appends received messages to the raw log, with group commit.

Connections hand over checked messages (records not decoded: see
:func:`~mona_collector.forward_codec.split_event_message`) with :meth:`Ingestor.submit` and get a callback once
the transaction holding them is committed (that is when an ack may be sent) or has failed. Whatever
has queued up while the previous transaction was being written goes into the next one, so many chunks
share a commit under load and a lone chunk is written at once. Rows hold only text, integers and a
blob, so one message cannot fail the others of its group.

Merging into ARCs happens elsewhere (:mod:`.merging.process`), told of each commit through ``on_commit``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, NamedTuple, Optional

from .store import RawChunk, RawLog

log = logging.getLogger("mona_collector")


@dataclass
class IngestResult:
    """What became of one submitted message."""

    ok: bool
    stored: int = 0
    error: Optional[str] = None


class Submission(NamedTuple):
    tag: str
    entries: bytes  # a plain PackedForward entries blob
    events: int
    done: Callable[[IngestResult], None]
    #: The user name the connection authenticated with (None without user authentication).
    user: Optional[str] = None


class Ingestor:
    """Owns the raw log on a thread of its own and appends submitted messages in grouped transactions.

    ``on_commit(last_id)`` is called on that thread after each commit with the id of the newest row.
    """

    def __init__(
        self,
        raw_log: RawLog,
        on_commit: Optional[Callable[[int], None]] = None,
        max_group_events: int = 200000,
    ) -> None:
        self.raw_log = raw_log
        self.on_commit = on_commit
        self.max_group_events = max_group_events
        self._queue: Deque[Submission] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = 0  # groups taken and not yet committed or failed
        self._thread: Optional[threading.Thread] = None
        #: Events in committed rows since start.
        self.stored_events = 0
        #: The id of the newest row this writer committed (0: none yet).
        self.last_id = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mona-collector-writer", daemon=True)
        self._thread.start()

    def submit(self, submission: Submission) -> None:
        """Queue a message for the next transaction (thread-safe, never blocks on the database)."""
        with self._cond:
            self._queue.append(submission)
            self._cond.notify_all()

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Block until everything submitted so far is committed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Write what is queued, then end the thread (the log stays open: its owner closes it)."""
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
                events += submission.events
            self._busy += bool(group)
            return group

    def _run(self) -> None:
        while True:
            group = self._take_group()
            if not group:
                return  # stopping and nothing left
            self._write_group(group)

    def _write_group(self, group: List[Submission]) -> None:
        now = time.time()
        chunks = [RawChunk(s.tag, now, s.events, None, None, s.entries, s.user) for s in group]
        try:
            last_id = self.raw_log.append(chunks)
        except Exception as exc:  # the database failed: nothing of this group is stored or acked
            log.error("collector: could not store %d messages: %s", len(group), exc)
            results = [IngestResult(ok=False, error=str(exc)) for _ in group]
        else:
            results = [IngestResult(ok=True, stored=s.events) for s in group]
            self.last_id = max(self.last_id, last_id)
            if self.on_commit is not None:
                try:
                    self.on_commit(last_id)
                except Exception:
                    log.exception("collector: could not tell the merger about new rows")
        # Callbacks first, so that whoever waits in drain() finds every ack already scheduled.
        for submission, result in zip(group, results):
            try:
                submission.done(result)
            except Exception:  # a callback must never stop the writer
                log.exception("collector: ack callback failed")
        with self._cond:
            self._busy -= 1
            self.stored_events += sum(result.stored for result in results)
            self._cond.notify_all()
