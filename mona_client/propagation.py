"""Carrying an ARC out of the process: HTTP headers, message headers and worker processes.

Inside one process the current context lives in a ``ContextVar`` (see :mod:`mona_client.context`).
To go on in another process, its full context id travels with the work, and the other side continues
it with :class:`~mona_client.client.continue_mona_context`:

* a header ``Mona-Context-Id`` (:data:`HEADER`) on an HTTP request or in a message's headers:
  :func:`inject` puts it in, :func:`continue_from` continues it on the receiving side (the HTTP
  integrations in :mod:`mona_client.integrations` do both for you);
* a function handed to another process (``multiprocessing`` with any start method,
  ``concurrent.futures.ProcessPoolExecutor``): :func:`carry_to_process` wraps it in a picklable
  object that runs it in the caller's context, and :class:`MonaProcessPoolExecutor` does so for
  every task.

An id received from outside is checked before it is trusted; a malformed one is refused with a log
line and a fresh ARC is opened instead.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Dict, Generic, Mapping, MutableMapping, Optional, Tuple, TypeVar

from . import context as _ctx
from .client import continue_mona_context
from .config import Settings
from .runtime import runtime as _runtime
from .sampling import SampledOutStack

__all__ = [
    "HEADER",
    "MonaProcessPoolExecutor",
    "ProcessCarrier",
    "carry_to_process",
    "context_headers",
    "continue_from",
    "current_context_id",
    "header_value",
    "inject",
]

#: The header (HTTP, or a message's headers) that carries the full context id to continue.
HEADER = "Mona-Context-Id"
_HEADER_LOWER = HEADER.lower()
#: How a WSGI server names the header in its environ.
WSGI_ENVIRON_KEY = "HTTP_MONA_CONTEXT_ID"

R = TypeVar("R")
H = TypeVar("H", bound=MutableMapping[str, Any])


def current_context_id() -> str:
    """The full id of the innermost open context, "" outside any (also while the client is off)."""
    stack = _ctx.current_stack()
    # len(), not truth: a sampled-out context reads as false, and its id propagates all the same.
    return stack[-1][0] if len(stack) and _runtime.active else ""


def context_headers() -> Dict[str, str]:
    """``{"Mona-Context-Id": <current full id>}``, or ``{}`` outside any context."""
    context_id = current_context_id()
    return {HEADER: context_id} if context_id else {}


def inject(headers: H) -> H:
    """Put the current context id into ``headers`` (a dict, or any mutable mapping) and return it.

    Outside any context nothing is added, and a header already there is left as it is: the caller
    chose it.
    """
    context_id = current_context_id()
    if context_id and header_value(headers) is None:
        headers[HEADER] = context_id
    return headers


def header_value(headers: Optional[Mapping[Any, Any]]) -> Optional[str]:
    """The ``Mona-Context-Id`` of ``headers``, its name in any case; bytes are decoded as ASCII.

    None when absent. A value that is neither str nor ASCII bytes comes back as its ``repr`` so that
    :class:`~mona_client.client.continue_mona_context` refuses it with a clear line.
    """
    if not headers:
        return None
    value = headers.get(HEADER)
    if value is None:
        for name, candidate in headers.items():
            key = name.decode("latin-1") if isinstance(name, bytes) else name
            if isinstance(key, str) and key.lower() == _HEADER_LOWER:
                value = candidate
                break
        else:
            return None
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return repr(value)
    return value if isinstance(value, str) else repr(value)


def continue_from(headers: Optional[Mapping[Any, Any]], arc_class: Optional[str] = None) -> continue_mona_context:
    """A ``with`` block that continues the ARC named by ``headers``' ``Mona-Context-Id``.

    Without the header (or with a malformed one, refused with a log line) the block opens a fresh
    root ARC of ``arc_class``. For the consumer of a message::

        with continue_from(message.headers, arc_class="SCORER"):
            client.export({"score": score})
    """
    return continue_mona_context(header_value(headers), arc_class)


# --- worker processes ---------------------------------------------------------------------------------


class ProcessCarrier(Generic[R]):
    """A picklable callable that runs ``fn`` in another process, in the ARC its creator was in.

    It carries the creator's full context id, and the creator's client settings when its client was
    started: a child that has not started its own client (a ``spawn`` or ``forkserver`` child) starts
    it with them, so its exports go where the parent's go. ``fn`` and its arguments must be picklable
    for the start methods that pickle (a module-level function, not a lambda).
    """

    def __init__(
        self, fn: Callable[..., R], context_id: str, settings: Optional[Settings], sampled_out: bool = False
    ) -> None:
        self.fn = fn
        self.context_id = context_id
        self.settings = settings
        self.sampled_out = sampled_out

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        if not _runtime.started and self.settings is not None:
            _runtime.start(dataclasses.asdict(self.settings))
        if not self.context_id or self.sampled_out:
            # Carried from outside any context: a forked worker may hold the context it was forked
            # in, and must not lend it to this task. From a sampled-out ARC: the task's exports are
            # not kept either, whatever this process's sampling would decide.
            stack: _ctx.Stack = SampledOutStack(((self.context_id, None),)) if self.sampled_out else ()
            token = _ctx.push(stack)
            try:
                return self.fn(*args, **kwargs)
            finally:
                _ctx.pop(token)
        with continue_mona_context(self.context_id):
            return self.fn(*args, **kwargs)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (ProcessCarrier, (self.fn, self.context_id, self.settings, self.sampled_out))


def carry_to_process(fn: Callable[..., R]) -> ProcessCarrier[R]:
    """``fn`` wrapped to run, in whatever process calls it, in the caller's current ARC.

    Use it as a ``multiprocessing.Process`` target or a task of a process pool::

        with client.new_mona_context(arc_class="BATCH"):
            multiprocessing.Process(target=carry_to_process(work), args=(part,)).start()

    The context is taken now, when the work is handed over.
    """
    sampled_out = type(_ctx.current_stack()) is SampledOutStack
    return ProcessCarrier(fn, current_context_id(), _runtime.settings if _runtime.started else None, sampled_out)


class MonaProcessPoolExecutor(ProcessPoolExecutor):
    """A ``ProcessPoolExecutor`` whose tasks run in the ARC of the code that submitted them.

    Each ``submit`` (and each item of ``map``) carries the submitter's context id at that moment; a
    worker process runs every task in its own submitter's ARC, whatever ran before on it.
    """

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        return super().submit(carry_to_process(fn), *args, **kwargs)
