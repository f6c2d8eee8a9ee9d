"""The merger: tails the raw log and merges its rows into ARC documents, in a process of its own.

The network side (:mod:`.server`, :mod:`.ingest`) only checks the framing of what it receives and
appends one raw row per message; this merger reads the rows back in id order, decodes the entries
(msgpack's C decoder; extensions, the EventTime above all, are left undecoded as
:data:`~..event_time.UndecodedExtension`, because mona records carry their ``export_timestamp``), drops duplicates by
``(user_id, record_id)``, merges records of the mona tag into ARCs and writes the touched ARCs, the
duplicate-detection state, the per-tag counters and the watermark ("raw rows up to id N are merged")
in ONE transaction. A crash of either process therefore never merges a row twice nor skips one, and
ARCs can always be rebuilt from the raw log.

A record that cannot be merged is counted as rejected (and logged, at most once a minute); it never
fails the others. Rows whose entries cannot even be decoded as a whole are decoded entry by entry.

Two ways to run it, both driven by :class:`MergeLoop`:

* :class:`MergerProcess` (what :class:`~.service.Collector` and ``mona collect`` use): a child process
  running ``python -m mona_collector.merging``, told of new rows on its stdin, reporting what it
  merged on its stdout (the lines are those of :mod:`.protocol`). It exits when told to stop (after
  merging everything up to the given row) or when its stdin closes (its parent died).
* :class:`MergerThread`: the same loop on a thread of this process, for a store object given in code.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Tuple, Union

import msgpack

from mona_client.logs import RateLimitedLog
from mona_client.record import TAG

from ..databases import Database, is_postgres_url, note_failure
from ..event_time import EVENT_TIME_DATA, is_undecoded_extension, keep_extension, time_seconds
from ..store import (
    ArcStore,
    RawLog,
    RawRow,
    SQLiteRawLog,
    SQLiteStore,
    StoreError,
    TagCounts,
    WriteSet,
    is_storage_failure,
    raw_log_path,
)
from . import protocol
from .documents import DEFAULT_CACHE_BYTES, DEFAULT_MAX_DEPTH, ArcMerger
from .protocol import Command, InputClosed, RowsAppended, StopAt
from .record_ids import RecordIdFilter
from .writer import Committer, ThreadCommitter, WriterProcess

log = logging.getLogger("mona_collector")

#: The raw rows read for one transaction take at most this share of the cache's bound (at least one
#: row is read): records of 1 MiB each would otherwise make 5,000 events a 5 GiB transaction, and
#: what a transaction decodes and touches is held beside the cache until it is committed.
BATCH_SHARE_OF_CACHE = 0.25

_ARRAY32 = struct.Struct(">BI")
_DECODING: Dict[str, Any] = dict(
    raw=False, unicode_errors="surrogateescape", strict_map_key=False, ext_hook=keep_extension
)
_unpackb = msgpack.unpackb


def decode_entries(entries: bytes, count: int) -> Tuple[List[Any], int]:
    """The ``[time, record]`` entries of a raw row, and how many entries could not be decoded.

    Times stay as the wire has them: int, float, or an extension as an
    :data:`~..event_time.UndecodedExtension` (so do extensions in records).
    """
    try:  # as one array: a single call into msgpack's C decoder
        return _unpackb(_ARRAY32.pack(0xDD, count) + entries, **_DECODING), 0
    except Exception:
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
        except Exception:
            return items, bad + 1
        try:
            items.append(_unpackb(entries[start:end], **_DECODING))
        except Exception:
            bad += 1
        start = end
    return items, bad


_INTEGER = {int}  # the types of a list of integer times (bool is not int to type())


def time_span(items: List[Any]) -> Tuple[Optional[float], Optional[float]]:
    """The earliest and latest event time of decoded entries (None, None when there is none)."""
    times = [item[0] for item in items if type(item) is list and len(item) == 2]
    if not times:
        return None, None
    if set(map(type, times)) == _INTEGER:  # whole seconds (the mona client's times): their own numbers
        return min(times), max(times)
    if all(map(is_undecoded_extension, times)):
        # EventTime payloads (the network side lets no other extension through) compare as their times.
        first, last = min(value[1] for value in times), max(value[1] for value in times)
        if len(first) == len(last) == EVENT_TIME_DATA.size:
            return time_seconds(keep_extension(0, first)), time_seconds(keep_extension(0, last))
    seconds = []
    for value in times:
        try:
            seconds.append(time_seconds(value))
        except ValueError:  # not a time: counted nowhere
            continue
    return (min(seconds), max(seconds)) if seconds else (None, None)


class MergeLoop:
    """Merges raw rows into the store, transaction by transaction, from the store's watermark on.

    While one transaction is written (mostly outside the GIL) the next is merged, when the store
    allows it (:attr:`ArcStore.concurrent_write`). ``report(watermark, events)`` is called after each
    commit with the new watermark and the events it covered (merged, duplicates and rejected).

    ``cache_bytes`` bounds the memory of the document cache, in bytes (see :class:`~.documents.ArcMerger`),
    and a quarter of it the raw rows read for one transaction;
    ``max_depth`` is the sub-context depth limit (see :class:`~.documents.ArcMerger`).

    A failure of the storage itself (:func:`~.store.is_storage_failure`: disk full, I/O error) is
    raised to the caller, which must start again later from the store's watermark: nothing is
    skipped. Any other failure of a transaction is blamed on its rows (see :meth:`_failed`).
    """

    def __init__(
        self,
        store: ArcStore,
        raw_log: RawLog,
        report: Callable[[int, int], None] = lambda watermark, events: None,
        batch_events: Optional[int] = None,
        committer: Optional[Committer] = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.store = store
        self.raw_log = raw_log
        self.report = report
        self.batch_events = batch_events or store.merge_batch_events
        self.batch_bytes = int(cache_bytes * BATCH_SHARE_OF_CACHE)
        self.cache_bytes = cache_bytes
        self.max_depth = max_depth
        self._pressure_logged = False
        self.watermark = store.watermark(raw_log.log_id)  # merged (or being written) up to this row
        self.committed = self.watermark
        self.rejected_log = RateLimitedLog(60.0, log)
        self._new()
        if committer is None and store.concurrent_write:
            committer = ThreadCommitter(store)
        #: Writes transactions in the background (see .writer), or None: written inline.
        self._committer = committer
        self._writing: Optional[Tuple[Future[None], WriteSet, int]] = None

    def _new(self) -> None:
        self._merger = ArcMerger(
            self.store.load_arcs, cache_bytes=self.cache_bytes, max_depth=self.max_depth, on_pressure=self._pressure
        )
        self._dedup = RecordIdFilter(self.store.load_id_ranges, self.store.known_record_ids)

    def merge_available(self, up_to: Optional[int] = None) -> int:
        """Merge the rows there are (up to id ``up_to`` when given) and wait for their commit; the
        events merged."""
        events = 0
        while True:
            rows = self.read_rows()
            if up_to is not None:
                rows = [row for row in rows if row.id <= up_to]
            if not rows:
                break
            events += self.merge_rows(rows)
        self.flush()
        return events

    def read_rows(self) -> List[RawRow]:
        """The next rows to merge: after the watermark, one transaction's worth."""
        return self.raw_log.read(self.watermark, self.batch_events, self.batch_bytes)

    def _pressure(self, cached_bytes: int, limit: int) -> None:
        if not self._pressure_logged:
            self._pressure_logged = True
            # An LRU cache at its bound is how a long-running collector works, not a fault: info.
            log.info(
                "collector: the merger's document cache reached its limit of %d bytes (--merge-cache-bytes); "
                "the least recently used ARCs are evicted and read back from the database when needed "
                "(logged once)",
                limit,
            )

    def merge_rows(self, rows: List[RawRow]) -> int:
        """Merge rows that follow the watermark, in one transaction (committed in the background)."""
        try:
            changes = self._prepare(rows)
        except Exception as exc:  # e.g. a value the store cannot pack: blame the rows
            if is_storage_failure(exc) or not self.flush():
                raise
            self._failed(WriteSet(watermark=rows[-1].id, log_id=self.raw_log.log_id), exc)
            return 0
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
        except Exception as exc:
            if is_storage_failure(exc):
                raise
            self._failed(changes, exc)
            return False
        self._done(changes, events)
        return True

    def close(self) -> None:
        self.flush()
        if self._committer is not None:
            self._committer.close()

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
            changes.changed_nodes = self._merger.take_changed_nodes()
            changes.id_ranges, changes.record_ids = self._dedup.take_changes()
            self.store.freeze(changes)
            self._merger.sized(changes.arcs)
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
            result = self._merger.merge_entries(items, self._dedup, row.auth_user)
            duplicates = len(result.dropped)
            counts.duplicates += duplicates
            counts.rejected += result.rejected + undecodable
            kept -= duplicates
            if result.dropped:
                dropped = set(result.dropped)
                items = [item for index, item in enumerate(items) if index not in dropped]
            if result.rejected or undecodable:
                self.rejected_log.log(
                    logging.WARNING,
                    "rejected",
                    "collector: %d mona record(s) in raw row %d cannot be merged (first: %s); they are kept raw only",
                    result.rejected + undecodable,
                    row.id,
                    result.reject_reason or "entries that cannot be decoded",
                )
        counts.events += kept + undecodable
        if items:
            counts.add_times(*time_span(items))

    def _write(self, changes: WriteSet, rows: List[RawRow]) -> None:
        events = sum(row.events for row in rows)
        if self._committer is None:
            try:
                self.store.write(changes)
            except Exception as exc:
                if is_storage_failure(exc):
                    raise
                self._failed(changes, exc)
                return
            self._done(changes, events)
        else:
            self._writing = (self._committer.commit(changes), changes, events)
            changes.arcs = []  # what is written is in changes.frozen

    def _done(self, changes: WriteSet, events: int) -> None:
        self._merger.committed()
        self._dedup.committed()
        assert changes.watermark is not None
        self.committed = changes.watermark
        self.report(changes.watermark, events)

    def _failed(self, changes: WriteSet, exc: Exception) -> None:
        """A transaction failed for its data: start again from what the store holds; rows that fail
        on their own are counted as rejected and skipped, so that one row can never stop the merger.
        A failure of the storage is raised instead: a row is never skipped because the disk is full."""
        log.error(
            "collector: could not store merged rows up to %s: %s; merging them again one by one", changes.watermark, exc
        )
        self._new()
        self.watermark = self.store.watermark(self.raw_log.log_id)
        for row in self.raw_log.read(self.watermark, self.batch_events, self.batch_bytes):
            if changes.watermark is None or row.id > changes.watermark:
                break
            try:
                single = self._prepare([row])
                self.store.write(single)
            except Exception as row_exc:
                if is_storage_failure(row_exc):
                    raise
                log.error(
                    "collector: raw row %d cannot be merged (%s); its %d event(s) are counted as rejected",
                    row.id,
                    row_exc,
                    row.events,
                )
                self._new()
                skip = WriteSet(
                    watermark=row.id, log_id=self.raw_log.log_id, tags={row.tag: TagCounts(rejected=row.events)}
                )
                self.store.write(skip)  # if even this fails, the store itself is broken: raise
            self._merger.committed()
            self._dedup.committed()
            self.watermark = self.committed = row.id
            self.report(row.id, row.events)


# --- running the loop -------------------------------------------------------------------------------


def _serve(loop: MergeLoop, commands: queue.Queue[Command], raw_log: RawLog) -> None:
    """Merge as rows come, told by ``commands`` (see :mod:`.protocol`): :class:`RowsAppended` says
    rows up to an id exist, :class:`StopAt` says to merge up to an id and return, :class:`InputClosed`
    to return at once (unless told to stop before)."""
    known = raw_log.last_id()
    stop_at: Optional[int] = None
    while True:
        block = loop.watermark >= known and stop_at is None
        if block:
            loop.flush()  # caught up: commit (and report) before waiting for more
        try:
            while True:
                command = commands.get(block, 1.0) if block else commands.get_nowait()
                block = False
                if isinstance(command, InputClosed):
                    if stop_at is None:  # the parent is gone without a word: leave the rest for later
                        loop.flush()
                        return
                    continue
                if isinstance(command, StopAt):
                    stop_at = command.last_id
                known = max(known, command.last_id)
        except queue.Empty:
            if block:  # idle: look for rows appended by anyone else
                known = max(known, raw_log.last_id())
        if loop.watermark < known:
            rows = loop.read_rows()
            if rows:
                loop.merge_rows(rows)
                continue
            known = loop.watermark
        loop.flush()
        if stop_at is not None and loop.committed >= stop_at:
            return


def _lock(db_path: Path) -> IO[str]:
    """One merger per database: an exclusive lock on ``<db>.merger.lock``, waited for (the caller
    closes the handle). Where there is no ``fcntl`` (Windows) nothing is locked."""
    handle = open(f"{db_path}.merger.lock", "a+")  # noqa: SIM115 - held open as the lock, closed by the caller
    try:
        import fcntl  # here, not at the top: the module must import where fcntl does not exist
    except ImportError:
        return handle
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


class _ParentPipe:
    """The merger's report channel to the collector (its stdout). When the collector is gone the pipe
    breaks: that ends the merger quietly (what it merged is committed), never with a traceback."""

    def __init__(self, commands: queue.Queue[Command]) -> None:
        self._out = sys.stdout.buffer
        self._commands = commands
        self.gone = False

    def say(self, line: bytes) -> None:
        if self.gone:
            return
        try:
            self._out.write(line)
            self._out.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.gone = True
            # Nothing is read any more: later writes, and the interpreter's flush at exit, go nowhere.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            self._commands.put(InputClosed())

    def report(self, watermark: int, events: int) -> None:
        self.say(protocol.encode(protocol.Merged(watermark, events)))

    def error(self, text: str) -> None:
        self.say(protocol.encode(protocol.Failed(text)))


def _worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mona-merger")
    parser.add_argument("--db", required=True)
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--max-depth", type=int, default=DEFAULT_MAX_DEPTH)
    parser.add_argument("--cache-bytes", type=int, default=DEFAULT_CACHE_BYTES)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m mona_collector.merging --db PATH``: the merger process (see the module doc).

    Exits 0 when told to stop or when the collector is gone, 1 (after an ``error`` line to the
    collector and one log line) when it cannot go on, e.g. the disk is full: the collector restarts it.
    """
    args = _worker_parser().parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    commands: queue.Queue[Command] = queue.Queue()
    parent = _ParentPipe(commands)
    try:
        _run_worker(args, commands, parent)
    except Exception as exc:  # said once, to the log and to the collector, which restarts it
        if is_storage_failure(exc) or isinstance(exc, StoreError):
            log.error("collector merger: stopped, the storage failed: %s", exc)
        else:
            log.exception("collector merger: stopped by an unexpected error")
        parent.error(f"{type(exc).__name__}: {exc}")
        return 1
    parent.say(protocol.encode(protocol.Stopped()))
    if parent.gone:
        log.warning("collector merger: the collector that started it is gone; stopped (what is merged is committed)")
    return 0


def _run_worker(args: argparse.Namespace, commands: queue.Queue[Command], parent: _ParentPipe) -> None:
    if is_postgres_url(args.db):
        from .shared import run_shared_worker  # imports psycopg: only for a PostgreSQL database

        run_shared_worker(args, commands, parent)
        return
    lock = _lock(Path(args.db))
    try:
        store = SQLiteStore(args.db, synchronous=args.synchronous)
        try:
            raw_log = SQLiteRawLog(raw_log_path(args.db), synchronous=args.synchronous)
            try:
                _merge_from_commands(
                    MergeLoop(
                        store,
                        raw_log,
                        parent.report,
                        committer=WriterProcess(store, args.synchronous),
                        cache_bytes=args.cache_bytes,
                        max_depth=args.max_depth,
                    ),
                    commands,
                    raw_log,
                    parent,
                )
            finally:
                raw_log.close()
        finally:
            store.close()
    finally:
        lock.close()


def _merge_from_commands(loop: MergeLoop, commands: queue.Queue[Command], raw_log: RawLog, parent: _ParentPipe) -> None:
    start_command_reader(commands)
    parent.report(loop.watermark, 0)  # ready
    try:
        _serve(loop, commands, raw_log)
    finally:
        loop.close()


def start_command_reader(commands: queue.Queue[Command]) -> None:
    """Put the collector's commands (lines on stdin) into ``commands``, then :class:`InputClosed`."""

    def read_commands() -> None:
        # Plain reads of the descriptor: a daemon thread blocked in a buffered reader would hold its
        # lock when the interpreter exits, which aborts the process.
        pending = b""
        while True:
            data = os.read(sys.stdin.fileno(), 65536)
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    commands.put(protocol.parse_command(line))
                except protocol.ProtocolError as exc:  # the collector is of another version: say so, go on
                    log.warning("collector merger: %s", exc)
        commands.put(InputClosed())

    threading.Thread(target=read_commands, name="mona-merger-commands", daemon=True).start()


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


#: The first wait before restarting a merger process that died; it doubles with every death in a
#: row, up to the collector's ``merger_max_backoff``, and starts again once a merger merged something.
FIRST_RESTART_DELAY = 0.5


class MergerProcess:
    """The merger as a child process (``python -m mona_collector.merging``), supervised.

    A merger that dies (the disk is full, it was killed) is logged loudly and started again after a
    delay that doubles with each death in a row, capped at ``max_backoff`` seconds; each death is
    counted with its error in the raw log (``mona stats``). Meanwhile the network side goes on
    storing and acking; the new merger merges from the watermark on.
    """

    def __init__(
        self,
        db_path: Union[Path, str],
        synchronous: str = "FULL",
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_backoff: float = 30.0,
    ) -> None:
        self.db_path: Database = db_path if is_postgres_url(db_path) else Path(db_path)
        self.synchronous = synchronous
        self.max_depth = max_depth
        self.cache_bytes = cache_bytes
        self.max_backoff = max_backoff
        self.progress = _Progress()
        #: Deaths of the merger process since start, and the last error it reported.
        self.restarts = 0
        self.last_error: Optional[str] = None
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._reader: Optional[threading.Thread] = None
        self._supervisor: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # stop() or kill() called: no more restarts
        self._delay = FIRST_RESTART_DELAY
        self._reported_error: Optional[str] = None  # the "error" line of the process running now

    @property
    def pid(self) -> Optional[int]:
        """The merger process's id (None while none runs)."""
        process = self._process
        return process.pid if process is not None else None

    def start(self, timeout: float = 60.0) -> None:
        with self._lock:
            self._spawn()
        if not self.progress.wait(lambda: self.progress.ready, timeout):
            error = self._reported_error
            self.kill()
            raise RuntimeError("the merger process did not start" + (f": {error}" if error else ""))
        self._supervisor = threading.Thread(target=self._supervise, name="mona-merger-supervisor", daemon=True)
        self._supervisor.start()

    def _spawn(self) -> None:
        """Start a merger process (the caller holds ``_lock``)."""
        level = logging.getLevelName(min(log.getEffectiveLevel(), logging.WARNING))
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mona_collector.merging",
                "--db",
                str(self.db_path),
                "--synchronous",
                self.synchronous,
                "--log-level",
                str(level),
                "--max-depth",
                str(self.max_depth),
                "--cache-bytes",
                str(self.cache_bytes),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self._process = process
        self._reported_error = None
        self._reader = threading.Thread(target=self._read, args=(process,), name="mona-merger-progress", daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                report = protocol.parse_report(line)
            except protocol.ProtocolError as exc:
                log.warning("collector: %s", exc)
                continue
            if isinstance(report, protocol.Merged):
                if report.events:
                    self._delay = FIRST_RESTART_DELAY  # it works again
                self.progress.update(report.watermark, report.events)
            elif isinstance(report, protocol.Failed):
                self._reported_error = report.error
        if not self.progress.ready:  # died before it was ready: start() reports it
            self.progress.end()

    def _supervise(self) -> None:
        """Wait for the merger to end; restart it (after a delay) unless it was told to stop."""
        while True:
            process, reader = self._process, self._reader
            assert process is not None and reader is not None
            process.wait()
            reader.join()
            if self._stopping.is_set():
                break
            self._died(process.returncode)
            if self._stopping.wait(self._delay):
                break
            self._delay = min(self._delay * 2, self.max_backoff)
            with self._lock:  # stop() sets _stopping under this lock: no process is started after it
                if self._stopping.is_set():
                    break
                try:
                    self._spawn()
                except OSError as exc:
                    log.error("collector: cannot start the merger process: %s", exc)
                    self.last_error = str(exc)
                    self._process = None
                    break
        self.progress.end()

    def _died(self, status: Optional[int]) -> None:
        how = f"exit status {status}" if status is None or status >= 0 else f"killed by signal {-status}"
        error = self._reported_error if status == 1 and self._reported_error else how
        self.restarts += 1
        self.last_error = error
        log.error(
            "collector: the merger process died (%s): records are still stored and acked but not merged "
            "until it runs again; restarting it in %g s (restart %d)",
            error,
            self._delay,
            self.restarts,
        )
        note_failure(self.db_path, error)

    def notify(self, last_id: int) -> None:
        """Rows up to ``last_id`` are in the raw log (called after each raw commit)."""
        self._send(protocol.encode(RowsAppended(last_id)))

    def _send(self, line: bytes) -> None:
        with self._lock:
            process = self._process
            if process is None or process.stdin is None or process.poll() is not None:
                return
            try:
                process.stdin.write(line)
                process.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass

    def stop(self, last_id: int, timeout: float = 60.0) -> bool:
        """Merge everything up to row ``last_id``, then end the process; False if it had to be killed
        or was not running (what is not merged is merged at the next start)."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is None:
            return True
        if process.poll() is not None:
            log.warning("collector: the merger is not running; what it did not merge is merged at the next start")
            clean = False
        else:
            clean = self._stop_process(process, last_id, timeout)
        if self._supervisor is not None:
            self._supervisor.join(5)
        if self._reader is not None:
            self._reader.join(5)
        with self._lock:
            self._process = None
        return clean

    def _stop_process(self, process: subprocess.Popen[bytes], last_id: int, timeout: float) -> bool:
        self._send(protocol.encode(StopAt(last_id)))
        with self._lock:
            try:
                if process.stdin is not None:
                    process.stdin.close()
            except OSError:
                pass
        try:
            process.wait(timeout)
            return process.returncode == 0
        except subprocess.TimeoutExpired:
            log.warning(
                "collector: the merger did not finish within %g s; it is stopped (what it had not "
                "committed is merged at the next start)",
                timeout,
            )
            process.kill()
            process.wait()
            return False

    def kill(self) -> None:
        """Kill the merger process and do not restart it."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


class MergerThread:
    """The merger on a thread of this process, for a store given as an object (same interface).

    A failure of the storage ends the loop; it is logged and the loop started again from the
    store's watermark after a delay (doubling, capped at ``max_backoff``), as for the process.
    """

    def __init__(
        self,
        store: ArcStore,
        raw_log: RawLog,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_backoff: float = 30.0,
    ) -> None:
        self.progress = _Progress()
        self.restarts = 0
        self.last_error: Optional[str] = None
        self._commands: queue.Queue[Command] = queue.Queue()
        self._store = store
        self._cache_bytes, self._max_depth = cache_bytes, max_depth
        self._raw_log = raw_log
        self._loop = self._new_loop()
        self._max_backoff = max_backoff
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mona-merger", daemon=True)

    def _new_loop(self) -> MergeLoop:
        return MergeLoop(
            self._store, self._raw_log, self.progress.update, cache_bytes=self._cache_bytes, max_depth=self._max_depth
        )

    def start(self, timeout: float = 60.0) -> None:
        self.progress.update(self._loop.watermark, 0)
        self._thread.start()

    def _run(self) -> None:
        delay = FIRST_RESTART_DELAY
        try:
            while True:
                try:
                    _serve(self._loop, self._commands, self._raw_log)
                    return
                except Exception as exc:  # whatever stopped it: logged, then started again
                    self.restarts += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error(
                        "collector: the merger stopped (%s); starting it again in %g s (restart %d)",
                        self.last_error,
                        delay,
                        self.restarts,
                    )
                    if self._stopping.wait(delay):
                        return
                    delay = min(delay * 2, self._max_backoff)
                    self._loop = self._new_loop()
        finally:
            with contextlib.suppress(Exception):  # a storage that failed may fail again here
                self._loop.close()
            self.progress.end()

    def notify(self, last_id: int) -> None:
        self._commands.put(RowsAppended(last_id))

    def stop(self, last_id: int, timeout: float = 60.0) -> bool:
        self._stopping.set()
        self._commands.put(StopAt(last_id))
        self._thread.join(timeout)
        return not self._thread.is_alive()
