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

Bound: ``max_bytes`` for the whole directory. A chunk that does not fit is not written: it is
dropped and counted, because a full disk must not stop the program being monitored. The oldest
records are the ones kept.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import List, Optional, Tuple

from .logs import RateLimitedLog, logger

__all__ = ["Spool", "SpooledChunk"]

_SUFFIX = ".chunk"
_CLAIMED = ".claimed"


class SpooledChunk:
    """A claimed spool file: its entries, ready to send, and what to do once acked."""

    __slots__ = ("path", "entries", "count")

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
        self._log = RateLimitedLog()
        self.spooled_records = 0
        self.replayed_records = 0
        self.dropped_records = 0
        self._ready = False
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

    def _names(self) -> List[str]:
        try:
            return sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []

    def size_bytes(self) -> int:
        total = 0
        for name in self._names():
            try:
                total += os.stat(os.path.join(self.directory, name)).st_size
            except FileNotFoundError:
                pass
        return total

    def pending_records(self) -> int:
        """Records in files not yet claimed by anyone (another process's claims are its own)."""
        return sum(_count_of(name) for name in self._names() if name.endswith(_SUFFIX))

    # --- writing ---------------------------------------------------------------------------------

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
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._sequence):08d}-{count}{_SUFFIX}"
        final = os.path.join(self.directory, name)
        temporary = final + ".tmp"
        try:
            with open(temporary, "wb") as f:
                f.write(entries)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, final)
        except OSError as exc:
            self.dropped_records += count
            self._log.log(logging.ERROR, "spool-write", "mona-client cannot write to spool %s: %s", self.directory, exc)
            try:
                os.unlink(temporary)
            except OSError:
                pass
            return False
        self.spooled_records += count
        return True

    # --- replaying -------------------------------------------------------------------------------

    def claim_next(self) -> Optional[SpooledChunk]:
        """Claim the oldest unclaimed file (taking back claims of dead processes first)."""
        if not self._ready and not os.path.isdir(self.directory):
            return None
        for name in self._names():
            path = os.path.join(self.directory, name)
            if name.endswith(_CLAIMED):
                self._reclaim_if_orphaned(path, name)
                continue
            if name.endswith(".tmp"):
                self._remove_stale_tmp(path, name)
                continue
            if not name.endswith(_SUFFIX):
                continue
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
            return SpooledChunk(claimed, entries, _count_of(name))
        return None

    def done(self, chunk: SpooledChunk) -> None:
        """The chunk was acked: its file goes."""
        self.replayed_records += chunk.count
        try:
            os.unlink(chunk.path)
        except FileNotFoundError:
            pass

    def release(self, chunk: SpooledChunk) -> None:
        """Give a claimed file back (for this or another process to send later)."""
        original = _unclaimed_path(chunk.path)
        try:
            os.rename(chunk.path, original)
        except OSError:
            pass

    def _reclaim_if_orphaned(self, path: str, name: str) -> None:
        original, tag = _split_claim(path)
        pid = _pid_of(tag)
        if tag == self._claim_tag or (pid is not None and pid != os.getpid() and _alive(pid)):
            return
        try:
            os.rename(path, original)
            logger.info("mona-client took back spool file %s of an ended process", os.path.basename(original))
        except OSError:
            pass

    def _remove_stale_tmp(self, path: str, name: str) -> None:
        # A .tmp file older than a minute belongs to a process killed while writing it.
        try:
            if time.time() - os.stat(path).st_mtime > 60:
                os.unlink(path)
        except OSError:
            pass


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
