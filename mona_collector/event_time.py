"""Forward event times, decoded in one place.

An entry's time travels as a msgpack integer (seconds), as Fluentd's ``EventTime`` (extension type 0:
big-endian uint32 seconds then nanoseconds, in a fixext8 or an ext8 of 8 bytes) or, outside the
specification but accepted when finite, as a float. Whichever decoder read it, :func:`decode_time`
turns it into ``(seconds, nanoseconds)``:

* the receiving codec (:mod:`.forward_codec`) decodes EventTime with the client's unpacker into
  :class:`~mona_client.forward.EventTime`;
* the merger leaves every extension undecoded, as an :data:`UndecodedExtension` (its records carry an
  ``export_timestamp``, so the time is rarely needed and decoding it would cost a call per record);
* the network side checks times in the entries' bytes without decoding them
  (:func:`~.forward_codec.scan_entries`), with the byte forms named here.
"""

from __future__ import annotations

import math
import struct
from typing import Tuple

import msgpack

from mona_client.forward import EVENT_TIME_EXT_CODE, EventTime, ForwardProtocolError

__all__ = [
    "EVENT_TIME_DATA",
    "UndecodedExtension",
    "decode_time",
    "is_undecoded_extension",
    "keep_extension",
    "pack_undecoded_extension",
    "time_seconds",
]

#: EventTime's payload: big-endian uint32 seconds, then nanoseconds (8 bytes; as bytes, the order
#: of two payloads is the order of their times).
EVENT_TIME_DATA = struct.Struct(">II")


#: A msgpack extension value left as it came, ``(code, data)``: what :func:`keep_extension` makes of
#: every extension. The decoders here give arrays as lists, so in what they decode an exact ``tuple``
#: is always one of these (:func:`is_undecoded_extension`).
UndecodedExtension = Tuple[int, bytes]


def keep_extension(code: int, data: bytes) -> UndecodedExtension:
    """msgpack's ``ext_hook`` that keeps every extension undecoded (the merger's decoder): a plain
    tuple, the cheapest object to make on a path taken once per entry (a NamedTuple costs twice as
    much, since msgpack calls it for every EventTime)."""
    return (code, data)


def is_undecoded_extension(value: object) -> bool:
    """Whether ``value`` (decoded with :func:`keep_extension`) is an undecoded extension."""
    return type(value) is tuple


def pack_undecoded_extension(value: UndecodedExtension) -> msgpack.ExtType:
    """The extension as msgpack packs it again."""
    return msgpack.ExtType(value[0], value[1])


def decode_time(value: object) -> Tuple[int, int]:
    """``(seconds, nanoseconds)`` of an event time as any decoder here gives it (see the module doc).

    Raises :class:`~mona_client.forward.ForwardProtocolError` for a value that is no event time: a
    boolean, NaN or an infinite float, an extension of another type, any other type.
    """
    if isinstance(value, bool):  # an int to Python, never a time on the wire
        raise ForwardProtocolError("event time is a boolean")
    if isinstance(value, int):
        return value, 0
    if isinstance(value, EventTime):
        return value.seconds, value.nanoseconds
    if isinstance(value, msgpack.ExtType) or (isinstance(value, tuple) and is_undecoded_extension(value)):
        code, data = value
        if code == EVENT_TIME_EXT_CODE and len(data) == EVENT_TIME_DATA.size:
            seconds, nanoseconds = EVENT_TIME_DATA.unpack(data)
            return int(seconds), int(nanoseconds)
        raise ForwardProtocolError(f"unknown time extension type {code}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ForwardProtocolError(f"event time {value}")
        seconds = int(value)
        return seconds, round((value - seconds) * 1e9)
    raise ForwardProtocolError(f"event time of type {type(value).__name__}")


def time_seconds(value: object) -> float:
    """The seconds of an event time (see :func:`decode_time`), as the merger compares times: a
    float time is taken as it is (no rounding to nanoseconds)."""
    if isinstance(value, float) and math.isfinite(value):
        return value
    seconds, nanoseconds = decode_time(value)
    return seconds + nanoseconds / 1e9 if nanoseconds else seconds
