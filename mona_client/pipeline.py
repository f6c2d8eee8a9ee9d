"""The one way an export goes: check, encode, put.

Every export takes :meth:`ExportPipeline.export_to`: the user's messages (``export()``,
``export_batch()``) and the client's own (a context's arc class, the global init message of a root).
The user's are checked (reserved ``MONA_*`` keys dropped); the client's own skip that check, and the
arc class of a context, the most frequent of them, comes packed once per class.

Error policy: a monitoring library must not break the program it monitors. A refused export is one
clear, rate-limited line on ``mona-logger`` and a falsy return, unless raising was asked for
(``MONA_SHOULD_RAISE_EXCEPTIONS``): then :class:`~mona_client.export.MonaExportException`.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional, Tuple

from . import context as ctx
from .export import (
    EntryEncoder,
    MonaExportException,
    Packing,
    check_export_timestamp,
    check_message,
    check_nested_keys,
    not_jsonable,
    pack_message,
    packers,
    record_id_heads,
)
from .logs import rate_limited
from .record import ARC_CLASS_KEY, GLOBALS_KEY, INVALID_EXPORT_TIMESTAMP_KEY, RESERVED_PREFIX
from .sampling import SampledOutStack
from .transport import Sender

__all__ = ["ARC_CLASS_REFUSED", "GLOBALS_REFUSED", "ExportPipeline"]

_time = time.time
_current_stack = ctx.current_stack

#: ``own`` for :meth:`ExportPipeline.export_to`: the failure keys of the client's own exports.
ARC_CLASS_REFUSED = "bad-arc-class"
GLOBALS_REFUSED = "bad-globals"

# Key names the hot path knows to be allowed; past this many, new names are checked each time.
_MAX_GOOD_KEYS = 4096

# Arc classes are few; past this many distinct ones (ids used as classes) the packed cache starts over.
_MAX_PACKED_ARC_CLASSES = 10_000


class ExportPipeline:
    """Check, encode and queue exports for one user id; one per process, reconfigured by the runtime."""

    def __init__(self) -> None:
        self._sender: Optional[Sender] = None
        self._put: Callable[[bytes], bool] = _not_started
        #: Mirrors of the runtime's state, read by :meth:`export` (see ``Runtime._update_active``):
        #: ``active`` while started and not disabled; ``dormant`` when a call cannot start the client
        #: (it is started and disabled, or the process is exiting), so that an export only reads two
        #: attributes before it returns. ``start`` starts the client and says whether it is active.
        self.active = False
        self.dormant = False
        self.start: Callable[[], bool] = _not_started_either
        self.should_raise = False
        #: The message exported as ``MONA_GLOBALS`` with every new root context (checked when set).
        self.global_init_message: Optional[Dict[str, Any]] = None
        self._encoder = EntryEncoder("")
        self._arc_class_messages: Dict[str, bytes] = {}
        #: Top-level keys of messages that passed the reserved-key check: plain str, no ``MONA_``.
        self._good_keys: FrozenSet[str] = frozenset()
        self.new_record_source()

    @property
    def sender(self) -> Optional[Sender]:
        """The sender exports are put into (None before start and after close)."""
        return self._sender

    @sender.setter
    def sender(self, sender: Optional[Sender]) -> None:
        # The sender's own put method is kept: it is called on every export.
        self._sender = sender
        self._put = sender.put if sender is not None else _not_started

    def configure(self, encoder: EntryEncoder, should_raise: bool, sender: Optional[Sender]) -> None:
        """Use ``encoder`` (the user id and record size limit) and put into ``sender`` from now on."""
        self._encoder = encoder
        self.should_raise = should_raise
        self.sender = sender

    def new_record_source(self) -> None:
        """Record ids of their own: a random prefix per process (a forked child makes a new one)."""
        self._record_source = os.urandom(8).hex() + ":"
        self._record_counter = itertools.count(1)
        # The bytes before the sequence number of a record id, by its number of digits.
        self._record_id_heads: Tuple[bytes, ...] = record_id_heads(self._record_source)

    # --- errors ---------------------------------------------------------------------------------

    def fail(self, key: str, message: str) -> bool:
        """Report a refused call: raise when asked to, otherwise one rate-limited error line."""
        if self.should_raise:
            raise MonaExportException(message)
        # Keyed by the text too: distinct problems each get their line, a repeated one is held back.
        rate_limited.log(logging.ERROR, f"{key}:{message}", "mona-client: %s", message)
        return False

    def _refused(self, own: str, message: Any, exc: Exception) -> bool:
        """A failed export: said with the words of what was exported."""
        if own == ARC_CLASS_REFUSED:
            return self.fail(own, f"the arc class of a new context is not exported: {exc}")
        if own:
            return self.fail(own, f"cannot export {list(message)}: {exc}")
        if isinstance(exc, MonaExportException):
            return self.fail("bad-message", str(exc))
        return self.fail("bad-message", f"message is not a mapping of JSON-able values ({type(exc).__name__})")

    # --- exports --------------------------------------------------------------------------------

    def export(self, message: Any, export_timestamp: Any = None) -> bool:
        """Export KAPIs and dimensions into the current context. Returns True when accepted.

        This is ``mona_client.client.export``. ``message`` is a mapping of JSON-able values (numpy
        values, datetimes, Decimal, UUID and Enum are converted; see :mod:`mona_client.export`). Keys
        starting with ``MONA_`` are reserved and dropped with a warning. ``export_timestamp`` is in
        seconds since the epoch; an invalid one is replaced by now and kept in
        ``MONA_INVALID_EXPORT_TIMESTAMP``. The message is encoded at once (mutating it afterwards
        changes nothing) and sent in the background.

        The hot path of the client, in one Python frame for a plain dict: the state and context
        look-ups, the reserved-key check, the entry around the message from the context's cached
        head and the record id from its cached prefix, then the sender's put. The same record as
        :meth:`export_to` makes (see :meth:`EntryEncoder.encode`).
        """
        if not self.active and (self.dormant or not self.start()):
            return False
        stack = _current_stack()
        if not stack:
            if type(stack) is SampledOutStack:  # its ARC is not kept: nothing to do, and no error
                return True
            if type(stack) is ctx.OffStack:  # opened while off, turned on since: what it owes, first
                self.open_owed(stack)
                return self.export_to(stack[-1][0], message, export_timestamp)
            return self.fail(
                "outside-context",
                "export() called outside any mona context; open one with new_mona_context()",
            )
        context_id = stack[-1][0]
        try:
            # A plain dict whose keys were all seen before in a message that passed needs no look at
            # them: a subset test in C, which allocates nothing. Others take _checked_keys.
            if type(message) is not dict or not message.keys() <= self._good_keys:
                message = self._checked_keys(message)
            timestamp = int(_time())
            if export_timestamp is not None:
                timestamp, invalid = check_export_timestamp(export_timestamp, timestamp)
                if invalid is not None:
                    message = {**message, INVALID_EXPORT_TIMESTAMP_KEY: invalid}
            encoder = self._encoder
            head = encoder.head
            if head[0] != timestamp or head[1] is not context_id:
                head = encoder.new_head(timestamp, context_id)
            packing = packers.pop() if packers else Packing()
            try:
                packed = packing.pack(message)
            except Exception as exc:  # a user object may raise anything while it is converted
                packing.saw_tuple = False
                raise not_jsonable(exc) from None
            finally:
                packers.append(packing)
            if packing.saw_tuple:  # rare: a tuple or frozenset somewhere in the message, maybe as a key
                packing.saw_tuple = False
                check_nested_keys(message)
            digits = b"%d" % next(self._record_counter)
            entry = b"".join((head[2], packed, self._record_id_heads[len(digits)], digits))
            # The size is that of the bytes just made: checking it costs a len(), not a second encoding.
            if len(entry) > encoder.max_record_bytes:
                raise MonaExportException(encoder.too_large(message))
        except Exception as exc:  # a user object may raise anything while it is checked or converted
            return self._refused("", message, exc)
        return self._put(entry)

    def export_to(self, context_id: str, message: Any, export_timestamp: Any = None, own: str = "") -> bool:
        """Check, encode and queue ``message`` for the context ``context_id``; True when accepted.

        ``own`` marks the client's own exports (:data:`ARC_CLASS_REFUSED`, :data:`GLOBALS_REFUSED`):
        their ``MONA_*`` keys are not checked, and their message may come packed already (bytes).
        This is the hot path of every export: one pass, no helper calls for a plain dict.
        """
        try:
            # A plain dict whose keys hold no reserved prefix needs no copy: joining the keys is far
            # cheaper than testing each one, and a non-str key makes join raise (the slow path).
            if not own and (type(message) is not dict or RESERVED_PREFIX in "\n".join(message)):
                message = self._checked_copy(message)
            now = int(_time())
            if export_timestamp is None:
                timestamp = now
            else:
                timestamp, invalid = check_export_timestamp(export_timestamp, now)
                if invalid is not None:
                    message = {**message, INVALID_EXPORT_TIMESTAMP_KEY: invalid}
            record_id = f"{self._record_source}{next(self._record_counter)}"
            if own and type(message) is bytes:
                entry = self._encoder.encode_packed(timestamp, context_id, message, record_id)
            else:
                entry = self._encoder.encode(timestamp, context_id, message, record_id)
        except Exception as exc:  # a user object may raise anything while it is checked or converted
            return self._refused(own, message, exc)
        return self._put(entry)

    def _packed_arc_class(self, context_id: str, arc_class: str) -> Optional[bytes]:
        """The message ``{MONA_ARC_CLASS: arc_class}`` packed and kept; None (said) when it cannot be."""
        try:
            packed = pack_message({ARC_CLASS_KEY: arc_class})
        except Exception as exc:
            self._refused(ARC_CLASS_REFUSED, {ARC_CLASS_KEY: arc_class}, exc)
            return None
        if len(self._arc_class_messages) > _MAX_PACKED_ARC_CLASSES:
            self._arc_class_messages.clear()
        self._arc_class_messages[arc_class] = packed
        return packed

    def _checked_keys(self, message: Any) -> Dict[str, Any]:
        """``message`` with its keys checked: the same dict when they are all plain and allowed (and
        then they join the known good keys), else a checked copy (see :meth:`_checked_copy`)."""
        # Joining the keys is far cheaper than testing each one, and a non-str key makes join raise.
        if type(message) is not dict or RESERVED_PREFIX in "\n".join(message):
            return self._checked_copy(message)
        good = self._good_keys
        if len(good) < _MAX_GOOD_KEYS and all(type(key) is str for key in message):
            self._good_keys = good.union(message)  # replaced whole: other threads read the old or the new
        return message

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

    def set_global_init_message(self, message: Optional[Mapping[str, Any]]) -> bool:
        """Export ``message`` as ``MONA_GLOBALS`` with every new root context (None stops it)."""
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

    def open_owed(self, stack: ctx.OffStack) -> None:
        """Make the exports the contexts of ``stack``, opened while the client was off, owe their ARCs
        (each once, outermost first). A refusal, when raising is on, does not stop the others."""
        for owed in stack.owed:
            try:
                context_id, arc_class, root, export_timestamp = owed.pop()
            except IndexError:  # made already, here or by another thread carrying the same stack
                continue
            try:
                self.open_context_exports(context_id, arc_class, root, export_timestamp)
            except MonaExportException:
                continue

    def open_context_exports(self, context_id: str, arc_class: Optional[str], root: bool, ts: Any) -> None:
        """What a newly opened (sub-)context exports about itself: its arc class, and the global init
        message for a root."""
        if ts is None and (not root or self.global_init_message is None) and type(arc_class) is str:
            # The common case, on the path of every context: an arc class alone, its message packed once.
            packed = self._arc_class_messages.get(arc_class)
            if packed is None:
                packed = self._packed_arc_class(context_id, arc_class)
                if packed is None:
                    return
            # The entry made here rather than by export_to: this runs on every context that has a
            # class. The context is new, so is its head; the context's later exports reuse it.
            timestamp = int(_time())
            encoder = self._encoder
            head = encoder.head
            if head[0] != timestamp or head[1] is not context_id:
                head = encoder.new_head(timestamp, context_id)
            digits = b"%d" % next(self._record_counter)
            entry = b"".join((head[2], packed, self._record_id_heads[len(digits)], digits))
            if len(entry) > encoder.max_record_bytes:
                self._refused(ARC_CLASS_REFUSED, packed, MonaExportException(encoder.too_large(None)))
                return
            self._put(entry)
            return
        message: Dict[str, Any] = {}
        if arc_class is not None:
            message[ARC_CLASS_KEY] = arc_class
        if root and self.global_init_message is not None:
            message[GLOBALS_KEY] = self.global_init_message
        if message:
            self.export_to(context_id, message, ts, GLOBALS_REFUSED)


def _not_started(entry: bytes) -> bool:
    """The put of a pipeline without a sender: nothing is accepted."""
    return False


def _not_started_either() -> bool:
    """The start of a pipeline no runtime drives: it never becomes active."""
    return False
