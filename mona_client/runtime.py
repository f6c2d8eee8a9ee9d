"""The implementation behind the :mod:`mona_client.client` facade: one process-wide :class:`Runtime`.

It is the client's life cycle: settings from the environment, the hot-reloaded config file (the
``disable_all`` kill switch), the sender, and the one export pipeline
(:class:`~mona_client.pipeline.ExportPipeline`) every export goes through. It starts lazily on first
use, flushes at interpreter exit within a bound, and gives a forked child its own sender and locks.
Children of :mod:`multiprocessing` started by fork or forkserver end with ``os._exit`` (no atexit): they
flush within the same bound from a ``multiprocessing.util.Finalize`` hook, which those children run
just before they end.

Error policy: a monitoring library must not break the program it monitors. Every public operation
catches its own failures, logs a clear line on ``mona-logger`` and returns a falsy value, unless
``MONA_SHOULD_RAISE_EXCEPTIONS`` (or ``init_client(should_raise_exceptions=True)``) asks for a
:class:`~mona_client.export.MonaExportException` instead (see :meth:`ExportPipeline.fail`).
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import itertools
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, FrozenSet, Iterable, Mapping, Optional, Set

from . import context as ctx
from .config import ConfigWatcher, Settings, settings_from_env
from .export import EntryEncoder, MonaExportException
from .logs import configure_logging, logger, rate_limited
from .pipeline import GLOBALS_REFUSED, ExportPipeline
from .record import ARC_CLASS_KEY, DURATION_MS_KEY, EXCEPTION_MESSAGE_KEY, EXCEPTION_TYPE_KEY
from .sampling import SampledOutStack, keep, root_of, sampling_rate
from .sender_options import SenderOptions
from .spool import Spool
from .transport import Sender

__all__ = ["Runtime", "exception_text", "exception_type_name", "runtime"]

RUN_FACTS_REFUSED = "bad-run-facts"


def exception_type_name(exc: BaseException) -> str:
    """``ValueError`` for a builtin, ``module.QualName`` otherwise: enough to tell two apart."""
    cls = type(exc)
    module = getattr(cls, "__module__", "")
    return cls.__qualname__ if module in ("builtins", "") else f"{module}.{cls.__qualname__}"


def exception_text(exc: BaseException, max_chars: int) -> str:
    """``str(exc)`` cut to ``max_chars`` characters (an exception's ``__str__`` may itself fail)."""
    try:
        text = str(exc)
    except Exception:
        text = f"<{type(exc).__name__} whose str() failed>"
    return text[:max_chars]


class Runtime:
    """Process-wide client state. Use the functions of :mod:`mona_client.client`, not this class."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.started = False
        # True while started and not disabled: the one attribute the hot paths read.
        self.active = False
        #: True while off by the config file only (:meth:`may_turn_on_again`): the one attribute a
        #: block entered while off reads to know that it must still push its context.
        self.paused = False
        self.settings: Optional[Settings] = None
        #: The one way every export goes; the same object for the life of the process.
        self.pipeline = ExportPipeline()
        self.pipeline.start = self.ensure_started
        self.env_disabled = False
        self.file_disabled = False
        self.max_context_depth = 64  # MONA_MAX_CONTEXT_DEPTH, read by the sub-context blocks
        self.max_context_id_chars = 256  # MONA_MAX_CONTEXT_ID_CHARS, read where an id is continued
        self.export_exceptions = True  # MONA_EXPORT_EXCEPTIONS, read when a block exits by an exception
        self.exception_message_max_chars = 1000  # MONA_EXCEPTION_MESSAGE_MAX_CHARS
        #: The config file's ``duration_classes``: contexts of these classes export MONA_DURATION_MS.
        self.duration_classes: FrozenSet[str] = frozenset()
        #: The config file's ``sample_rate`` and ``sample_rates``; ``sampling`` is True when any is below 1,
        #: the one attribute a new context reads when nothing is sampled.
        self.sample_rate = 1.0
        self.sample_rates: Dict[str, float] = {}
        self.sampling = False
        self._sampled_out = itertools.count()
        self.watcher: Optional[ConfigWatcher] = None
        self._atexit_registered = False
        self._exited = False  # after the exit flush nothing starts again
        self._multiprocessing_hooked = False
        self._child_exit_flush_pid: Optional[int] = None  # the process whose exit flush is hooked
        self._spool_problems_logged: Set[str] = set()

    @property
    def sender(self) -> Optional[Sender]:
        """The sender exports are put into (None before start and after close)."""
        return self.pipeline.sender

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
            self.env_disabled = settings.disable_all
            self.max_context_depth = settings.max_context_depth
            self.max_context_id_chars = settings.max_context_id_chars
            self.export_exceptions = settings.export_exceptions
            self.exception_message_max_chars = settings.exception_message_max_chars
            sender = self._new_sender(settings)
            encoder = EntryEncoder(settings.user_id, settings.max_record_bytes)
            self.pipeline.configure(encoder, settings.should_raise_exceptions, sender)
            sender.replay_spool()
            self.watcher = ConfigWatcher(settings.config_file, self._on_config)
            self.started = True
            self._update_active()
            self.watcher.start()
            if settings.handle_sigterm:
                self._install_sigterm_handler()
            if not self._atexit_registered:
                atexit.register(self._at_exit)
                if hasattr(os, "register_at_fork"):  # POSIX only
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
        return Sender(SenderOptions.from_settings(settings), spool)

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
        self.duration_classes = frozenset(config.get("duration_classes", ()))
        self.sample_rate = float(config.get("sample_rate", 1.0))
        self.sample_rates = {str(k): float(v) for k, v in config.get("sample_rates", {}).items()}
        self.sampling = self.sample_rate < 1.0 or any(rate < 1.0 for rate in self.sample_rates.values())
        # Blocks opened while off and still open make the exports they owe lazily (see OffStack).
        self._update_active()

    def _update_active(self) -> None:
        self.active = self.started and not (self.env_disabled or self.file_disabled)
        self.paused = self.may_turn_on_again()
        # The pipeline's copies, which export() reads: nothing to start once started (or exiting).
        self.pipeline.dormant = self.started or self._exited
        self.pipeline.active = self.active

    def off_by_config_file(self) -> bool:
        """True while the config file's ``disable_all`` has the client off."""
        return self.file_disabled

    def may_turn_on_again(self) -> bool:
        """Off by the config file only, which may turn the client on again while a block is open."""
        return self.file_disabled and self.started and not self.env_disabled

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
        sender = self.pipeline.sender
        if sender is not None:
            delivered = sender.close(flush_timeout)
            if not delivered:
                spool = sender.spool
                logger.warning(
                    "mona-client closed with %d records not delivered yet%s",
                    sender.pending(),
                    f"; they wait in the spool {spool.directory}" if spool is not None else "",
                )
            self.pipeline.sender = None
        return delivered

    def _at_exit(self) -> None:
        self._exited = True
        self._update_active()
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
        self.pipeline.new_record_source()
        self._hook_multiprocessing()  # multiprocessing may have been imported after start()
        if self.started and self.settings is not None:
            sender = self.pipeline.sender = self._new_sender(self.settings)
            sender.replay_spool()
            self.watcher = ConfigWatcher(self.settings.config_file, self._on_config)
            self.watcher.start()

    def keeps(self, context_id: str, arc_class: Optional[str]) -> bool:
        """Whether the sampling of the config file keeps the ARC of ``context_id`` (a full id); counts
        the ARCs it does not keep. :func:`mona_client.sampling.keep` of the root id and the class's rate,
        in one call: it is on the path of every root context while sampling is on."""
        rate = sampling_rate(arc_class, self.sample_rate, self.sample_rates)
        if rate >= 1.0 or (rate > 0.0 and keep(root_of(context_id), rate)):
            return True
        next(self._sampled_out)  # atomic under the GIL, as a += on an attribute is not
        return False

    def stats(self) -> Dict[str, Any]:
        sender_stats = self.sender.stats() if self.sender is not None else {}
        # A copy of the counter tells its next value without taking it.
        sampled_out = next(copy.copy(self._sampled_out))
        return {"active": self.active, "started": self.started, "sampled_out": sampled_out, **sender_stats}

    # --- exports --------------------------------------------------------------------------------

    def export(self, message: Any, export_timestamp: Any = None) -> bool:
        """Export KAPIs and dimensions into the current context. Returns True when accepted.

        ``message`` is a mapping of JSON-able values (numpy values, datetimes, Decimal, UUID and Enum
        are converted; see :mod:`mona_client.export`). Keys starting with ``MONA_`` are reserved and
        dropped with a warning. ``export_timestamp`` is in seconds since the epoch; an invalid one is
        replaced by now and kept in ``MONA_INVALID_EXPORT_TIMESTAMP``. The message is encoded at once
        (mutating it afterwards changes nothing) and sent in the background.

        ``mona_client.client.export`` is the pipeline's own method
        (:meth:`~mona_client.pipeline.ExportPipeline.export`), which this calls: a call less on the
        hot path.
        """
        return self.pipeline.export(message, export_timestamp)

    def export_run_facts(self, stack: ctx.Stack, exc: Optional[BaseException], started: float) -> None:
        """What a context exports about its run as it exits: the exception it exits by (an
        ``Exception``, when MONA_EXPORT_EXCEPTIONS is on) and its duration (``started`` is the
        ``perf_counter`` at entry, 0.0 when not measured). Never raises: the block's own exception,
        if any, must reach the caller unchanged."""
        message: Dict[str, Any] = {}
        if started:
            message[DURATION_MS_KEY] = round((time.perf_counter() - started) * 1000.0, 3)
        if exc is not None and self.export_exceptions and isinstance(exc, Exception):
            message[EXCEPTION_TYPE_KEY] = exception_type_name(exc)
            message[EXCEPTION_MESSAGE_KEY] = exception_text(exc, self.exception_message_max_chars)
        if not message or not stack or not self.active:  # a sampled-out stack is false: nothing to say
            return
        try:
            self.pipeline.export_to(stack[-1][0], message, None, RUN_FACTS_REFUSED)
        except Exception as refused:  # raising is on: the block's exit must not raise it
            rate_limited.log(logging.ERROR, "run-facts", "mona-client: run facts not exported: %s", refused)

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
            return self.pipeline.fail(
                "bad-batch", f"export_batch() takes an iterable of event mappings ({type(exc).__name__})"
            )
        return ok

    def _export_batch_event(self, event: Any) -> bool:
        pipeline = self.pipeline
        if not isinstance(event, Mapping) or "message" not in event:
            return pipeline.fail(
                "bad-batch", f"a batch event must be a mapping with 'message', not {type(event).__name__}"
            )
        context_id = event.get("context_id")
        if not context_id:
            stack = ctx.current_stack()
            if type(stack) is ctx.OffStack:  # opened while off, turned on since: what it owes, first
                pipeline.open_owed(stack)
            context_id = stack[-1][0] if stack or type(stack) is ctx.OffStack else ""
        if not context_id:
            if type(ctx.current_stack()) is SampledOutStack:
                return True
            return pipeline.fail("outside-context", "a batch event has no context_id and no context is open")
        arc_class = event.get("arc_class")
        if self.sampling and not self.keeps(str(context_id), arc_class):
            return True
        if arc_class is not None:
            pipeline.export_to(
                str(context_id), {ARC_CLASS_KEY: arc_class}, event.get("export_timestamp"), GLOBALS_REFUSED
            )
        return pipeline.export_to(str(context_id), event["message"], event.get("export_timestamp"))


runtime = Runtime()
