"""Carrying a context on purpose into threads, executor tasks, greenlets and new ARCs.

A new thread or greenlet starts with no context, and ``concurrent.futures`` does not carry the
submitter's. That is the right default (unrelated work must not land in someone else's ARC); these
helpers carry it where the work belongs to the caller's ARC. Each copies the whole
``contextvars`` context at the moment the work is handed over, so a later change in the caller (or in
the worker) is not seen by the other side.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional, TypeVar

__all__ = [
    "MonaThread",
    "MonaThreadPoolExecutor",
    "carry_context",
    "in_new_mona_context",
    "spawn_greenlet",
]

F = TypeVar("F", bound=Callable[..., Any])


class MonaThread(threading.Thread):
    """A ``threading.Thread`` that runs in the context of the code that created it.

    Exports from the thread land in the creator's ARC, under the same full context id. A subclass
    may override ``run()`` as with any ``Thread``: the whole life of the started thread runs in the
    copied context, not only the base ``run()``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mona_context = contextvars.copy_context()

    # ``start()`` runs ``_bootstrap_inner()`` on the new thread, which calls ``self.run()``. Entering the
    # context there rather than in ``run()`` keeps it when a subclass overrides ``run()`` (the usual
    # way to write a thread), which would otherwise run in the new thread's empty context.
    def _bootstrap_inner(self) -> None:
        self._mona_context.run(super()._bootstrap_inner)  # type: ignore[misc]  # threading's private hook, not in its stubs


def carry_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` bound to a copy of the caller's context: call it from any thread or callback."""
    context = contextvars.copy_context()

    @functools.wraps(fn)
    def carried(*args: Any, **kwargs: Any) -> Any:
        # A Context cannot be entered twice at once; each call runs in its own copy of the snapshot.
        return context.copy().run(fn, *args, **kwargs)

    return carried


class MonaThreadPoolExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose tasks run in the context of the code that submitted them.

    Each ``submit`` (and so each item of ``map``) takes its own copy, so values never leak from one
    task to the next through a reused worker thread.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


def spawn_greenlet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``gevent.spawn`` that runs ``fn`` in a copy of the caller's context (a plain spawn starts empty)."""
    import gevent  # optional dependency: pip install mona-client[gevent]

    return gevent.spawn(contextvars.copy_context().run, fn, *args, **kwargs)


def in_new_mona_context(
    arc_class: Optional[str] = None,
    *,
    ARC_class: Optional[str] = None,  # noqa: N803 - the original client's keyword
) -> Callable[[F], F]:
    """Decorator: each call of the function runs in a new root ARC of ``arc_class``.

    Works on plain and ``async def`` functions; for a coroutine function the ARC spans the whole
    awaited call, and concurrent calls get separate ARCs. (Not for generator functions: their body
    runs after the call returned, outside the ARC.)
    """
    from .client import new_mona_context

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with new_mona_context(arc_class, ARC_class=ARC_class):
                    return await fn(*args, **kwargs)

            return run_async  # type: ignore[return-value]  # same signature as fn, which mypy cannot tell

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with new_mona_context(arc_class, ARC_class=ARC_class):
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]  # same signature as fn, which mypy cannot tell

    return decorate
