"""The merger: tails the raw log and merges its rows into ARC documents, in a process of its own.

The network side (:mod:`.server`, :mod:`.ingest`) only checks the framing of what it receives and
appends one raw row per message; this merger reads the rows back in id order, decodes the entries
(msgpack's C decoder; the EventTime extension is left undecoded, as ``slice(0, data)``, which costs no
Python call per record, because mona records carry their ``export_timestamp``), drops duplicates by
``(user_id, record_id)``, merges records of the mona tag into ARCs and writes the touched ARCs, the
duplicate-detection state, the per-tag counters and the watermark ("raw rows up to id N are merged")
in ONE transaction. A crash of either process therefore never merges a row twice nor skips one, and
ARCs can always be rebuilt from the raw log.

A record that cannot be merged is counted as rejected (and logged, at most once a minute); it never
fails the others. Rows whose entries cannot even be decoded as a whole are decoded entry by entry.

Two ways to run it, both driven by :class:`MergeLoop`:

* :class:`MergerProcess` (what :class:`~.service.Collector` and ``mona collect`` use): a child process
  running ``python -m mona_client.collector.merge_worker``, told of new rows on its stdin, reporting what it
  merged on its stdout. It exits when told to stop (after merging everything up to the given row) or
  when its stdin closes (its parent died).
* :class:`MergerThread`: the same loop on a thread of this process, for a store object given in code.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import logging
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import msgpack

from ..record import TAG
from .dedup import RecordIdFilter
from .merge import ArcMerger, event_seconds
from .store import ArcStore, RawLog, RawRow, SQLiteRawLog, SQLiteStore, TagCounts, WriteSet, raw_log_path

log = logging.getLogger("mona_client.collector")

#: Events merged per transaction, at most (a row is never split).
BATCH_EVENTS = 50000

_TIME = itemgetter(0)
_STOP = attrgetter("stop")


_ARRAY32 = struct.Struct(">BI")
_DECODING: Dict[str, Any] = dict(raw=False, unicode_errors="surrogateescape", strict_map_key=False, ext_hook=slice)
_unpackb = msgpack.unpackb


def decode_entries(entries: bytes, count: int) -> Tuple[List[Any], int]:
    """The ``[time, record]`` entries of a raw row, and how many entries could not be decoded.

    Times stay as the wire has them: int, float, or an extension as ``slice(code, data)`` (``slice``
    is a builtin taking two arguments, so msgpack calls no Python code for it).
    """
    try:  # as one array: a single call into msgpack's C decoder
        return _unpackb(_ARRAY32.pack(0xDD, count) + entries, **_DECODING), 0
    except Exception:  # noqa: BLE001 - e.g. a map key that is an array: entry by entry, below
        return _decode_one_by_one(entries)


def _decode_one_by_one(entries: bytes) -> Tuple[List[Any], int]:
    skipper = msgpack.Unpacker(max_buffer_size=max(len(entries), 1))
    skipper.feed(entries)
    items: List[Any] = []
    bad = 0
    start = 0
    while start < len(entries):
        try:
            skipper.skip()
            end = skipper.tell()
        except Exception:  # noqa: BLE001 - the rest is unreadable (the network side checked it, though)
            return items, bad + 1
        try:
            items.append(_unpackb(entries[start:end], **_DECODING))
        except Exception:  # noqa: BLE001
            bad += 1
        start = end
    return items, bad


def time_span(items: List[Any]) -> Tuple[Optional[float], Optional[float]]:
    """The earliest and latest event time of decoded entries (None, None when there is none)."""
    times = [item[0] for item in items if type(item) is list and len(item) == 2]
    if not times:
        return None, None
    kinds = set(map(type, times))
    if kinds == {slice}:  # EventTime: big-endian seconds then nanoseconds compare as bytes
        try:
            datas = list(map(_STOP, times))
            return event_seconds(slice(0, min(datas))), event_seconds(slice(0, max(datas)))
        except Exception:  # noqa: BLE001 - some other extension: the slow way
            pass
    seconds = []
    for value in times:
        try:
            seconds.append(event_seconds(value))
        except ValueError:
            pass
    return (min(seconds), max(seconds)) if seconds else (None, None)


class RateLimitedLog:
    """A warning at most once per ``interval`` seconds, the next one saying how many were left out."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last = -interval
        self._skipped = 0

    def warning(self, line: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._skipped += 1
            return
        if self._skipped:
            line += f" (and {self._skipped} more such message(s) since the last line)"
        self._last, self._skipped = now, 0
        log.warning(line, *args)


class MergeLoop:
    """Merges raw rows into the store, transaction by transaction, from the store's watermark on.

    While one transaction is written (mostly outside the GIL) the next is merged, when the store
    allows it (:attr:`ArcStore.concurrent_write`). ``report(watermark, events)`` is called after each
    commit with the new watermark and the events it covered (merged, duplicates and rejected).
    """

    def __init__(
        self,
        store: ArcStore,
        raw_log: RawLog,
        report: Callable[[int, int], None] = lambda watermark, events: None,
        batch_events: int = BATCH_EVENTS,
        committer: Optional[Any] = None,
    ) -> None:
        self.store = store
        self.raw_log = raw_log
        self.report = report
        self.batch_events = batch_events
        self.watermark = store.watermark(raw_log.log_id)  # merged (or being written) up to this row
        self.committed = self.watermark
        self.rejected_log = RateLimitedLog()
        self._new()
        if committer is None and store.concurrent_write:
            committer = ThreadPoolExecutor(1, "mona-merger-commit")
        #: Runs ``store.write`` in the background (an executor: ``submit(fn, changes)``), or None.
        self._committer = committer
        self._writing: Optional[Tuple["Future[None]", WriteSet, int]] = None

    def _new(self) -> None:
        self._merger = ArcMerger(self.store.load_arcs)
        self._dedup = RecordIdFilter(self.store.load_id_ranges, self.store.known_record_ids)

    def merge_available(self, up_to: Optional[int] = None) -> int:
        """Merge the rows there are (up to id ``up_to`` when given) and wait for their commit; the
        events merged."""
        events = 0
        while True:
            rows = self.raw_log.read(self.watermark, self.batch_events)
            if up_to is not None:
                rows = [row for row in rows if row.id <= up_to]
            if not rows:
                break
            events += self.merge_rows(rows)
        self.flush()
        return events

    def merge_rows(self, rows: List[RawRow]) -> int:
        """Merge rows that follow the watermark, in one transaction (committed in the background)."""
        changes = self._prepare(rows)
        if not self.flush():  # the one before must be committed first
            return 0  # it failed: these were merged on top of it; the caller reads them again
        self._write(changes, rows)
        return sum(row.events for row in rows)

    def flush(self) -> bool:
        """Wait until the transaction being written is committed; False if it failed (it was then
        merged again row by row, and everything merged since must be merged again)."""
        if self._writing is None:
            return True
        future, changes, events = self._writing
        self._writing = None
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001
            self._failed(changes, exc)
            return False
        self._done(changes, events)
        return True

    def close(self) -> None:
        self.flush()
        if self._committer is not None:
            self._committer.shutdown(wait=True)

    # --- one transaction ---------------------------------------------------------------------------

    def _prepare(self, rows: List[RawRow]) -> WriteSet:
        # Merging allocates many small dicts while thousands of documents are alive; the cyclic
        # garbage collector would rescan them all again and again. Nothing here makes cycles.
        collecting = gc.isenabled()
        if collecting:
            gc.disable()
        try:
            changes = WriteSet(watermark=rows[-1].id, log_id=self.raw_log.log_id)
            for row in rows:
                self._merge_row(row, changes)
            changes.arcs = self._merger.take_dirty()
            changes.id_ranges, changes.record_ids = self._dedup.take_changes()
            self.store.freeze(changes)
        finally:
            if collecting:
                gc.enable()
        self.watermark = rows[-1].id
        return changes

    def _merge_row(self, row: RawRow, changes: WriteSet) -> None:
        items, undecodable = decode_entries(row.entries, row.events)
        counts = changes.tags.get(row.tag)
        if counts is None:
            counts = changes.tags[row.tag] = TagCounts()
        kept = len(items)
        if row.tag == TAG:
            result = self._merger.merge_entries(items, self._dedup)
            duplicates = len(result.dropped)
            counts.duplicates += duplicates
            counts.rejected += result.rejected + undecodable
            kept -= duplicates
            if result.dropped:
                dropped = set(result.dropped)
                items = [item for index, item in enumerate(items) if index not in dropped]
            if result.rejected or undecodable:
                self.rejected_log.warning(
                    "collector: %d malformed mona record(s) in raw row %d (first: %s); they are kept raw only",
                    result.rejected + undecodable, row.id, result.reject_reason or "entries that cannot be decoded",
                )
        counts.events += kept + undecodable
        if items:
            counts.add_times(*time_span(items))

    def _write(self, changes: WriteSet, rows: List[RawRow]) -> None:
        events = sum(row.events for row in rows)
        if self._committer is None:
            try:
                self.store.write(changes)
            except Exception as exc:  # noqa: BLE001
                self._failed(changes, exc)
                return
            self._done(changes, events)
        else:
            self._writing = (self._committer.submit(self.store.write, changes), changes, events)
            changes.arcs = []  # what is written is in changes.frozen

    def _done(self, changes: WriteSet, events: int) -> None:
        self._merger.committed()
        self._dedup.committed()
        assert changes.watermark is not None
        self.committed = changes.watermark
        self.report(changes.watermark, events)

    def _failed(self, changes: WriteSet, exc: Exception) -> None:
        """A transaction failed: start again from what the store holds; rows that fail on their own
        are counted as rejected and skipped, so that one row can never stop the merger."""
        log.error("collector: could not store merged rows up to %s: %s; merging them again one by one",
                  changes.watermark, exc)
        self._new()
        self.watermark = self.store.watermark(self.raw_log.log_id)
        for row in self.raw_log.read(self.watermark, self.batch_events):
            if changes.watermark is None or row.id > changes.watermark:
                break
            try:
                single = self._prepare([row])
                self.store.write(single)
            except Exception as row_exc:  # noqa: BLE001
                log.error("collector: raw row %d cannot be merged (%s); its %d event(s) are counted as rejected",
                          row.id, row_exc, row.events)
                self._new()
                skip = WriteSet(watermark=row.id, log_id=self.raw_log.log_id, tags={row.tag: TagCounts(rejected=row.events)})
                self.store.write(skip)  # if even this fails, the store itself is broken: raise
            self._merger.committed()
            self._dedup.committed()
            self.watermark = self.committed = row.id
            self.report(row.id, row.events)


# --- running the loop -------------------------------------------------------------------------------


def _serve(loop: MergeLoop, commands: "queue.Queue[Tuple[str, int]]", raw_log: RawLog) -> None:
    """Merge as rows come; ``("raw", id)`` says rows up to ``id`` exist, ``("stop", id)`` says to merge
    up to ``id`` and return, ``("eof", 0)`` to return at once."""
    known = raw_log.last_id()
    stop_at: Optional[int] = None
    while True:
        block = loop.watermark >= known and stop_at is None
        if block:
            loop.flush()  # caught up: commit (and report) before waiting for more
        try:
            while True:
                command, value = commands.get(block, 1.0) if block else commands.get_nowait()
                block = False
                if command == "eof":
                    if stop_at is None:  # the parent is gone without a word: leave the rest for later
                        loop.flush()
                        return
                    continue
                if command == "stop":
                    stop_at = value
                known = max(known, value)
        except queue.Empty:
            if block:  # idle: look for rows appended by anyone else
                known = max(known, raw_log.last_id())
        if loop.watermark < known:
            rows = raw_log.read(loop.watermark, loop.batch_events)
            if rows:
                loop.merge_rows(rows)
                continue
            known = loop.watermark
        loop.flush()
        if stop_at is not None and loop.committed >= stop_at:
            return


def _lock(db_path: Path) -> Any:
    """One merger per database: an exclusive lock on ``<db>.merger.lock``, waited for."""
    handle = open(f"{db_path}.merger.lock", "a+")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m mona_client.collector.merge_worker --db PATH``: the merger process (see the module doc)."""
    parser = argparse.ArgumentParser(prog="mona-merger")
    parser.add_argument("--db", required=True)
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    out = sys.stdout.buffer
    lock = _lock(Path(args.db))
    store = SQLiteStore(args.db, synchronous=args.synchronous)
    raw_log = SQLiteRawLog(raw_log_path(args.db), synchronous=args.synchronous)
    commands: "queue.Queue[Tuple[str, int]]" = queue.Queue()

    def report(watermark: int, events: int) -> None:
        out.write(b"merged %d %d\n" % (watermark, events))
        out.flush()

    def read_commands() -> None:
        for line in sys.stdin.buffer:
            command, _, value = line.decode("ascii", "replace").strip().partition(" ")
            commands.put((command, int(value or 0)))
        commands.put(("eof", 0))

    threading.Thread(target=read_commands, name="mona-merger-commands", daemon=True).start()
    loop = MergeLoop(store, raw_log, report)
    report(loop.watermark, 0)  # ready
    try:
        _serve(loop, commands, raw_log)
    finally:
        loop.close()
        raw_log.close()
        store.close()
        lock.close()
    out.write(b"stopped 0 0\n")
    out.flush()
    return 0


class _Progress:
    """What the parent knows of the merger: the watermark and the events merged since start."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.watermark = 0
        self.events = 0
        self.ready = False
        self.ended = False

    def update(self, watermark: int, events: int) -> None:
        with self.cond:
            self.watermark = max(self.watermark, watermark)
            self.events += events
            self.ready = True
            self.cond.notify_all()

    def end(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: Optional[float]) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate() or self.ended, timeout) and predicate()


class MergerProcess:
    """The merger as a child process (``python -m mona_client.collector.merge_worker``)."""

    def __init__(self, db_path: Path, synchronous: str = "FULL") -> None:
        self.db_path = Path(db_path)
        self.synchronous = synchronous
        self.progress = _Progress()
        self._process: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def start(self, timeout: float = 60.0) -> None:
        level = logging.getLevelName(min(log.getEffectiveLevel(), logging.WARNING))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "mona_client.collector.merge_worker", "--db", str(self.db_path),
             "--synchronous", self.synchronous, "--log-level", str(level)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )
        self._reader = threading.Thread(target=self._read, name="mona-merger-progress", daemon=True)
        self._reader.start()
        if not self.progress.wait(lambda: self.progress.ready, timeout):
            self.kill()
            raise RuntimeError("the merger process did not start")

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            kind, _, rest = line.decode("ascii", "replace").partition(" ")
            if kind == "merged":
                watermark, events = map(int, rest.split())
                self.progress.update(watermark, events)
        self.progress.end()

    def notify(self, last_id: int) -> None:
        """Rows up to ``last_id`` are in the raw log (called after each raw commit)."""
        self._send(f"raw {last_id}\n")

    def _send(self, line: str) -> None:
        with self._lock:
            process = self._process
            if process is None or process.stdin is None or process.poll() is not None:
                return
            try:
                process.stdin.write(line.encode("ascii"))
                process.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass

    def stop(self, last_id: int, timeout: float = 60.0) -> bool:
        """Merge everything up to row ``last_id``, then end the process; False if it had to be killed."""
        process = self._process
        if process is None:
            return True
        self._send(f"stop {last_id}\n")
        with self._lock:
            try:
                if process.stdin is not None:
                    process.stdin.close()
            except OSError:
                pass
        try:
            process.wait(timeout)
            clean = process.returncode == 0
        except subprocess.TimeoutExpired:
            log.warning("collector: the merger did not finish within %g s; it is stopped (what it had not "
                        "committed is merged at the next start)", timeout)
            self.kill()
            clean = False
        if self._reader is not None:
            self._reader.join(5)
        self._process = None
        return clean

    def kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


class MergerThread:
    """The merger on a thread of this process, for a store given as an object (same interface)."""

    def __init__(self, store: ArcStore, raw_log: RawLog) -> None:
        self.progress = _Progress()
        self._commands: "queue.Queue[Tuple[str, int]]" = queue.Queue()
        self._loop = MergeLoop(store, raw_log, self.progress.update)
        self._raw_log = raw_log
        self._thread = threading.Thread(target=self._run, name="mona-merger", daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        self.progress.update(self._loop.watermark, 0)
        self._thread.start()

    def _run(self) -> None:
        try:
            _serve(self._loop, self._commands, self._raw_log)
        except Exception:  # noqa: BLE001
            log.exception("collector: the merger stopped")
        finally:
            self._loop.close()
            self.progress.end()

    def notify(self, last_id: int) -> None:
        self._commands.put(("raw", last_id))

    def stop(self, last_id: int, timeout: float = 60.0) -> bool:
        self._commands.put(("stop", last_id))
        self._thread.join(timeout)
        return not self._thread.is_alive()

