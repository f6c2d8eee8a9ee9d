"""The public API of mona-client: open ARCs, export KAPIs and dimensions, configure, flush.

Example::

    from mona_client import client

    with client.new_mona_context(arc_class="MY_COOL_ALGORITHM_NAME"):
        client.export({"foo": "bar"})
        with client.new_mona_sub_context(arc_class="MY_COOL_SUB_COMPONENT_NAME"):
            client.export({"score": 0.93, "segment": "eu"})

Every function here is safe to call from any thread, greenlet or asyncio task. None of them raises
into your program unless you ask for it (``MONA_SHOULD_RAISE_EXCEPTIONS=true``): trouble becomes a
log line on ``mona-logger`` and a ``False``/``""`` return value. With ``disable_all`` on, each is a
cheap no-op.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextvars import Token
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from . import context as _ctx
from .export import MonaExportException
from .logs import logger, rate_limited
from .record import CONTEXT_SEPARATOR
from .runtime import runtime as _runtime
from .sampling import SampledOutStack

_pipeline = _runtime.pipeline

__all__ = [
    "MonaExportException",
    "close",
    "close_sub_context",
    "continue_mona_context",
    "export",
    "export_batch",
    "flush",
    "get_full_context_id",
    "init",
    "init_client",
    "init_sub_context",
    "is_active",
    "new_mona_context",
    "new_mona_sub_context",
    "reset",
    "set_global_init_message",
    "stats",
]


def init_client(
    host: Optional[str] = None,
    port: Optional[int] = None,
    user_id: Optional[str] = None,
    config_file: Optional[str] = None,
    should_raise_exceptions: Optional[bool] = None,
    blocking: Optional[bool] = None,
    logging_level: Optional[str] = None,
    print_logs: Optional[bool] = None,
    flush_timeout: Optional[float] = None,
    spool_dir: Optional[str] = None,
    shared_key: Optional[str] = None,
    tls: Optional[bool] = None,
    tls_ca_file: Optional[str] = None,
    *,
    mona_host: Optional[str] = None,
    mona_port: Optional[int] = None,
    mona_use_ssl: Optional[bool] = None,
    queue_maxsize: Optional[int] = None,
    queue_circular: Optional[bool] = None,
) -> None:
    """Configure and start the client. Optional: the first API call starts it from the environment.

    Each argument left as ``None`` takes its environment variable (``MONA_HOST``, ``MONA_PORT``,
    ``MONA_USER_ID``, ``MONA_CLIENT_CONFIG_FILE``, ...; see docs/configuration.md). Calling it again
    flushes what was queued for the old settings and starts over with the new ones.

    The original client's names still work: ``mona_host``, ``mona_port`` and ``mona_use_ssl`` mean
    ``host``, ``port`` and ``tls``; ``queue_maxsize`` and ``queue_circular`` no longer apply (records
    that do not fit in memory go to the spool, none is dropped) and are accepted with a deprecation
    warning.
    """
    host = _renamed("host", host, "mona_host", mona_host)
    port = _renamed("port", port, "mona_port", mona_port)
    tls = _renamed("tls", tls, "mona_use_ssl", mona_use_ssl)
    if queue_maxsize is not None:
        _deprecated(
            "init_client(queue_maxsize=...) no longer applies and is ignored: the client never drops a "
            "record, what does not fit in memory goes to the spool (MONA_SPOOL_DIR, MONA_SPOOL_MAX_BYTES)"
        )
    if queue_circular is not None:
        _deprecated(
            "init_client(queue_circular=...) no longer applies and is ignored: the client drops neither "
            "the oldest nor the newest record, what does not fit in memory goes to the spool"
        )
    _runtime.start(
        {
            "host": host,
            "port": port,
            "user_id": user_id,
            "config_file": config_file,
            "should_raise_exceptions": should_raise_exceptions,
            "blocking": blocking,
            "logging_level": logging_level,
            "print_logs": print_logs,
            "flush_timeout": flush_timeout,
            "spool_dir": spool_dir,
            "shared_key": shared_key,
            "tls": tls,
            "tls_ca_file": tls_ca_file,
        }
    )


def _renamed(name: str, value: Any, old_name: str, old_value: Any) -> Any:
    """The value of a setting that the original client named ``old_name``; the new name wins."""
    if old_value is None:
        return value
    if value is not None and value != old_value:
        logger.warning("init_client(): both %s=%r and %s=%r given; using %s", name, value, old_name, old_value, name)
        return value
    return old_value


def _deprecated(message: str) -> None:
    """One line for an argument that no longer applies: a DeprecationWarning and a log line (warnings
    of that kind are hidden by default outside ``__main__``, a log line is seen)."""
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    logger.warning("mona-client: %s", message)


#: What a block's entry keeps: the token of its push, the stack pushed, and its start time (0.0: not
#: measured; :data:`_OPENED_WHILE_OFF`: opened while the config file had the client off, the stack
#: pushed is then an :class:`~mona_client.context.OffStack`).
_Entry = Tuple[Token[_ctx.Stack], _ctx.Stack, float]

#: The start time of an entry opened while off: true, so that its exit takes the branch of the rare
#: cases (where it is forgotten by the runtime), and never a real ``perf_counter`` value.
_OPENED_WHILE_OFF = -1.0


class _Block:
    """A ``with`` block that pushes a stack on enter and restores the previous one on exit.

    A class rather than ``@contextmanager``: a generator costs about a microsecond per block, and a
    class keeps the pairing of enter and exit exact however blocks nest or fail. Enter and exit are
    on the path of every ARC: they call :mod:`~mona_client.context`'s functions through module
    globals bound once (``_push``, ``_current_stack``), which are the ContextVar's own methods.

    One block object may be entered again, nested or from several threads at once: its entries form
    a stack whose top is ``_entry`` (None when empty, or when the top entry pushed nothing: the
    client was off, or entering failed; such an entry has nothing to undo, so the two need not be
    told apart) and whose lower entries, rarely any, wait in ``_more``. The common block, entered
    once, so keeps its entry in a slot, without a list.
    """

    __slots__ = ("_entry", "_more")

    def __init__(self) -> None:
        self._entry: Optional[_Entry] = None
        self._more: Optional[List[Optional[_Entry]]] = None

    @property
    def _entries(self) -> List[Optional[_Entry]]:
        """The entries this block holds, oldest first (a copy)."""
        entries = list(self._more or ())
        if self._entry is not None:
            entries.append(self._entry)
        return entries

    def _keep(self, entry: Optional[_Entry]) -> None:
        """Make ``entry`` the top of this block's entries (the last statement of an ``__enter__``).

        An entry that pushed nothing at the very bottom may be overwritten (its exit, the last one,
        finds None all the same); anywhere else it keeps its place.
        """
        top = self._entry
        more = self._more
        if top is None and not more:
            self._entry = entry
            return
        if more is None:
            more = self._more = []
        more.append(top)
        self._entry = entry

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        entry = self._entry
        more = self._more
        self._entry = more.pop() if more else None
        if entry is None:
            return
        if entry[1] is not _current_stack() and (more or self._entry is not None):
            found = self._entry_of_this_context(entry)
            if found is None:
                return
            entry = found
        # A block that neither failed nor measures (nor was opened while off) pays two tests here.
        if exc_type is not None or entry[2]:
            self._exit_rarely(entry, exc)
            return
        try:
            _reset(entry[0])
        except (ValueError, RuntimeError):  # left in another context: restore the saved value
            _ctx.pop(entry[0])

    @staticmethod
    def _exit_rarely(entry: _Entry, exc: Any) -> None:
        """The exit of a block that failed, measures its duration or was opened while off."""
        stack = entry[1]
        started = entry[2]
        if started == _OPENED_WHILE_OFF:
            started = 0.0
            if type(stack) is _OffStack and _runtime.active:
                # Turned on since the block opened, and nothing in it made the exports its contexts
                # owe: made now, so that the ARC is complete, as it is when something was exported.
                _pipeline.open_owed(stack)
                stack = tuple(stack)  # its facts, if any, are exported like those of any context
        if exc is not None or started:
            _runtime.export_run_facts(stack, exc, started)
        try:
            _reset(entry[0])
        except (ValueError, RuntimeError):  # left in another context: restore the saved value
            _ctx.pop(entry[0])

    def _entry_of_this_context(self, last: _Entry) -> Optional[_Entry]:
        """The entry this thread or task pushed, when the last one belongs to another."""
        entries = list(self._more or ())
        entries.append(self._entry)
        entries.append(last)
        current = _current_stack()
        index = len(entries) - 1
        while index > 0 and _stack_of(entries[index]) is not current:
            index -= 1
        found = entries.pop(index)
        self._more = entries[:-1] or None
        self._entry = entries[-1] if entries else None
        return found


def _stack_of(entry: Optional[_Entry]) -> Optional[_ctx.Stack]:
    """The stack a block's entry pushed (None for an entry that pushed nothing)."""
    return entry[1] if entry is not None else None


_push = _ctx.push
_reset = _ctx.reset
_current_stack = _ctx.current_stack
_new_context_id = _ctx.new_context_id
_OffStack = _ctx.OffStack
_perf_counter = time.perf_counter


def get_full_context_id() -> str:
    """The dotted id of the innermost open context; "" outside any, and while the config file has the
    client off (blocks then yield "" too, as a disabled client does)."""
    stack = _current_stack()
    # len(), not truth: a sampled-out context reads as false but has an id, which still propagates.
    return stack[-1][0] if len(stack) and not _runtime.off_by_config_file() else ""


def _enter_sampled_out(block: _Block, frames: _ctx.Stack) -> str:
    """Push the context of an ARC that sampling does not keep: the block runs, its sub-contexts nest,
    its ids propagate, and nothing is exported (its stack reads as "no context" to ``export()``)."""
    stack = SampledOutStack(frames)
    block._keep((_push(stack), stack, 0.0))
    return stack[-1][0]


class new_mona_context(_Block):  # noqa: N801 - used like a function, named as the original API
    """Open a root ARC for the ``with`` block; yields its full context id (``""`` when disabled).

    ``context_id`` continues an existing ARC (even a dotted full id such as ``"root.sub"``), e.g. to
    add ground truth that arrives hours later; otherwise a fresh unique id is made. Opened inside
    another context, it starts an independent ARC for the block and restores the outer one on exit.
    ``export_timestamp`` (seconds) dates the exports the context itself makes (its arc class and the
    global init message). ``ARC_class`` is accepted as an alias of ``arc_class``.

    Leaving the block by an exception exports its type and message (``MONA_EXCEPTION_TYPE``,
    ``MONA_EXCEPTION_MESSAGE``) into the ARC, and the exception goes on unchanged.
    ``measure_duration=True`` exports the block's run time as ``MONA_DURATION_MS`` when it exits;
    ``None`` (the default) measures the classes listed in the config file's ``duration_classes``.
    """

    __slots__ = ("arc_class", "context_id", "export_timestamp", "measure_duration")

    def __init__(
        self,
        arc_class: Optional[str] = None,
        context_id: str = "",
        export_timestamp: Optional[float] = None,
        *,
        ARC_class: Optional[str] = None,  # noqa: N803 - older user code spells it so
        measure_duration: Optional[bool] = None,
    ) -> None:
        self._entry = None
        self._more = None
        self.arc_class = ARC_class if arc_class is None else arc_class
        self.context_id = context_id
        self.export_timestamp = export_timestamp
        self.measure_duration = measure_duration

    def __enter__(self) -> str:
        if not _runtime.active:
            if not _runtime.paused:
                return self._enter_inactive()
            # Off by the config file, which may turn the client on before the block ends: the block
            # pushes its context all the same, as a stack that owes the context's own exports (see
            # OffStack). Exports are refused meanwhile, and it yields "" as a disabled client does.
            context_id = str(self.context_id) if self.context_id else _new_context_id()
            arc_class = self.arc_class
            off = _OffStack(((context_id, arc_class),))
            off.owed = ([(context_id, arc_class, True, self.export_timestamp)],)
            entry: _Entry = (_push(off), off, _OPENED_WHILE_OFF)
            if self._entry is None and self._more is None:
                self._entry = entry
            else:
                self._keep(entry)
            return ""
        context_id = str(self.context_id) if self.context_id else _new_context_id()
        arc_class = self.arc_class
        if _runtime.sampling and not _runtime.keeps(context_id, arc_class):
            return _enter_sampled_out(self, ((context_id, arc_class),))
        stack = ((context_id, arc_class),)
        # Exported before the push: when raising is on and this raises, no stack is left pushed.
        if arc_class is not None or _pipeline.global_init_message is not None:
            _pipeline.open_context_exports(context_id, arc_class, True, self.export_timestamp)
        measure = self.measure_duration
        started = (
            _perf_counter()
            if measure or (measure is None and _runtime.duration_classes and arc_class in _runtime.duration_classes)
            else 0.0
        )
        entry = (_push(stack), stack, started)
        if self._entry is None and self._more is None:  # the common case: entered once
            self._entry = entry
        else:
            self._keep(entry)
        return context_id

    def _enter_inactive(self) -> str:
        """Not started yet (start, then enter as the new state says), or off for good: push nothing."""
        if not _pipeline.dormant:
            _runtime.ensure_started()
            if _runtime.active or _runtime.paused:
                return self.__enter__()
        self._keep(None)
        return ""


class new_mona_sub_context(_Block):  # noqa: N801 - used like a function, named as the original API
    """Open a sub-ARC of the current context for the ``with`` block; yields its full id.

    The full id is the parent's id and ``sub_context_id`` (a fresh one when empty) joined with ".".
    Outside any context there is nothing to nest in: that is an error (a log line, and ``""``).
    Run facts (an exception leaving the block, ``measure_duration``) as for :class:`new_mona_context`.
    """

    __slots__ = ("arc_class", "measure_duration", "sub_context_id")

    def __init__(
        self,
        arc_class: Optional[str] = None,
        sub_context_id: str = "",
        *,
        ARC_class: Optional[str] = None,  # noqa: N803 - the original client's keyword
        measure_duration: Optional[bool] = None,
    ) -> None:
        self._entry = None
        self._more = None
        self.arc_class = ARC_class if arc_class is None else arc_class
        self.sub_context_id = sub_context_id
        self.measure_duration = measure_duration

    def __enter__(self) -> str:
        if not _runtime.active:
            if not _runtime.paused:
                if _pipeline.dormant or not _runtime.ensure_started():
                    return self._enter_while_off()
                return self.__enter__()  # started now: enter as the new state says
            return self._enter_while_off()
        stack = _current_stack()
        if not stack:
            if type(stack) is _OffStack:  # opened while off, turned on since: it owes its exports first
                _pipeline.open_owed(stack)
            elif type(stack) is SampledOutStack:  # nested in a context that is not kept: not kept either
                sub = _ctx.sub_stack(stack, str(self.sub_context_id) or _new_context_id(), self.arc_class)
                return _enter_sampled_out(self, sub)
            else:
                # Said (or raised) before the entry is kept: a raise here means no __exit__ to take it back.
                _pipeline.fail(
                    "sub-outside-context",
                    "new_mona_sub_context() called outside any mona context; open one with new_mona_context()",
                )
                self._keep(None)
                return ""
        stack = _ctx.sub_stack(stack, str(self.sub_context_id) or _new_context_id(), self.arc_class)
        context_id = stack[-1][0]
        if context_id.count(CONTEXT_SEPARATOR) >= _runtime.max_context_depth:
            return self._enter_too_deep(stack)
        arc_class = self.arc_class
        if arc_class is not None:
            _pipeline.open_context_exports(context_id, arc_class, False, None)
        measure = self.measure_duration
        started = (
            _perf_counter()
            if measure or (measure is None and _runtime.duration_classes and arc_class in _runtime.duration_classes)
            else 0.0
        )
        entry = (_push(stack), stack, started)
        if self._entry is None and self._more is None:  # the common case: entered once
            self._entry = entry
        else:
            self._keep(entry)
        return context_id

    def _enter_while_off(self) -> str:
        """Off: a sub-context of an open context (not a sampled-out one) still pushes its context
        when the config file may turn the client on again, as a root does (see OffStack)."""
        parent = _current_stack()
        if not len(parent) or type(parent) is SampledOutStack or not _runtime.may_turn_on_again():
            self._keep(None)
            return ""
        frames = _ctx.sub_stack(parent, str(self.sub_context_id) or _new_context_id(), self.arc_class)
        context_id = frames[-1][0]
        if context_id.count(CONTEXT_SEPARATOR) >= _runtime.max_context_depth:
            self._keep(None)
            return ""
        off = _ctx.off_stack(frames, (context_id, self.arc_class, False, None), parent)
        self._keep((_push(off), off, _OPENED_WHILE_OFF))
        return ""

    def _enter_too_deep(self, stack: _ctx.Stack) -> str:
        """A sub-context deeper than ``MONA_MAX_CONTEXT_DEPTH``: the block runs in its parent context.

        Its exports land in the parent (the deepest context allowed), which is also the id it yields.
        """
        _pipeline.fail(
            "too-deep",
            # No id or depth in the text: the line is rate-limited by its text, and a deep recursion
            # must give one line, not one per level.
            f"new_mona_sub_context() refused: contexts nest at most MONA_MAX_CONTEXT_DEPTH = "
            f"{_runtime.max_context_depth} ids deep; the block runs in its parent context",
        )
        self._keep(None)
        return stack[-2][0]


class continue_mona_context(new_mona_context):  # noqa: N801 - used like a function, as new_mona_context
    """Continue, for the ``with`` block, an ARC begun elsewhere; yields its full context id.

    ``context_id`` is a full id received from another process (an HTTP header, a message, a worker's
    task): the block's exports land in that ARC and its sub-contexts nest under it. Nothing is exported
    on entry: the process that opened the ARC already exported its arc class and globals.

    An id from outside is not trusted blindly (see :func:`mona_client.context.malformed_reason`): a
    malformed one is refused with one rate-limited warning, and the block opens a fresh root ARC of
    ``arc_class`` instead, as it also does when ``context_id`` is empty or None (nothing to continue).
    It never raises for a bad id, even with raising on: the id is input, not a programming error.
    Run facts as for :class:`new_mona_context`; a continued ARC's duration is measured only with
    ``measure_duration=True`` (its class is not known here).
    """

    __slots__ = ("continued_id",)

    def __init__(
        self, context_id: Optional[str], arc_class: Optional[str] = None, *, measure_duration: Optional[bool] = None
    ) -> None:
        super().__init__(arc_class, measure_duration=measure_duration)
        self.continued_id = context_id

    def __enter__(self) -> str:
        continued = self.continued_id
        if not continued:
            return super().__enter__()
        on = _runtime.active or _runtime.ensure_started()
        if not on and not _runtime.may_turn_on_again():
            self._keep(None)
            return ""
        reason = _ctx.malformed_reason(continued, _runtime.max_context_depth, _runtime.max_context_id_chars)
        if reason is not None:
            rate_limited.log(
                logging.WARNING,
                f"malformed-context-id:{reason}",
                "mona-client: a context id to continue was refused (%s); a fresh ARC is opened instead",
                reason,
            )
            return super().__enter__()
        stack: _ctx.Stack = ((continued, None),)
        if _runtime.sampling and not _runtime.keeps(continued, self.arc_class):
            return _enter_sampled_out(self, stack)
        self._keep((_push(stack), stack, _perf_counter() if self.measure_duration else 0.0))
        # While the config file has the client off the block still runs in the ARC (exports are refused
        # until it is turned on), and yields "" as a disabled client does.
        return continued if on else ""


# --- the non-``with`` API ---------------------------------------------------------------------------


def init(
    arc_class: Optional[str] = None,
    context_id: str = "",
    export_timestamp: Optional[float] = None,
    *,
    ARC_class: Optional[str] = None,  # noqa: N803 - the original client's keyword
) -> str:
    """Make a new root ARC the current context, with no block to end it; returns its id.

    It replaces whatever context was current here (nothing is restored later): use it where a ``with``
    block does not fit, such as a request handler's start and end hooks, and end with :func:`reset`.
    """
    # A block entered and never left: its stack stays current until reset() or another init().
    return new_mona_context(arc_class, context_id, export_timestamp, ARC_class=ARC_class).__enter__()


def init_sub_context(
    arc_class: Optional[str] = None,
    sub_context_id: str = "",
    *,
    ARC_class: Optional[str] = None,  # noqa: N803 - the original client's keyword
) -> str:
    """Push a sub-ARC onto the current context; returns its full id. Pair with :func:`close_sub_context`."""
    return new_mona_sub_context(arc_class, sub_context_id, ARC_class=ARC_class).__enter__()


def close_sub_context() -> str:
    """Pop the innermost sub-ARC; returns the id now current. At the root (or outside) it does nothing."""
    stack = _current_stack()
    if len(stack) <= 1:
        _pipeline.fail("close-root", "close_sub_context() called with no sub-context open")
        return get_full_context_id()
    # Slicing gives a plain tuple: a sampled-out ARC must stay sampled out, and the contexts of a
    # stack opened while off still owe what they owed (the sub-context closed now owes nothing more).
    parent: _ctx.Stack = stack[:-1]
    if type(stack) is SampledOutStack:
        parent = SampledOutStack(parent)
    elif type(stack) is _OffStack and len(stack.owed) > 1:
        off = _OffStack(parent)
        off.owed = stack.owed[:-1]
        parent = off
    _ctx.set_stack(parent)
    return get_full_context_id()


def reset() -> None:
    """Leave every context of the current thread, greenlet or task: afterwards no context is open.

    Contexts opened while the client was off and left this way owe nothing more."""
    _ctx.set_stack(())


# --- exports --------------------------------------------------------------------------------------


# The pipeline's bound method itself: export() is the hot path, and a wrapper would add a call to it.
# Its docstring is the user-facing one.
export = _pipeline.export


def export_batch(events: Iterable[Mapping[str, Any]]) -> bool:
    """Export several messages at once; True when all were accepted.

    Each event is ``{"message": {...}, "arc_class"?: str, "context_id"?: str, "export_timestamp"?: s}``.
    Without ``context_id`` an event goes into the current context.
    """
    return _runtime.export_batch(events)


def set_global_init_message(message: Optional[Mapping[str, Any]]) -> bool:
    """Export ``message`` as ``MONA_GLOBALS`` with every new root ARC from now on (None stops it).

    Threads that carry an existing ARC do not export it again. A message ``export()`` would refuse
    (a value that is not JSON-able, a bad nested key, too large) is refused now: False and a line,
    and the previous message stays.
    """
    return _pipeline.set_global_init_message(message)


def flush(timeout: Optional[float] = None) -> bool:
    """Wait until everything exported so far was delivered (acked); True when it was within ``timeout``."""
    return _runtime.flush(timeout)


def close(timeout: Optional[float] = None) -> bool:
    """Flush within ``timeout`` and stop the sender and the config watcher. Done at exit by itself."""
    return _runtime.close(timeout)


def stats() -> Dict[str, Any]:
    """Counters of the transport: queued, inflight, sent, acked, dropped, resent chunks, connections."""
    return _runtime.stats()


def is_active() -> bool:
    """True when the client is started and not disabled by ``disable_all``."""
    return _runtime.active or _runtime.ensure_started()
