"""Where the current ARC lives: a stack of (full context id, arc class) frames in one ContextVar.

A ``ContextVar`` gives exactly the locality users expect: every OS thread, every greenlet and every
asyncio task sees its own value; a new thread or greenlet starts with none; an asyncio task starts from
its creator's. The stack is an immutable tuple, so a copied context (a task, a carried thread) can
never see a later push or pop of another one.

This module only manages ids and frames. Exporting ``MONA_ARC_CLASS`` and ``MONA_GLOBALS`` when a
context opens is the runtime's job (see :mod:`mona_client.runtime`).
"""

from __future__ import annotations

import itertools
import os
import re
from contextvars import ContextVar, Token
from typing import Callable, List, Optional, Tuple

from .record import CONTEXT_SEPARATOR

__all__ = [
    "Frame",
    "OffStack",
    "Opening",
    "Stack",
    "current_stack",
    "get_full_context_id",
    "malformed_reason",
    "new_context_id",
    "off_stack",
    "pop",
    "push",
    "reset",
    "set_stack",
    "sub_stack",
]

#: (full context id, arc class or None)
Frame = Tuple[str, Optional[str]]
Stack = Tuple[Frame, ...]

_EMPTY: Stack = ()
_stack: ContextVar[Stack] = ContextVar("mona_arc_stack", default=_EMPTY)

#: The current stack (empty outside any context). The ContextVar's own methods, here and in
#: :data:`push`: the ``with`` blocks call them on every enter and exit, and a wrapper would add a call.
current_stack: Callable[[], Stack] = _stack.get

#: Make a stack current; the token it returns restores the previous one in :func:`pop`.
push: Callable[[Stack], Token[Stack]] = _stack.set

#: Restore the stack a token was made from; raises when the token does not fit (see :func:`pop`).
reset: Callable[[Token[Stack]], None] = _stack.reset


def get_full_context_id() -> str:
    """The dotted id of the innermost open context, or "" outside any context."""
    stack = _stack.get()
    return stack[-1][0] if stack else ""


# Context ids are a random per-process prefix and a counter: unique across processes and machines for
# all practical purposes, and several times cheaper than uuid4 (and uuid1 leaks the MAC address).
_id_prefix = ""
_id_counter = itertools.count()


def _new_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex() + "-"
    _id_counter = itertools.count(1)


_new_prefix()
# A forked child must not mint the ids its parent goes on minting (no fork, no hook: Windows).
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_prefix)


def new_context_id() -> str:
    """A fresh root context id, e.g. ``"3f2a9c0d1e4b5a67-26"``."""
    return f"{_id_prefix}{next(_id_counter)}"


_CONTEXT_ID_RE = re.compile(r"[A-Za-z0-9_:-]+(?:\.[A-Za-z0-9_:-]+)*", re.ASCII)


def malformed_reason(context_id: object, max_depth: int, max_chars: int) -> Optional[str]:
    """Why ``context_id``, received from outside the process, cannot be continued; None when it can.

    A continued id names the ARC that later exports land in and is written into the collector's keys,
    so only a plain shape is trusted: at most ``max_chars`` characters (MONA_MAX_CONTEXT_ID_CHARS) of
    ``[A-Za-z0-9._:-]``, ids joined by single dots, at most ``max_depth`` (MONA_MAX_CONTEXT_DEPTH) ids
    deep. The reason names no part of the id: it goes into a rate-limited log line, keyed by its text.
    """
    if not isinstance(context_id, str):
        return f"it is a {type(context_id).__name__}, not a str"
    if len(context_id) > max_chars:
        return f"it is longer than MONA_MAX_CONTEXT_ID_CHARS = {max_chars} characters"
    if _CONTEXT_ID_RE.fullmatch(context_id) is None:
        return "it is empty, holds characters outside [A-Za-z0-9._:-] or an empty id between dots"
    if context_id.count(CONTEXT_SEPARATOR) >= max_depth:
        return f"it nests deeper than MONA_MAX_CONTEXT_DEPTH = {max_depth} ids"
    return None


def sub_stack(stack: Stack, sub_context_id: str, arc_class: Optional[str]) -> Stack:
    """``stack`` with a sub-context pushed; ids join with "."."""
    parent = stack[-1][0]
    return (*stack, (f"{parent}{CONTEXT_SEPARATOR}{sub_context_id}", arc_class))


#: What a context opened while the config file had the client off still owes the ARC once the client
#: is on: (full context id, arc class, whether it is a root, its export timestamp).
Opening = Tuple[str, Optional[str], bool, Optional[float]]


class OffStack(Tuple[Frame, ...]):
    """The stack a block pushes while the config file has the client off (and may turn it on again).

    Its frames are those of a normal stack, so that a block still open when the client is turned on
    carries on in its ARC; but it reads as false, like an empty stack, so that ``export()`` and
    ``new_mona_sub_context`` notice it without any cost to an ordinary stack. The exports its
    contexts would have made when they opened (arc class, the globals of a root) are made then,
    lazily, by the first export, sub-context or exit in it with the client on
    (:meth:`~mona_client.pipeline.ExportPipeline.open_owed`): nothing is registered while off.

    ``owed`` holds one list per context of the stack opened while off, outermost first, each with its
    :data:`Opening` until someone takes it (``list.pop`` is atomic: the exports are made once, even
    when a copied context carries the stack into several threads).
    """

    owed: Tuple[List[Opening], ...]

    def __bool__(self) -> bool:
        return False


def off_stack(frames: Stack, opening: Opening, parent: Stack) -> OffStack:
    """``frames`` as an :class:`OffStack` owing ``opening``, after what ``parent`` still owes."""
    stack = OffStack(frames)
    owed = [opening]
    stack.owed = (*parent.owed, owed) if type(parent) is OffStack else (owed,)
    return stack


def pop(token: Token[Stack]) -> None:
    """Restore the stack that was current before the matching :func:`push`.

    A token only fits the context it was made in. When a block is left in another context (a
    generator resumed elsewhere, a context copied mid-block), restore the saved value instead of
    raising: the user's program must not fail because of its instrumentation.
    """
    try:
        _stack.reset(token)
    except (ValueError, RuntimeError):
        previous = token.old_value
        _stack.set(_EMPTY if previous is Token.MISSING else previous)


def set_stack(stack: Stack) -> None:
    """Replace the current stack outright (used by the non-``with`` API)."""
    _stack.set(stack)
