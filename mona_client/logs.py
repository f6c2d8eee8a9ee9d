"""The ``mona-logger`` logger, and a rate limit for log lines on hot paths.

A monitoring library reports its own trouble in log lines rather than exceptions (unless the user
asks for exceptions), so the program it monitors keeps running. On a hot path the same trouble can
repeat a million times a second; :class:`RateLimitedLog` says it once per interval with a count.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from typing import Dict, Tuple

LOGGER_NAME = "mona-logger"
logger = logging.getLogger(LOGGER_NAME)
# A library's lines go where the application sends them, and nowhere when it configured nothing and
# turned MONA_PRINT_LOGS off (without this, Python's last-resort handler would print warnings).
logger.addHandler(logging.NullHandler())

_print_handler: logging.Handler | None = None


def configure_logging(level: str = "INFO", print_logs: bool = True) -> None:
    """Set the level of ``mona-logger`` and whether it prints to stderr by itself.

    With ``print_logs`` off the lines still reach whatever handlers the application configured.
    """
    global _print_handler
    numeric = logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        logger.error("MONA_LOGGING_LEVEL %r is not a logging level; using INFO", level)
        numeric = logging.INFO
    logger.setLevel(numeric)
    if print_logs and _print_handler is None:
        _print_handler = logging.StreamHandler(sys.stderr)
        _print_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(_print_handler)
    elif not print_logs and _print_handler is not None:
        logger.removeHandler(_print_handler)
        _print_handler = None


class RateLimitedLog:
    """Logs a given (level, key) at most once per ``interval`` seconds, counting what it held back.

    It never waits for its lock: a line that finds the lock taken is dropped. That lock is taken
    by ``export()`` and may be held when a signal handler calls ``export()`` on the same thread (it
    would wait for ever) or when another thread forks (the child would find it taken for ever). A
    forked child also gets fresh locks (see ``_new_locks_after_fork``).

    Lines go to ``mona-logger``, or to ``to`` when given (the collector logs to a logger of its own).
    """

    def __init__(self, interval: float = 10.0, to: logging.Logger | None = None) -> None:
        self.interval = interval
        self._logger = logger if to is None else to
        self._lock = threading.Lock()
        self._last: Dict[Tuple[int, str], Tuple[float, int]] = {}
        _instances.add(self)

    def reset(self) -> None:
        if self._lock.acquire(blocking=False):
            try:
                self._last.clear()
            finally:
                self._lock.release()

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if not self._lock.acquire(blocking=False):
            return  # a line lost rather than a wait: see the class docstring
        try:
            if len(self._last) > 1000:  # many distinct keys: forget them rather than grow
                self._last.clear()
            last, held = self._last.get((level, key), (float("-inf"), 0))
            if now - last < self.interval:
                self._last[(level, key)] = (last, held + 1)
                return
            self._last[(level, key)] = (now, 0)
        finally:
            self._lock.release()
        if held:
            message += " (%d similar lines held back)"
            args = (*args, held)
        self._logger.log(level, message, *args)


_instances: weakref.WeakSet[RateLimitedLog] = weakref.WeakSet()


def _new_locks_after_fork() -> None:
    """In a forked child: a lock that another thread of the parent held at the fork stays taken."""
    for instance in list(_instances):
        instance._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_after_fork)

rate_limited = RateLimitedLog()
