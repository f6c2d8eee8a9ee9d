"""Writing merged transactions to SQLite, on a thread of the merger or in a process of its own.

The merger merges one transaction while the one before is written. A thread is enough for a store
whose driver waits outside Python (PostgreSQL's network round trips), but SQLite's driver binds every
value holding the interpreter's lock: a writing thread took as much of the merger's one core as
writing inline did (measured: the same records merged per second, the process never above 100 % of
a core). A writer process gives the write its own core: the merging process prepares the rows (plain
values, see :class:`~mona_collector.store.PreparedWrite`) and sends them; the writer, the only one to
write the database, commits them in order and answers each. It also encodes the report's side-table
rows, from the documents it writes (``SQLiteStore.report_rows_at_write``), so that this work too is
done on its core and not the merger's; the codes of their names and labels are then the writer's alone.

The writer is a child of the merger, reached through its standard input and output (length-prefixed
pickles: both ends are this program). When it dies, every transaction not answered fails as a
storage failure: the merger stops and is restarted from what is committed, so nothing is skipped. When
the merger dies, the writer reads the end of its input, finishes the transaction it is writing (a
transaction is committed whole or not at all) and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Deque, List, NamedTuple, Optional, Protocol, Type

from ..store import ArcStore, PreparedWrite, SQLiteStore, StoreError, StoreUnavailable, WriteSet, is_storage_failure

log = logging.getLogger("mona_collector")

_LENGTH = struct.Struct(">I")


class Committer(Protocol):
    """Writes the merger's transactions, in the order given, in the background."""

    def commit(self, changes: WriteSet) -> Future[None]:
        """Start writing ``changes`` (frozen by the store); the future says when it is committed."""

    def close(self) -> None:
        """Wait for what was given, then release what writes."""


class ThreadCommitter:
    """Writes on a thread of the merger (stores whose driver waits outside Python)."""

    def __init__(self, store: ArcStore) -> None:
        self._store = store
        self._thread = ThreadPoolExecutor(1, "mona-merger-commit")

    def commit(self, changes: WriteSet) -> Future[None]:
        return self._thread.submit(self._store.write, changes)

    def close(self) -> None:
        self._thread.shutdown(wait=True)


class WriteRefusedError(Exception):
    """The writer could not write a transaction for what it holds (not for the storage): the merger
    merges it again row by row."""


class _Answer(NamedTuple):
    """The writer's answer to one transaction (sent as a plain tuple)."""

    #: "" when committed, else "storage" (the storage failed), "store" (a StoreError) or "data".
    failure: str
    message: str


class WriterProcess:
    """Writes on a child process (:func:`main`) to the database of ``store``, which prepares the
    rows here."""

    #: The module and function the child runs (a measurement may run a variant of :func:`main`).
    ENTRY_POINT = ("mona_collector.merging.writer", "main")

    def __init__(self, store: SQLiteStore, synchronous: str = "FULL") -> None:
        self._store = store
        # The writer encodes the report's side-table rows from the documents it writes: on its core.
        store.report_rows_at_write = True
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from {0} import {1}; sys.exit({1}())".format(*self.ENTRY_POINT),
                "--db",
                str(store.path),
                "--synchronous",
                synchronous,
                "--log-level",
                str(log.getEffectiveLevel()),  # a number: a custom level has no name to pass
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._to_writer: IO[bytes] = self._process.stdin
        self._from_writer: IO[bytes] = self._process.stdout
        self._lock = threading.Lock()
        self._waiting: Deque[Future[None]] = deque()
        self._gone: Optional[str] = None  # why the writer can take nothing more
        self._reader = threading.Thread(target=self._read_answers, name="mona-merger-writer", daemon=True)
        self._reader.start()

    def commit(self, changes: WriteSet) -> Future[None]:
        future: Future[None] = Future()
        try:
            blob = pickle.dumps(self._store.prepare_write(changes), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # a row that cannot be sent is a row that cannot be written
            future.set_exception(WriteRefusedError(f"{type(exc).__name__}: {exc}"))
            return future
        with self._lock:
            if self._gone is None:
                self._waiting.append(future)
                try:
                    self._to_writer.write(_LENGTH.pack(len(blob)))
                    self._to_writer.write(blob)
                    self._to_writer.flush()
                    return future
                except OSError as exc:
                    self._waiting.pop()
                    self._gone = f"cannot reach the merger's writer process: {exc}"
            future.set_exception(StoreUnavailable(self._gone))
        return future

    def _read_answers(self) -> None:
        try:
            while True:
                blob = _read_message(self._from_writer)
                if blob is None:
                    break
                answer = _Answer(*pickle.loads(blob))
                with self._lock:
                    future = self._waiting.popleft()
                if not answer.failure:
                    future.set_result(None)
                elif answer.failure == "storage":
                    future.set_exception(StoreUnavailable(answer.message))
                elif answer.failure == "store":
                    future.set_exception(StoreError(answer.message))
                else:
                    future.set_exception(WriteRefusedError(answer.message))
        except Exception as exc:  # whatever it is, the merger must hear of it, not wait for ever
            log.error("collector merger: lost its writer process: %s: %s", type(exc).__name__, exc)
            self._process.kill()
        status = self._process.wait()
        with self._lock:
            self._gone = f"the merger's writer process exited (status {status})"
            while self._waiting:
                self._waiting.popleft().set_exception(StoreUnavailable(self._gone))

    def close(self) -> None:
        try:
            self._to_writer.close()  # the writer finishes what it was given, then exits
        except OSError:
            pass
        self._reader.join()
        self._from_writer.close()


def _read_message(stream: IO[bytes]) -> Optional[bytes]:
    """One length-prefixed message, or None at the end of the stream."""
    header = stream.read(_LENGTH.size)
    if not header:
        return None
    if len(header) < _LENGTH.size:
        raise EOFError("the stream ended inside a message")
    (length,) = _LENGTH.unpack(header)
    blob = stream.read(length)
    if len(blob) < length:
        raise EOFError("the stream ended inside a message")
    return blob


def _write_message(stream: IO[bytes], blob: bytes) -> None:
    stream.write(_LENGTH.pack(len(blob)) + blob)
    stream.flush()


def serve(store: SQLiteStore, requests: IO[bytes], answers: IO[bytes]) -> None:
    """Write each transaction read from ``requests`` and answer it on ``answers``, until the end of
    ``requests``."""
    while True:
        blob = _read_message(requests)
        if blob is None:
            return
        prepared: PreparedWrite = pickle.loads(blob)
        failure = message = ""
        try:
            store.write_prepared(prepared)
        except Exception as exc:
            if is_storage_failure(exc):
                failure = "storage"
            elif isinstance(exc, StoreError):
                failure = "store"
            else:
                failure = "data"
            message = f"{type(exc).__name__}: {exc}" if failure == "data" else str(exc)
        answer = (failure, message)
        _write_message(answers, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))


def main(argv: Optional[List[str]] = None, store_class: Type[SQLiteStore] = SQLiteStore) -> int:
    """The merger's writer process, ``--db PATH [--synchronous FULL]`` (see the module doc);
    ``store_class`` is for measurements of a variant of the store."""
    parser = argparse.ArgumentParser(prog="mona-merger-writer")
    parser.add_argument("--db", required=True)
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--log-level", type=int, default=logging.INFO)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the merger decides
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    requests = os.fdopen(sys.stdin.fileno(), "rb", closefd=False)
    answers = os.fdopen(sys.stdout.fileno(), "wb", closefd=False)
    try:
        store = store_class(args.db, synchronous=args.synchronous)
    except StoreError as exc:
        log.error("collector merger: its writer cannot open the database: %s", exc)
        return 1
    store.report_rows_at_write = True
    try:
        try:
            serve(store, requests, answers)
        finally:
            store.close()
    except (OSError, EOFError) as exc:  # the merger is gone mid-message: nothing half-written
        log.warning("collector merger: its writer lost the merger: %s", exc)
    except Exception as exc:  # one line, no traceback: the merger hears of it and is restarted
        log.error("collector merger: its writer stopped: %s: %s", type(exc).__name__, exc)
        return 1
    return 0
