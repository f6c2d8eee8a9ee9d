"""A disk spool for records the forwarder could not take: written in order, replayed in order.

Each spool file holds the entries of one chunk (concatenated msgpack ``[time, record]`` pairs, the
same bytes that go on the wire) and is named ``<time ns>-<sequence>-<count>.chunk``, so a sorted listing
is the order they were written in. Files appear atomically (written under a temporary name, then
renamed), so a process killed mid-write leaves no half file behind, only a ``.tmp`` that is removed.

Several processes may share one spool directory (forked workers, a restarted service). A process
claims a file before sending it by renaming it to ``<name>.<pid>-<token>.claimed``: a rename either
wins or fails, so no two processes send the same file. A claim whose process is gone (or whose pid was
reused by a new process, as after a container restart) is taken back by the next process that looks.
A file is deleted only after its chunk was acked.

A chunk the peer keeps refusing (see :mod:`mona_client.transport`) is moved into the ``dead-letter``
folder inside the spool directory, in the same file format: it is never sent again by itself, and
moving a file back into the spool directory sends it again.

Bound: ``max_bytes`` for the whole directory (the ``dead-letter`` folder aside). A chunk that does
not fit is not written: it is dropped and counted, because a full disk must not stop the program
being monitored. The oldest records are the ones kept.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, List, Optional, Tuple, TypeVar, cast

from .logs import RateLimitedLog, logger

__all__ = ["DEAD_LETTER_DIR", "Spool", "SpooledChunk"]

DEAD_LETTER_DIR = "dead-letter"

_SUFFIX = ".chunk"
_RESCAN_SECONDS = 1.0
_CLAIMED = ".claimed"


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    """Run a method under the spool's lock: the sender thread and a caller whose queue is full may
    both write, and a rescan must not overwrite the counts of a write it did not see."""

    @functools.wraps(method)
    def locked(self: Spool, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return cast(_F, locked)


class SpooledChunk:
    """A claimed spool file: its entries, ready to send, and what to do once acked."""

    __slots__ = ("count", "entries", "path")

    def __init__(self, path: str, entries: bytes, count: int) -> None:
        self.path = path
        self.entries = entries
        self.count = count


class Spool:
    """The spool directory of one process (shared safely with others)."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._sequence = itertools.count()
        # Re-entrant: a SIGTERM handler that spools may interrupt this thread inside a spool call.
        self._lock = threading.RLock()
        self._log = RateLimitedLog()
        self.spooled_records = 0
        self.replayed_records = 0
        self.dropped_records = 0
        self._ready = False
        self._pending = 0
        self._bytes = 0
        self._scanned_at = float("-inf")
        self._claim_tag = f"{os.getpid()}-{os.urandom(4).hex()}"

    def _prepare(self) -> bool:
        if self._ready:
            return True
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            self._log.log(logging.ERROR, "spool-dir", "mona-client cannot create spool %s: %s", self.directory, exc)
            return False
        self._ready = True
        return True

    def unusable_reason(self) -> Optional[str]:
        """None when files can be created in the directory, otherwise why not (checked by writing one)."""
        probe = os.path.join(self.directory, f".probe-{os.getpid()}-{os.urandom(4).hex()}.tmp")
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            with open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def _names(self) -> List[str]:
        try:
            return sorted(os.listdir(self.directory))
        except OSError:  # not there yet, or not a directory at all
            return []

    def _scan(self) -> List[str]:
        """List the folder once: count what waits, take back orphaned claims, remove stale temp files.

        Between scans the counts are kept up to date by this process's own writes and claims, so the
        sender's loop touches the disk only when there is something to do or once a second (another
        process may have left files).
        """
        pending = 0
        total = 0
        names = self._names()
        for name in names:
            if name == DEAD_LETTER_DIR:
                continue
            path = os.path.join(self.directory, name)
            if name.endswith(_CLAIMED) and self._reclaim_if_orphaned(path, name):
                name = _unclaimed_path(name)
                path = os.path.join(self.directory, name)
            elif name.endswith(".tmp"):
                self._remove_stale_tmp(path, name)
            if name.endswith(_SUFFIX):
                pending += _count_of(name)
            try:
                total += os.stat(path).st_size
            except FileNotFoundError:
                pass
        self._pending = pending
        self._bytes = total
        self._scanned_at = time.monotonic()
        return names

    @_locked
    def rescan(self) -> None:
        """Look at the folder now: files another process wrote a moment ago count at once."""
        self._scan()

    def _refresh(self) -> None:
        if time.monotonic() - self._scanned_at > _RESCAN_SECONDS:
            self._scan()

    @_locked
    def size_bytes(self) -> int:
        """Bytes of all spool files (as of the last scan, plus this process's changes since)."""
        self._refresh()
        return self._bytes

    @_locked
    def pending_records(self) -> int:
        """Records in files not yet claimed by anyone (another process's claims are its own)."""
        self._refresh()
        return self._pending

    # --- writing ---------------------------------------------------------------------------------

    @_locked
    def write(self, entries: bytes, count: int) -> bool:
        """Store one chunk's entries; False (and counted as dropped) when it cannot be stored."""
        if not self._prepare():
            self.dropped_records += count
            return False
        if self.size_bytes() + len(entries) > self.max_bytes:
            self.dropped_records += count
            self._log.log(
                logging.ERROR,
                "spool-full",
                "mona-client spool %s is full (%d bytes max): dropping %d records",
                self.directory,
                self.max_bytes,
                count,
            )
            return False
        final = os.path.join(self.directory, self._new_name(count))
        try:
            _write_atomically(final, entries)
        except OSError as exc:
            self.dropped_records += count
            self._log.log(logging.ERROR, "spool-write", "mona-client cannot write to spool %s: %s", self.directory, exc)
            return False
        self.spooled_records += count
        self._pending += count
        self._bytes += len(entries)
        return True

    def _new_name(self, count: int) -> str:
        return f"{time.time_ns():020d}-{os.getpid()}-{next(self._sequence):08d}-{count}{_SUFFIX}"

    # --- replaying -------------------------------------------------------------------------------

    @_locked
    def claim_next(self) -> Optional[SpooledChunk]:
        """Claim the oldest unclaimed file, or None when nothing waits."""
        if self.pending_records() <= 0:
            return None
        for name in self._scan():
            if not name.endswith(_SUFFIX):
                continue
            path = os.path.join(self.directory, name)
            claimed = f"{path}.{self._claim_tag}{_CLAIMED}"
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another process claimed it first
            try:
                with open(claimed, "rb") as f:
                    entries = f.read()
            except OSError as exc:
                self._log.log(logging.ERROR, "spool-read", "mona-client cannot read spool file %s: %s", claimed, exc)
                continue
            count = _count_of(name)
            self._pending -= count
            return SpooledChunk(claimed, entries, count)
        return None

    @_locked
    def done(self, chunk: SpooledChunk) -> None:
        """The chunk was acked: its file goes."""
        self.replayed_records += chunk.count
        try:
            os.unlink(chunk.path)
            self._bytes -= len(chunk.entries)
        except FileNotFoundError:
            pass

    @_locked
    def dead_letter(self, entries: bytes, count: int, claimed: Optional[SpooledChunk]) -> Optional[str]:
        """Keep a chunk the peer refuses in the dead-letter folder; its path, or None when that failed.

        A claimed spool file is moved there; entries only in memory are written there.
        """
        folder = os.path.join(self.directory, DEAD_LETTER_DIR)
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            if claimed is not None:
                target = os.path.join(folder, os.path.basename(_unclaimed_path(claimed.path)))
                os.rename(claimed.path, target)
                self._bytes -= len(claimed.entries)
                return target
            target = os.path.join(folder, self._new_name(count))
            _write_atomically(target, entries)
            return target
        except OSError as exc:
            self._log.log(logging.ERROR, "dead-letter", "mona-client cannot write to %s: %s", folder, exc)
            return None

    @_locked
    def release(self, chunk: SpooledChunk) -> None:
        """Give a claimed file back (for this or another process to send later)."""
        original = _unclaimed_path(chunk.path)
        try:
            os.rename(chunk.path, original)
            self._pending += chunk.count
        except OSError:
            pass

    def _reclaim_if_orphaned(self, path: str, name: str) -> bool:
        """Give a claim of an ended process back to everyone; True when it was taken back."""
        original, tag = _split_claim(path)
        pid = _pid_of(tag)
        if tag == self._claim_tag or (pid is not None and pid != os.getpid() and _alive(pid)):
            return False
        try:
            os.rename(path, original)
        except OSError:
            return False
        logger.info("mona-client took back spool file %s of an ended process", os.path.basename(original))
        return True

    def _remove_stale_tmp(self, path: str, name: str) -> None:
        # A .tmp file older than a minute belongs to a process killed while writing it.
        try:
            if time.time() - os.stat(path).st_mtime > 60:
                os.unlink(path)
        except OSError:
            pass


def _write_atomically(final: str, data: bytes) -> None:
    """Write, fsync, then rename into place: readers never see half a file."""
    temporary = final + ".tmp"
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, final)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _count_of(name: str) -> int:
    try:
        return int(name[: -len(_SUFFIX)].rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def _split_claim(path: str) -> Tuple[str, str]:
    """The unclaimed path and the claim tag ("<pid>-<token>") of a claimed file."""
    original, _, tag = path[: -len(_CLAIMED)].rpartition(".")
    return original, tag


def _pid_of(tag: str) -> Optional[int]:
    try:
        return int(tag.split("-", 1)[0])
    except ValueError:
        return None


def _unclaimed_path(path: str) -> str:
    return _split_claim(path)[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
