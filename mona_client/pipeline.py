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
from typing import Any, Dict, Mapping, Optional

from .export import EntryEncoder, MonaExportException, check_export_timestamp, check_message, pack_message
from .logs import rate_limited
from .record import ARC_CLASS_KEY, GLOBALS_KEY, INVALID_EXPORT_TIMESTAMP_KEY, RESERVED_PREFIX
from .transport import Sender

__all__ = ["ARC_CLASS_REFUSED", "GLOBALS_REFUSED", "ExportPipeline"]

_time = time.time

#: ``own`` for :meth:`ExportPipeline.export_to`: the failure keys of the client's own exports.
ARC_CLASS_REFUSED = "bad-arc-class"
GLOBALS_REFUSED = "bad-globals"

# Arc classes are few; past this many distinct ones (ids used as classes) the packed cache starts over.
_MAX_PACKED_ARC_CLASSES = 10_000


class ExportPipeline:
    """Check, encode and queue exports for one user id; one per process, reconfigured by the runtime."""

    def __init__(self) -> None:
        self.sender: Optional[Sender] = None
        self.should_raise = False
        #: The message exported as ``MONA_GLOBALS`` with every new root context (checked when set).
        self.global_init_message: Optional[Dict[str, Any]] = None
        self._encoder = EntryEncoder("")
        self._arc_class_messages: Dict[str, bytes] = {}
        self.new_record_source()

    def configure(self, encoder: EntryEncoder, should_raise: bool, sender: Optional[Sender]) -> None:
        """Use ``encoder`` (the user id and record size limit) and put into ``sender`` from now on."""
        self._encoder = encoder
        self.should_raise = should_raise
        self.sender = sender

    def new_record_source(self) -> None:
        """Record ids of their own: a random prefix per process (a forked child makes a new one)."""
        self._record_source = os.urandom(8).hex() + ":"
        self._record_counter = itertools.count(1)

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

    def open_context_exports(self, context_id: str, arc_class: Optional[str], root: bool, ts: Any) -> None:
        """What a newly opened (sub-)context exports about itself: its arc class, and the global init
        message for a root."""
        if ts is None and (not root or self.global_init_message is None) and type(arc_class) is str:
            # The common case, on the path of every context: an arc class alone, its message packed once.
            packed = self._arc_class_messages.get(arc_class)
            if packed is None:
                if len(self._arc_class_messages) > _MAX_PACKED_ARC_CLASSES:
                    self._arc_class_messages.clear()
                packed = self._arc_class_messages[arc_class] = pack_message({ARC_CLASS_KEY: arc_class})
            self.export_to(context_id, packed, None, ARC_CLASS_REFUSED)
            return
        message: Dict[str, Any] = {}
        if arc_class is not None:
            message[ARC_CLASS_KEY] = arc_class
        if root and self.global_init_message is not None:
            message[GLOBALS_KEY] = self.global_init_message
        if message:
            self.export_to(context_id, message, ts, GLOBALS_REFUSED)
