"""The implementation behind the :mod:`mona_client.client` facade: one process-wide :class:`Runtime`.

It ties the parts together: settings from the environment, the hot-reloaded config file (the
``disable_all`` kill switch), the context stack, the encoder and the sender. It starts lazily on first
use, flushes at interpreter exit within a bound, and gives a forked child its own sender and locks.
Children of :mod:`multiprocessing` started by fork or forkserver end with ``os._exit`` (no atexit): they
flush within the same bound from a ``multiprocessing.util.Finalize`` hook, which those children run
just before they end.

Error policy: a monitoring library must not break the program it monitors. Every public operation
catches its own failures, logs a clear line on ``mona-logger`` and returns a falsy value, unless
``MONA_SHOULD_RAISE_EXCEPTIONS`` (or ``init_client(should_raise_exceptions=True)``) asks for a
:class:`~mona_client.export.MonaExportException` instead.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, Iterable, Mapping, Optional, Set

from . import context as ctx
from .config import ConfigWatcher, Settings, settings_from_env
from .export import EntryEncoder, MonaExportException, check_export_timestamp, check_message, pack_message
from .logs import configure_logging, logger, rate_limited
from .record import ARC_CLASS_KEY, GLOBALS_KEY, INVALID_EXPORT_TIMESTAMP_KEY, RESERVED_PREFIX
from .spool import Spool
from .transport import Sender, client_ssl_context

__all__ = ["Runtime", "runtime"]

_time = time.time


class Runtime:
    """Process-wide client state. Use the functions of :mod:`mona_client.client`, not this class."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.started = False
        # True while started and not disabled: the one attribute the hot paths read.
        self.active = False
        self.settings: Optional[Settings] = None
        self.user_id = ""
        self._encoder = EntryEncoder("")
        self._arc_class_messages: Dict[str, bytes] = {}
        self.should_raise = False
        self.env_disabled = False
        self.file_disabled = False
        self.global_init_message: Optional[Dict[str, Any]] = None
        self.max_context_depth = 64  # MONA_MAX_CONTEXT_DEPTH, read by the sub-context blocks
        self.sender: Optional[Sender] = None
        self.watcher: Optional[ConfigWatcher] = None
        self._atexit_registered = False
        self._exited = False  # after the exit flush nothing starts again
        self._multiprocessing_hooked = False
        self._child_exit_flush_pid: Optional[int] = None  # the process whose exit flush is hooked
        self._spool_problems_logged: Set[str] = set()
        self._new_record_source()

    # --- life cycle -----------------------------------------------------------------------------

    def start(self, overrides: Optional[Mapping[str, Any]] = None) -> None:
        """(Re)configure from the environment plus ``overrides`` and start the sender and watcher."""
        with self._lock:
            if self.started:
                self._stop_parts(flush_timeout=self.settings.flush_timeout if self.settings else 1.0)
            # Lines about bad environment values must be seen even before MONA_PRINT_LOGS is read.
            configure_logging(print_logs=True)
            settings = settings_from_env()
            if overrides:
                settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
            self.settings = settings
            rate_limited.reset()
            configure_logging(settings.logging_level, settings.print_logs)
            self.user_id = settings.user_id
            self._encoder = EntryEncoder(settings.user_id, settings.max_record_bytes)
            self.should_raise = settings.should_raise_exceptions
            self.env_disabled = settings.disable_all
            self.max_context_depth = settings.max_context_depth
            self.sender = self._new_sender(settings)
            self.sender.replay_spool()
            self.watcher = ConfigWatcher(settings.config_file, self._on_config)
            self.started = True
            self._update_active()
            self.watcher.start()
            if settings.handle_sigterm:
                self._install_sigterm_handler()
            if not self._atexit_registered:
                atexit.register(self._at_exit)
                os.register_at_fork(after_in_child=self._after_fork_in_child)
                self._atexit_registered = True
            self._hook_multiprocessing()

    def ensure_started(self) -> bool:
        if not self.started and not self._exited:
            try:
                with self._lock:  # two threads' first calls must not start it twice
                    if not self.started:
                        self.start()
            except Exception:
                logger.exception("mona-client could not start; exports are dropped")
                return False
        return self.active

    def _new_sender(self, settings: Settings) -> Sender:
        # One spool folder per destination: records spooled for one forwarder are never replayed
        # to another by a process of a different service.
        spool_dir = os.path.join(settings.spool_dir, f"{settings.host}-{settings.port}")
        spool: Optional[Spool] = Spool(spool_dir, settings.spool_max_bytes)
        problem = spool.unusable_reason() if spool is not None else None
        if problem is not None:
            if spool_dir not in self._spool_problems_logged:  # once per process and folder, not per call
                self._spool_problems_logged.add(spool_dir)
                logger.error(
                    "mona-client cannot use the spool directory %s (%s); running without a spool: records "
                    "the forwarder has not taken wait in memory only (set MONA_SPOOL_DIR to a writable "
                    "directory)",
                    spool_dir,
                    problem,
                )
            spool = None
        ssl_context = None
        if settings.tls:
            ssl_context = client_ssl_context(
                settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file, settings.tls_verify
            )
        return Sender(
            settings.host,
            settings.port,
            blocking=settings.blocking,
            spool=spool,
            chunk_bytes=settings.max_chunk_bytes,
            max_queue_bytes=settings.max_queue_bytes,
            ssl_context=ssl_context,
            shared_key=settings.shared_key,
        )

    def _install_sigterm_handler(self) -> None:
        """On SIGTERM, put what is still in memory into the spool before the process dies.

        Installed only where SIGTERM would otherwise kill the process outright (the default handler)
        and only from the main thread; the process still ends by SIGTERM afterwards, as it would have.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):  # not the main interpreter, or no signals here
            return

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        sender = self.sender
        if sender is not None:
            try:
                sender.spill(everything=True)
            except Exception:
                logger.exception("mona-client could not spool on SIGTERM")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def _on_config(self, config: Mapping[str, Any]) -> None:
        disabled = bool(config.get("disable_all", False))
        if disabled != self.file_disabled:
            logger.info("mona-client %s by the config file", "disabled" if disabled else "enabled")
        self.file_disabled = disabled
        self._update_active()
        if self.active and ctx.opened_while_off:
            self._export_contexts_opened_while_off()

    def _export_contexts_opened_while_off(self) -> None:
        """Turned on again: the exports of the contexts opened while off whose blocks are still open."""
        pending = ctx.opened_while_off
        for key in list(pending):
            opened = pending.pop(key, None)  # a block may take it at the same time: one of the two does
            if opened is not None:
                stack, root, export_timestamp = opened
                try:
                    self.open_context_exports(stack[-1][0], stack[-1][1], root, export_timestamp)
                except MonaExportException:  # raising is on: already said; the other contexts go on
                    continue

    def _update_active(self) -> None:
        self.active = self.started and not (self.env_disabled or self.file_disabled)

    def _default_timeout(self, timeout: Optional[float]) -> float:
        """``timeout``, or MONA_FLUSH_TIMEOUT when None: what is not acked by then is safe in the spool."""
        if timeout is not None:
            return timeout
        return self.settings.flush_timeout if self.settings is not None else Settings.flush_timeout

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything was delivered, at most ``timeout`` (default MONA_FLUSH_TIMEOUT) seconds."""
        self.ensure_started()
        sender = self.sender
        return sender.flush(self._default_timeout(timeout)) if sender is not None else True

    def close(self, timeout: Optional[float] = None) -> bool:
        """Flush within ``timeout`` (default MONA_FLUSH_TIMEOUT) and stop; a later API call starts again."""
        with self._lock:
            if not self.started:
                return True
            delivered = self._stop_parts(self._default_timeout(timeout))
            self.started = False
            self._update_active()
            return delivered

    def _stop_parts(self, flush_timeout: Optional[float]) -> bool:
        delivered = True
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.sender is not None:
            delivered = self.sender.close(flush_timeout)
            if not delivered:
                spool = self.sender.spool
                logger.warning(
                    "mona-client closed with %d records not delivered yet%s",
                    self.sender.pending(),
                    f"; they wait in the spool {spool.directory}" if spool is not None else "",
                )
            self.sender = None
        return delivered

    def _at_exit(self) -> None:
        self._exited = True
        if self.started:
            timeout = self.settings.flush_timeout if self.settings else 5.0
            self.close(timeout)

    def _hook_multiprocessing(self) -> None:
        """Make children of :mod:`multiprocessing` flush before they end (they skip atexit).

        A forked child (start method fork) runs the after-fork hooks of ``multiprocessing.util`` after
        clearing its finalizers: the hook registered here adds the exit flush there. A child that
        started the client itself (forkserver, or fork with a client started late) adds it at start.
        Nothing is done in a program that does not use multiprocessing.
        """
        if "multiprocessing" not in sys.modules:
            return
        import multiprocessing.process as process
        import multiprocessing.util as util

        if not self._multiprocessing_hooked:
            self._multiprocessing_hooked = True  # inherited by forked children, as the hook is
            util.register_after_fork(self, Runtime._on_multiprocessing_fork)
        if process.parent_process() is not None:
            self._register_child_exit_flush()

    def _on_multiprocessing_fork(self) -> None:
        if self.started:
            self._register_child_exit_flush()

    def _register_child_exit_flush(self) -> None:
        util = sys.modules.get("multiprocessing.util")
        if util is not None and self._child_exit_flush_pid != os.getpid():
            self._child_exit_flush_pid = os.getpid()
            util.Finalize(None, self._at_child_exit, exitpriority=0)

    def _at_child_exit(self) -> None:
        """The exit flush of a multiprocessing child: bounded by MONA_FLUSH_TIMEOUT, then spooled."""
        try:
            self._at_exit()
        except Exception:
            logger.exception("mona-client could not flush at the end of this process")

    def _after_fork_in_child(self) -> None:
        # The parent keeps delivering what it queued; the child starts empty, with new locks, its
        # own record ids and its own sender thread (threads do not survive fork). Every lock of the
        # parent may have been held by one of its other threads at the fork: none is reused.
        self._lock = threading.RLock()
        self._new_record_source()
        self._hook_multiprocessing()  # multiprocessing may have been imported after start()
        if self.started and self.settings is not None:
            self.sender = self._new_sender(self.settings)
            self.sender.replay_spool()
            self.watcher = ConfigWatcher(self.settings.config_file, self._on_config)
            self.watcher.start()

    def _new_record_source(self) -> None:
        self._record_source = os.urandom(8).hex() + ":"
        self._record_counter = itertools.count(1)

    def stats(self) -> Dict[str, Any]:
        sender_stats = self.sender.stats() if self.sender is not None else {}
        return {"active": self.active, "started": self.started, **sender_stats}

    # --- errors ---------------------------------------------------------------------------------

    def fail(self, key: str, message: str) -> bool:
        """Report a refused call: raise when asked to, otherwise one rate-limited error line."""
        if self.should_raise:
            raise MonaExportException(message)
        # Keyed by the text too: distinct problems each get their line, a repeated one is held back.
        rate_limited.log(logging.ERROR, f"{key}:{message}", "mona-client: %s", message)
        return False

    # --- exports --------------------------------------------------------------------------------

    def export(self, message: Any, export_timestamp: Any = None) -> bool:
        """Export KAPIs and dimensions into the current context. Returns True when accepted.

        ``message`` is a mapping of JSON-able values (numpy values, datetimes, Decimal, UUID and Enum
        are converted; see :mod:`mona_client.export`). Keys starting with ``MONA_`` are reserved and
        dropped with a warning. ``export_timestamp`` is in seconds since the epoch; an invalid one is
        replaced by now and kept in ``MONA_INVALID_EXPORT_TIMESTAMP``. The message is encoded at once
        (mutating it afterwards changes nothing) and sent in the background.

        This is ``mona_client.client.export``.
        """
        if not self.active and not self.ensure_started():
            return False
        stack = ctx.current_stack()
        if not stack:
            return self.fail(
                "outside-context",
                "export() called outside any mona context; open one with new_mona_context()",
            )
        return self.export_to(stack[-1][0], message, export_timestamp)

    def export_to(self, context_id: str, message: Any, export_timestamp: Any = None) -> bool:
        """Export ``message`` into the context with the given full id (the caller checked ``active``).

        This is the hot path of every export: one pass, no helper calls for a plain dict.
        """
        try:
            # A plain dict whose keys hold no reserved prefix needs no copy: joining the keys is far
            # cheaper than testing each one, and a non-str key makes join raise (the slow path).
            if type(message) is not dict or RESERVED_PREFIX in "\n".join(message):
                message = self._checked_copy(message)
            now = int(_time())
            if export_timestamp is None:
                timestamp = now
            else:
                timestamp, invalid = check_export_timestamp(export_timestamp, now)
                if invalid is not None:
                    message = {**message, INVALID_EXPORT_TIMESTAMP_KEY: invalid}
            entry = self._encoder.encode(
                timestamp, context_id, message, f"{self._record_source}{next(self._record_counter)}"
            )
        except MonaExportException as exc:
            return self.fail("bad-message", str(exc))
        except Exception as exc:
            return self.fail("bad-message", f"message is not a mapping of JSON-able values ({type(exc).__name__})")
        sender = self.sender
        return sender.put(entry) if sender is not None else False

    @staticmethod
    def _checked_copy(message: Any) -> Dict[str, Any]:
        checked, dropped = check_message(message)
        if dropped:
            rate_limited.log(
                logging.WARNING,
                "reserved-keys",
                "mona-client: dropped reserved keys %s from an export (MONA_ is reserved)",
                dropped,
            )
        return checked

    def export_reserved(self, context_id: str, message: Mapping[str, Any], export_timestamp: Any) -> None:
        """Export the client's own ``MONA_*`` keys (arc class, globals) without the reserved-key check."""
        if export_timestamp is None:
            timestamp = int(_time())
        else:
            timestamp, invalid = check_export_timestamp(export_timestamp, int(_time()))
            if invalid is not None:
                message = {**message, INVALID_EXPORT_TIMESTAMP_KEY: invalid}
        try:
            entry = self._encoder.encode(
                timestamp, context_id, message, f"{self._record_source}{next(self._record_counter)}"
            )
        except MonaExportException as exc:
            self.fail("bad-globals", f"cannot export {list(message)}: {exc}")
            return
        sender = self.sender
        if sender is not None:
            sender.put(entry)

    def export_batch(self, events: Iterable[Mapping[str, Any]]) -> bool:
        """Export several messages; each may name its own ``context_id`` and ``arc_class``."""
        if not self.active and not self.ensure_started():
            return False
        ok = True
        try:
            for event in events:
                ok = self._export_batch_event(event) and ok
        except MonaExportException:
            raise
        except Exception as exc:
            return self.fail("bad-batch", f"export_batch() takes an iterable of event mappings ({type(exc).__name__})")
        return ok

    def _export_batch_event(self, event: Any) -> bool:
        if not isinstance(event, Mapping) or "message" not in event:
            return self.fail("bad-batch", f"a batch event must be a mapping with 'message', not {type(event).__name__}")
        context_id = event.get("context_id") or ctx.get_full_context_id()
        if not context_id:
            return self.fail("outside-context", "a batch event has no context_id and no context is open")
        arc_class = event.get("arc_class")
        if arc_class is not None:
            self.export_reserved(str(context_id), {ARC_CLASS_KEY: arc_class}, event.get("export_timestamp"))
        return self.export_to(str(context_id), event["message"], event.get("export_timestamp"))

    def set_global_init_message(self, message: Optional[Mapping[str, Any]]) -> bool:
        if message is None:
            self.global_init_message = None
            return True
        try:
            checked, _ = check_message(message)
            # Packed now with the checks of export(): a value export() refuses is refused here, rather
            # than silently failing the class and globals of every ARC opened afterwards.
            self._encoder.pack_checked({GLOBALS_KEY: checked})
        except MonaExportException as exc:
            return self.fail("bad-globals", f"set_global_init_message() refused: {exc}")
        self.global_init_message = checked
        return True

    def open_context_exports(self, context_id: str, arc_class: Optional[str], root: bool, ts: Any) -> None:
        """What a newly opened (sub-)context exports about itself."""
        if ts is None and (not root or self.global_init_message is None) and type(arc_class) is str:
            # The common case, on the path of every context: an arc class alone, its message packed once.
            packed = self._arc_class_messages.get(arc_class)
            if packed is None:
                if len(self._arc_class_messages) > 10_000:  # classes are few; ids used as classes are not
                    self._arc_class_messages.clear()
                packed = self._arc_class_messages[arc_class] = pack_message({ARC_CLASS_KEY: arc_class})
            try:
                entry = self._encoder.encode_packed(
                    int(_time()), context_id, packed, f"{self._record_source}{next(self._record_counter)}"
                )
            except MonaExportException as exc:  # an arc class larger than MONA_MAX_RECORD_BYTES
                self.fail("bad-arc-class", f"the arc class of a new context is not exported: {exc}")
                return
            sender = self.sender
            if sender is not None:
                sender.put(entry)
            return
        message: Dict[str, Any] = {}
        if arc_class is not None:
            message[ARC_CLASS_KEY] = arc_class
        if root and self.global_init_message is not None:
            message[GLOBALS_KEY] = self.global_init_message
        if message:
            self.export_reserved(context_id, message, ts)


runtime = Runtime()
