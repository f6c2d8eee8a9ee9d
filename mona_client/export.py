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
:class:`MonaExportException` that says which value is wrong. Keys of nested maps may be strings,
numbers, booleans or None (or a value converted to one of those, such as an Enum or a UUID); a key
that would travel as an array or a map (a tuple, a frozenset) is refused too, because the collector
cannot store a map with such a key. A record whose encoding is larger than the encoder's limit
(``MONA_MAX_RECORD_BYTES``) is refused as well.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import math
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import msgpack

from .record import (
    CONTEXT,
    EXPORT_TIMESTAMP,
    MESSAGE,
    RECORD_ID,
    RESERVED_PREFIX,
    USER_ID,
)

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "EntryEncoder",
    "MonaExportException",
    "Packing",
    "check_export_timestamp",
    "check_message",
    "check_nested_keys",
    "encode_entry",
    "not_jsonable",
    "packers",
    "record_id_heads",
]

DEFAULT_MAX_RECORD_BYTES = 2**20
"""The default largest encoded record ``export()`` accepts (``MONA_MAX_RECORD_BYTES``): 1 MiB."""


class MonaExportException(Exception):  # noqa: N818 - the original client's public name, kept for users
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


class Packing:
    """A msgpack Packer with the conversions above, noting when it turned a tuple or frozenset into a list.

    Only a tuple or a frozenset can be a map key that travels as an array (lists, sets and dicts cannot
    be keys at all), and every one of them passes through the hook: so the nested keys of a message need
    a look only after the hook saw one, and the flat messages most exports are pay nothing for it.
    """

    __slots__ = ("pack", "saw_tuple")

    def __init__(self) -> None:
        self.saw_tuple = False
        # strict_types sends tuples and subclasses (numpy.float64, IntEnum, OrderedDict...) through
        # the hook, so the rules above hold for every value. use_bin_type=False sends bytes as msgpack
        # strings, which JSON-minded peers (Fluentd, the collector) read as text.
        packer = msgpack.Packer(default=self._default, use_bin_type=False, strict_types=True, autoreset=True)
        self.pack: Callable[[Any], bytes] = packer.pack

    def _default(self, value: Any) -> Any:
        if isinstance(value, (tuple, frozenset)):
            self.saw_tuple = True
            return list(value)
        return _convert(value)

    def pack_message(self, message: Mapping[str, Any]) -> bytes:
        """``message`` packed; raises :class:`MonaExportException` for a value or a nested key it refuses."""
        try:
            packed = self.pack(message)
        except Exception as exc:  # a user object may raise anything while converted
            self.saw_tuple = False
            raise not_jsonable(exc) from None
        if self.saw_tuple:
            self.saw_tuple = False
            check_nested_keys(message)
        return packed


#: A Packer is not safe to share while it runs Python code (the default hook), so each pack takes one
#: from this pool and gives it back. list.pop/append are atomic under the GIL and never switch greenlets.
packers: List[Packing] = []


def not_jsonable(exc: BaseException) -> MonaExportException:
    """The error for a message msgpack could not pack (a value that is not JSON-able)."""
    return MonaExportException(f"message is not JSON-able: {_describe(exc)}")


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

    def __init__(self, user_id: str, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        # The record is a map of 5: user id, context, export time, message, record id.
        self._record_start = b"\x85" + _plain(USER_ID) + _plain(user_id) + _plain(CONTEXT)
        #: (timestamp, context, bytes up to the message): replaced as one tuple, so threads sharing
        #: the encoder never see the bytes of one context under the key of another. Read by the
        #: export pipeline's hot path, which calls :meth:`new_head` when it does not fit.
        self.head: Tuple[Any, Any, bytes] = (None, None, b"")
        # (timestamp, bytes before the context, bytes between the context and the message): the part
        # of a head that only changes with the second, so that a new context's head packs its id alone.
        self._second: Tuple[Any, bytes, bytes] = (None, b"", b"")
        self.max_record_bytes = max_record_bytes

    def new_head(self, timestamp: int, context: str) -> Tuple[Any, Any, bytes]:
        """The head of the entries of ``context`` in the second ``timestamp``, made the current one."""
        second = self._second
        if second[0] != timestamp:
            packed_time = _plain(timestamp)
            second = self._second = (
                timestamp,
                b"\x92" + packed_time + self._record_start,
                _EXPORT_TIMESTAMP_KEY + packed_time + _MESSAGE_KEY,
            )
        head = self.head = (timestamp, context, b"".join((second[1], _plain(context), second[2])))
        return head

    def encode_packed(self, timestamp: int, context: str, packed_message: bytes, record_id: str) -> bytes:
        """An entry around a message packed already (the client's own, repeated ``MONA_*`` messages).

        Raises :class:`MonaExportException` when the entry is larger than ``max_record_bytes``.
        """
        head = self.head
        if head[0] != timestamp or head[1] is not context:
            head = self.new_head(timestamp, context)
        entry = b"".join((head[2], packed_message, _RECORD_ID_KEY, _plain(record_id)))
        if len(entry) > self.max_record_bytes:
            raise MonaExportException(self.too_large(None))
        return entry

    def encode(self, timestamp: int, context: str, message: Mapping[str, Any], record_id: str) -> bytes:
        """Raises :class:`MonaExportException` when a value or a nested key of the message cannot be
        encoded, or when the entry is larger than ``max_record_bytes``."""
        head = self.head
        if head[0] != timestamp or head[1] is not context:
            head = self.new_head(timestamp, context)
        packed = pack_message(message)
        # The size is that of the bytes just made: checking it costs a len(), not a second encoding.
        entry = b"".join((head[2], packed, _RECORD_ID_KEY, _plain(record_id)))
        if len(entry) > self.max_record_bytes:
            raise MonaExportException(self.too_large(message))
        return entry

    def pack_checked(self, message: Mapping[str, Any]) -> bytes:
        """``message`` packed on its own with every check :meth:`encode` makes (values, nested keys, size).

        For messages kept to be exported later (the global init message): refused when set, as
        ``export()`` would refuse them, rather than each time they are exported.
        """
        packed = pack_message(message)
        # The entry around it adds the head and the record id: a message this close to the limit
        # would be refused when exported, so it is refused now.
        if len(packed) + _ENTRY_OVERHEAD > self.max_record_bytes:
            raise MonaExportException(self.too_large(message))
        return packed

    def too_large(self, message: Optional[Mapping[str, Any]]) -> str:
        # The text names the limit and the message's first keys, not the size: the log line is
        # rate-limited by its text, and the same oversized export repeated must not flood the log.
        keys = ""
        if message:
            names = [str(key) for key, _ in zip(message, range(5))]
            keys = f" (keys {', '.join(names)}{', ...' if len(message) > 5 else ''})"
        return (
            f"export refused: its encoded record is larger than MONA_MAX_RECORD_BYTES = "
            f"{self.max_record_bytes} bytes{keys}"
        )


def record_id_heads(source: str) -> Tuple[bytes, ...]:
    """The bytes before the digits of a record id ``<source><sequence>``, by the number of digits.

    The record's last key and the string header of the id depend only on the source and the length of
    the sequence number, so the hot path formats the number alone (``b"%d"``) and takes the bytes
    before it from here: item ``n`` is for a number of ``n`` digits (up to 20: any 64-bit counter).
    """
    source_bytes = source.encode("utf-8")
    heads = []
    for digits in range(21):
        text = source + "0" * digits
        packed = _plain(text)
        header = packed[: len(packed) - len(text.encode("utf-8"))]
        heads.append(_RECORD_ID_KEY + header + source_bytes)
    return tuple(heads)


# What an entry holds besides its message, at least: the head and the record id, in bytes.
_ENTRY_OVERHEAD = 64


def pack_message(message: Mapping[str, Any]) -> bytes:
    """A message packed on its own, for :meth:`EntryEncoder.encode_packed`.

    Raises :class:`MonaExportException` when a value or a nested key cannot be encoded.
    """
    packing = packers.pop() if packers else Packing()
    try:
        return packing.pack_message(message)
    finally:
        packers.append(packing)


def encode_entry(timestamp: int, user_id: str, context: str, message: Mapping[str, Any], record_id: str) -> bytes:
    """One entry, encoded on its own (the client keeps an :class:`EntryEncoder` instead)."""
    return EntryEncoder(user_id).encode(timestamp, str(context), message, record_id)


def _describe(exc: BaseException) -> str:
    """The text of an exception raised by user code, even when its own ``str`` fails."""
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__


_SCALAR_KEY_TYPES = frozenset({str, int, float, bool, type(None), bytes})
_CONTAINERS = (dict, list, tuple, set, frozenset)


def check_nested_keys(message: Mapping[str, Any]) -> None:
    """Raise :class:`MonaExportException` for a key of a nested map that would travel as an array or a map.

    The collector stores maps whose keys are strings, numbers, booleans or None (its JSON output writes
    them as strings, as ``json.dumps`` does) and refuses a whole record holding a map keyed by an array
    or a map. The top level of a message is checked elsewhere (string keys only): this walks the values
    that are containers. Iterative, so a deep message cannot exhaust the stack.
    """
    # (path of keys and indexes from the top, container): the path is made into text only for an error.
    pending: List[Tuple[Tuple[Any, ...], Any]] = [
        ((key,), value) for key, value in message.items() if _may_hold_maps(value)
    ]
    while pending:
        path, value = pending.pop()
        if isinstance(value, Mapping):
            for key, item in value.items():
                if type(key) not in _SCALAR_KEY_TYPES and not _travels_as_scalar(key):
                    where = "".join(f"[{_short_repr(step)}]" for step in path)
                    raise MonaExportException(
                        f"message{where} has the key {_short_repr(key)} ({type(key).__name__}): keys of "
                        "nested maps must be strings, numbers, booleans or None"
                    )
                if _may_hold_maps(item):
                    pending.append(((*path, key), item))
        else:
            pending.extend(((*path, index), item) for index, item in enumerate(value) if _may_hold_maps(item))


def _may_hold_maps(value: Any) -> bool:
    return isinstance(value, (_CONTAINERS, Mapping))


def _travels_as_scalar(key: Any) -> bool:
    """Whether a key is encoded as a scalar once converted (an Enum, a UUID, a numpy integer...)."""
    for _ in range(8):  # a conversion may give a value that is converted again (an Enum of UUIDs)
        if key is None or isinstance(key, (str, bytes, bytearray, memoryview, int, float)):
            return True
        if isinstance(key, (list, tuple, set, frozenset, Mapping)):
            return False
        try:
            key = _convert(key)
        except Exception:  # packing converted it already; a key that fails now is refused
            return False
    return False


def _short_repr(value: Any) -> str:
    """A short text of a user's value for an error line, even when its own ``repr`` fails."""
    try:
        text = repr(value)
    except Exception:  # a user's __repr__ may raise anything
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


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
    except Exception:
        return now, _jsonable(value)
    if not math.isfinite(seconds) or not _MIN_TIMESTAMP <= seconds < _MAX_TIMESTAMP:
        return now, _jsonable(value)
    return int(seconds), None


def _jsonable(value: Any) -> Any:
    """The rejected timestamp as something that can travel: itself if packable, else its repr."""
    try:
        msgpack.packb(value, default=_convert, strict_types=False)
        return value
    except Exception:
        pass
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
