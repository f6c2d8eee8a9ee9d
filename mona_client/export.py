"""Turning one ``export()`` call into the bytes of one Forward entry, on the caller's thread.

The message is encoded right away, for two reasons: the user may mutate the dict after the call (the
bytes are a snapshot), and a value that cannot be encoded is reported to the caller who made it, not
in a background thread minutes later. Encoding is one msgpack pack of the whole entry, the cheapest
snapshot there is; the sender then only concatenates bytes.

Values must be JSON-able. These are converted on the way:

====================================  =================================================
value                                 exported as
====================================  =================================================
numpy scalar / array (anything with   ``.tolist()`` (a number, or nested lists)
``tolist()``), ``array.array``
``datetime.datetime`` / ``date`` /    ISO 8601 string (``isoformat()``)
``time``
``decimal.Decimal``                   float (``"NaN"``-like decimals as float too)
``uuid.UUID``                         canonical string
``enum.Enum``                         its ``value`` (converted again if needed)
``set``, ``frozenset``, ``tuple``     list
subclasses of str, int, float, dict,  their base type
list
``bytes``, ``bytearray``              a string (meant for UTF-8 text: the collector
                                      replaces invalid bytes)
====================================  =================================================

Anything else (arbitrary objects, non-string keys at the top level) is refused with a
:class:`MonaExportException` that says which value is wrong.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import math
import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple

import msgpack

from .record import (
    CONTEXT,
    EXPORT_TIMESTAMP,
    MESSAGE,
    RECORD_ID,
    RESERVED_PREFIX,
    USER_ID,
)

__all__ = ["MonaExportException", "EntryEncoder", "encode_entry", "check_message", "check_export_timestamp"]


class MonaExportException(Exception):
    """An export that cannot be accepted: outside a context, or a message that is not JSON-able."""


def _convert(value: Any) -> Any:
    """msgpack's hook for values it does not know: the conversions listed in the module doc."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (tuple, list, set, frozenset)):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    tolist = getattr(value, "tolist", None)
    if tolist is not None and callable(tolist):
        return tolist()
    raise TypeError(f"a value of type {type(value).__name__} is not JSON-able")


def _new_packer() -> msgpack.Packer:
    # strict_types sends tuples and subclasses (numpy.float64, IntEnum, OrderedDict...) through
    # _convert, so the rules above hold for every value. use_bin_type=False sends bytes as msgpack
    # strings, which JSON-minded peers (Fluentd, the collector) read as text.
    return msgpack.Packer(default=_convert, use_bin_type=False, strict_types=True, autoreset=True)


# A Packer is not safe to share while it runs Python code (the default hook), so each pack takes one
# from this pool and gives it back. list.pop/append are atomic under the GIL and never switch greenlets.
_packers: List[msgpack.Packer] = []


_plain = msgpack.Packer(use_bin_type=False).pack  # for the client's own strings and ints
_RECORD_ID_KEY = _plain(RECORD_ID)
_EXPORT_TIMESTAMP_KEY = _plain(EXPORT_TIMESTAMP)
_MESSAGE_KEY = _plain(MESSAGE)


class EntryEncoder:
    """Encodes the PackedForward entries of one user id: ``[time, record]`` as msgpack bytes.

    The event time is the export time: integer seconds (Fluentd relaying with acks retries a chunk
    with float times forever). Exports into one context within one second share everything but the
    message and the record id, so those leading bytes are kept and only the message is packed:
    about a third cheaper than packing the whole entry each time.
    """

    def __init__(self, user_id: str) -> None:
        # The record is a map of 5: user id, context, export time, message, record id.
        self._record_start = b"\x85" + _plain(USER_ID) + _plain(user_id) + _plain(CONTEXT)
        # (timestamp, context, bytes up to the message): replaced as one tuple, so threads sharing
        # the encoder never see the bytes of one context under the key of another.
        self._head: Tuple[Any, Any, bytes] = (None, None, b"")

    def _new_head(self, timestamp: int, context: str) -> Tuple[Any, Any, bytes]:
        packed_time = _plain(timestamp)
        head = b"".join(
            (b"\x92", packed_time, self._record_start, _plain(context), _EXPORT_TIMESTAMP_KEY, packed_time, _MESSAGE_KEY)
        )
        return timestamp, context, head

    def encode_packed(self, timestamp: int, context: str, packed_message: bytes, record_id: str) -> bytes:
        """An entry around a message packed already (the client's own, repeated ``MONA_*`` messages)."""
        head = self._head
        if head[0] != timestamp or head[1] is not context:
            head = self._head = self._new_head(timestamp, context)
        return b"".join((head[2], packed_message, _RECORD_ID_KEY, _plain(record_id)))

    def encode(self, timestamp: int, context: str, message: Mapping[str, Any], record_id: str) -> bytes:
        """Raises :class:`MonaExportException` when a value of the message cannot be encoded."""
        head = self._head
        if head[0] != timestamp or head[1] is not context:
            head = self._head = self._new_head(timestamp, context)
        try:
            packer = _packers.pop()
        except IndexError:
            packer = _new_packer()
        try:
            return b"".join((head[2], packer.pack(message), _RECORD_ID_KEY, packer.pack(record_id)))
        except Exception as exc:  # noqa: BLE001 - a user object may raise anything while converted
            raise MonaExportException(f"message is not JSON-able: {_describe(exc)}") from None
        finally:
            _packers.append(packer)


def pack_message(message: Mapping[str, Any]) -> bytes:
    """A message packed on its own, for :meth:`EntryEncoder.encode_packed`.

    Raises :class:`MonaExportException` when a value cannot be encoded.
    """
    packer = _packers.pop() if _packers else _new_packer()
    try:
        return packer.pack(message)
    except Exception as exc:  # noqa: BLE001
        raise MonaExportException(f"message is not JSON-able: {_describe(exc)}") from None
    finally:
        _packers.append(packer)


def encode_entry(timestamp: int, user_id: str, context: str, message: Mapping[str, Any], record_id: str) -> bytes:
    """One entry, encoded on its own (the client keeps an :class:`EntryEncoder` instead)."""
    return EntryEncoder(user_id).encode(timestamp, str(context), message, record_id)


def _describe(exc: BaseException) -> str:
    """The text of an exception raised by user code, even when its own ``str`` fails."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001
        return type(exc).__name__


def check_message(message: Any) -> Tuple[Dict[str, Any], List[str]]:
    """A plain dict of the message, and the reserved ``MONA_*`` keys that were dropped from it.

    Raises :class:`MonaExportException` for a message that is not a mapping with string keys.
    """
    if type(message) is not dict:
        if not isinstance(message, Mapping):
            raise MonaExportException(
                f"message must be a mapping (a dict) of JSON-able values, not {type(message).__name__}"
            )
        message = dict(message)
    dropped: List[str] = []
    for key in message:
        if type(key) is not str:
            if not isinstance(key, str):
                raise MonaExportException(f"message keys must be strings, not {type(key).__name__}")
        elif key.startswith(RESERVED_PREFIX):
            dropped.append(key)
    if dropped:
        message = {k: v for k, v in message.items() if k not in dropped}
    return message, dropped


# Plausible export times: after 2000-01-01 and before 2200-01-01, in seconds.
_MIN_TIMESTAMP = 946_684_800
_MAX_TIMESTAMP = 7_258_118_400


def check_export_timestamp(value: Any, now: int) -> Tuple[int, Optional[Any]]:
    """The integer export time in seconds, and the rejected value when ``value`` was invalid.

    A valid value is an int or float (or numpy number) of seconds since the epoch in a plausible range;
    an invalid one is replaced by ``now`` and returned so it can be kept in
    ``MONA_INVALID_EXPORT_TIMESTAMP``.
    """
    if value is None:
        return now, None
    if isinstance(value, bool):
        return now, value
    try:
        seconds = float(value)
    except Exception:  # noqa: BLE001 - whatever __float__ raises, the value is not a time
        return now, _jsonable(value)
    if not math.isfinite(seconds) or not _MIN_TIMESTAMP <= seconds < _MAX_TIMESTAMP:
        return now, _jsonable(value)
    return int(seconds), None


def _jsonable(value: Any) -> Any:
    """The rejected timestamp as something that can travel: itself if packable, else its repr."""
    try:
        msgpack.packb(value, default=_convert, strict_types=False)
        return value
    except Exception:  # noqa: BLE001 - anything unpackable is kept as text
        pass
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - even its repr may fail
        return f"<{type(value).__name__}>"

