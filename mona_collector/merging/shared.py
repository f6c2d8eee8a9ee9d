"""The merger process on a PostgreSQL database that several collectors share.

Every collector starts a merger; only the one holding the merge lock (a PostgreSQL advisory lock,
see :class:`~..postgres_store.PostgresStore`) merges, every collector's rows, from the shared
watermark. The others wait for the lock while their collector runs, and one of them takes over when
the holder's database session ends (its process died, its collector stopped, the database restarted).
A waiting merger told to stop just ends: the rows its collector stored are merged by whoever holds
the lock, or by the next merger to take it.
"""

from __future__ import annotations

import argparse
import logging
import queue

from ..postgres_store import PostgresRawLog, PostgresStore, shown_url
from .process import MergeLoop, _ParentPipe, _serve, start_command_reader
from .protocol import Command, InputClosed, StopAt

log = logging.getLogger("mona_collector")

#: How often a waiting merger asks for the merge lock, in seconds.
LOCK_POLL_SECONDS = 0.25


def run_shared_worker(args: argparse.Namespace, commands: queue.Queue[Command], parent: _ParentPipe) -> None:
    """Wait for the merge lock (ready to the collector at once), then merge like the SQLite merger."""
    url: str = args.db
    store = PostgresStore(url)
    try:
        raw_log = PostgresRawLog(url)
        try:
            start_command_reader(commands)
            parent.report(store.watermark(raw_log.log_id), 0)  # ready: the collector may serve
            if not _wait_for_merge_lock(store, commands, url):
                return
            loop = MergeLoop(store, raw_log, parent.report, cache_bytes=args.cache_bytes, max_depth=args.max_depth)
            _merge_locked(loop, commands, raw_log, parent)
        finally:
            raw_log.close()
    finally:
        store.close()


def _wait_for_merge_lock(store: PostgresStore, commands: queue.Queue[Command], url: str) -> bool:
    """True once this merger holds the lock; False when told to stop (or its collector is gone) first."""
    waiting_logged = False
    while not store.try_merge_lock():
        if not waiting_logged:
            log.info("collector merger: another collector's merger merges into %s; standing by", shown_url(url))
            waiting_logged = True
        try:
            command = commands.get(timeout=LOCK_POLL_SECONDS)
        except queue.Empty:
            continue
        if isinstance(command, (StopAt, InputClosed)):
            return False
        # RowsAppended: nothing to keep, the merger that takes the lock reads from the watermark on.
    if waiting_logged:
        log.info("collector merger: took over merging into %s", shown_url(url))
    return True


def _merge_locked(
    loop: MergeLoop, commands: queue.Queue[Command], raw_log: PostgresRawLog, parent: _ParentPipe
) -> None:
    """:func:`~.process._serve` with the reader already started (the ready line was said)."""
    parent.report(loop.watermark, 0)
    try:
        _serve(loop, commands, raw_log)
    finally:
        loop.close()


__all__ = ["LOCK_POLL_SECONDS", "run_shared_worker"]
