"""The receiving half of the Fluentd Forward protocol v1 codec (the client's half is
:mod:`mona_client.forward`).

Decoding is lenient where Fluentd is lenient and strict where a wrong guess would corrupt data:

* ``PackedForward`` entries may arrive as msgpack ``bin`` or as ``str`` whose bytes are not valid UTF-8
  (Fluentd's out_forward sends ``str32``); strings are decoded with ``surrogateescape`` so the raw bytes
  can always be recovered.
* ``compressed`` other than ``"gzip"`` means plain (out_forward sends ``"text"``); a gzip payload may
  hold several members.
* times may be ``int``, ``EventTime`` (fixext8 or ext8), or, outside the spec, a finite ``float``
  (decoded by :func:`~.event_time.decode_time`).

The network side checks messages without decoding their records (:func:`split_event_message`); the
merger decodes entries (:func:`iter_entries`). Nothing here opens a socket.
"""

from __future__ import annotations

import hmac
import struct
import zlib
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import msgpack

from mona_client.forward import (
    DEFAULT_MAX_FRAME_BYTES,
    EVENT_TIME_EXT_CODE,
    EventTime,
    ForwardProtocolError,
    new_unpacker,
    pack_entry,
    password_digest,
    shared_key_digest,
)

from .event_time import decode_time

__all__ = [
    "Event",
    "EventBatch",
    "PingCheck",
    "RawMessage",
    "check_ping",
    "decode_event_message",
    "iter_entries",
    "pack_ack",
    "pack_helo",
    "pack_pong",
    "parse_event_batch",
    "scan_entries",
    "split_event_message",
]


class Event(NamedTuple):
    """One decoded event: the time as integer seconds and nanoseconds, and its record."""

    seconds: int
    nanoseconds: int
    record: Any


class EventBatch(NamedTuple):
    """One decoded event message, whichever of the four modes carried it."""

    tag: str
    events: List[Event]
    option: Dict[str, Any]
    mode: str  # "message", "forward", "packed_forward" or "compressed_packed_forward"

    @property
    def chunk(self) -> Any:
        """The ack id the sender asked for, or None when it wants no ack."""
        return self.option.get("chunk")


# --- encoding -------------------------------------------------------------------------------------


def pack_ack(chunk: Any) -> bytes:
    """The ack answer for a chunk id, echoing it byte for byte (even when it is not valid UTF-8)."""
    packed: bytes = msgpack.packb({"ack": chunk}, use_bin_type=True, unicode_errors="surrogateescape")
    return packed


def pack_helo(nonce: bytes, auth_salt: bytes = b"", keepalive: bool = True) -> bytes:
    packed: bytes = msgpack.packb(
        ["HELO", {"nonce": nonce, "auth": auth_salt, "keepalive": keepalive}], use_bin_type=True
    )
    return packed


def pack_pong(ok: bool, reason: str, hostname: str, digest: str) -> bytes:
    packed: bytes = msgpack.packb(["PONG", ok, reason, hostname, digest], use_bin_type=True)
    return packed


# --- decoding -------------------------------------------------------------------------------------


def _raw_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        # Strings were decoded with surrogateescape: this gives back the exact wire bytes.
        try:
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that did not come from msgpack bytes
            raise ForwardProtocolError("entries string is not text or bytes") from None
    raise ForwardProtocolError(f"entries of type {type(value).__name__}")


def _gunzip_all(data: bytes, max_bytes: int) -> bytes:
    """Decompress every gzip member, refusing output beyond ``max_bytes`` (a zip bomb guard)."""
    out: List[bytes] = []
    total = 0
    while data:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = decompressor.decompress(data, max_bytes - total + 1)
        except zlib.error as exc:
            raise ForwardProtocolError(f"invalid gzip payload: {exc}") from None
        total += len(chunk)
        if total > max_bytes or decompressor.unconsumed_tail:
            raise ForwardProtocolError(f"gzip payload inflates beyond {max_bytes} bytes")
        if not decompressor.eof:
            raise ForwardProtocolError("truncated gzip payload")
        out.append(chunk)
        data = decompressor.unused_data
    return b"".join(out)


def iter_entries(entries: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Iterator[Event]:
    """The ``[time, record]`` pairs of a PackedForward entries blob."""
    return iter(_decode_entries(entries, max_bytes))


def _decode_entries(entries: bytes, max_bytes: int) -> List[Event]:
    # The whole blob is decoded by msgpack's C loop first; the per-entry Python work is kept to a
    # type check and a tuple, because this is the collector's hottest path.
    unpacker = new_unpacker(max(max_bytes, len(entries)))
    unpacker.feed(entries)
    items: List[Any] = []
    end = 0  # after the last whole entry: tell() also counts the bytes of a truncated one
    try:
        for item in unpacker:
            items.append(item)
            end = unpacker.tell()
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise ForwardProtocolError(f"invalid entries: {exc}") from None
    if end != len(entries):
        raise ForwardProtocolError("entries end inside an entry")
    events: List[Event] = []
    append = events.append
    for item in items:
        if type(item) is not list or len(item) != 2:
            raise ForwardProtocolError("an entry is not a [time, record] pair")
        time, record = item
        kind = type(time)
        if kind is EventTime:
            append(Event(time[0], time[1], record))
        elif kind is int:
            append(Event(time, 0, record))
        else:
            seconds, nanoseconds = decode_time(time)
            append(Event(seconds, nanoseconds, record))
    return events


def parse_event_batch(obj: Any, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> EventBatch:
    """Interpret one decoded top-level object as an event message of any of the four modes.

    Raises :class:`ForwardProtocolError` for anything that is not an event message; a bare ``nil``
    keepalive is the caller's to skip before calling this.
    """
    return decode_event_message(obj, max_bytes)[0]


def decode_event_message(obj: Any, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Tuple[EventBatch, Optional[bytes]]:
    """Like :func:`parse_event_batch`, and also the plain (decompressed) entries blob of the
    (Compressed)PackedForward modes, or None for Message and Forward.

    A receiver that keeps raw events can store that blob as it came instead of packing the events again.
    """
    if not isinstance(obj, (list, tuple)) or len(obj) < 2:
        raise ForwardProtocolError("an event message is an array of 2 to 4 items")
    tag = obj[0]
    if not isinstance(tag, str):
        raise ForwardProtocolError("the tag is not a string")
    second = obj[1]
    # EventTime is a tuple too: a Message-mode time must not be taken for a Forward array.
    if isinstance(second, (list, tuple)) and not isinstance(second, EventTime):  # Forward mode
        if len(obj) > 3:
            raise ForwardProtocolError("Forward mode takes at most 3 items")
        option = _option(obj[2] if len(obj) > 2 else None)
        events = []
        for item in second:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ForwardProtocolError("a Forward entry is not a [time, record] pair")
            seconds, nanoseconds = decode_time(item[0])
            events.append(Event(seconds, nanoseconds, item[1]))
        return EventBatch(tag, events, option, "forward"), None
    if isinstance(second, (bytes, bytearray, str)):  # (Compressed)PackedForward
        entries, option, mode = _packed_entries(obj, max_bytes)
        return EventBatch(tag, _decode_entries(entries, max_bytes), option, mode), entries
    # Message: [tag, time, record, option?]
    if len(obj) < 3 or len(obj) > 4:
        raise ForwardProtocolError("Message mode takes 3 or 4 items")
    seconds, nanoseconds = decode_time(second)
    option = _option(obj[3] if len(obj) > 3 else None)
    return EventBatch(tag, [Event(seconds, nanoseconds, obj[2])], option, "message"), None


# --- checking without decoding records (the collector's network side) ---------------------------------

#: First bytes of a msgpack integer (positive fixint, uint8-64, int8-64, negative fixint).
_INT_FIRST_BYTES = frozenset(range(0x00, 0x80)) | frozenset(range(0xCC, 0xD4)) | frozenset(range(0xE0, 0x100))
_FLOAT32, _FLOAT64 = struct.Struct(">f"), struct.Struct(">d")


def _check_packed_time(entries: bytes, position: int) -> None:
    """The time of the entry at ``position`` (just after its array header) is one Forward allows.

    The fast path of :func:`~.event_time.decode_time` on the bytes: an integer or EventTime passes
    on its first bytes, a float is decoded and checked by that function.
    """
    first = entries[position]
    if first in _INT_FIRST_BYTES:
        return
    if first == 0xD7 and entries[position + 1] == EVENT_TIME_EXT_CODE:  # fixext8, type 0
        return
    if first == 0xC7 and entries[position + 1] == 8 and entries[position + 2] == EVENT_TIME_EXT_CODE:  # ext8
        return
    if first == 0xCA or first == 0xCB:  # outside the spec, accepted when finite
        form = _FLOAT32 if first == 0xCA else _FLOAT64
        (value,) = form.unpack_from(entries, position + 1)
        decode_time(value)  # raises for NaN and infinities
        return
    if first in (0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xC7, 0xC8, 0xC9):
        raise ForwardProtocolError("unknown time extension type")
    raise ForwardProtocolError("an event time is neither an integer nor EventTime")


def scan_entries(entries: bytes) -> int:
    """Check that ``entries`` is a sequence of whole ``[time, record]`` pairs and count them, without
    building the records (msgpack's C ``skip``; the per-entry Python work is two byte checks).

    Raises :class:`ForwardProtocolError` like decoding would for bytes that are not msgpack, nesting
    beyond msgpack's limit, an entry that is not a pair, a time that is neither an integer nor
    EventTime (nor a finite float), or entries that end inside an entry. Map keys that are arrays or
    maps are not noticed here (the reader decoding the records must cope with them).
    """
    size = len(entries)
    unpacker = msgpack.Unpacker(max_buffer_size=max(size, 1))
    unpacker.feed(entries)
    count = 0
    position = 0
    check_time = _check_packed_time
    try:
        while position < size:
            if entries[position] != 0x92:  # fixarray of 2
                raise ForwardProtocolError("an entry is not a [time, record] pair")
            check_time(entries, position + 1)
            unpacker.skip()
            position = unpacker.tell()
            count += 1
    except msgpack.OutOfData:
        raise ForwardProtocolError("entries end inside an entry") from None
    except (msgpack.FormatError, msgpack.StackError, ValueError, IndexError, struct.error) as exc:
        if isinstance(exc, ForwardProtocolError):
            raise
        raise ForwardProtocolError(f"invalid entries: {exc}") from None
    return count


class RawMessage(NamedTuple):
    """One event message with its events as a PackedForward entries blob, records not decoded."""

    tag: str
    entries: bytes
    events: int
    option: Dict[str, Any]
    mode: str

    @property
    def chunk(self) -> Any:
        return self.option.get("chunk")


def split_event_message(obj: Any, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> RawMessage:
    """Check one decoded top-level object as an event message of any of the four modes and give its
    events as one plain entries blob, with the same errors as :func:`decode_event_message`.

    (Compressed)PackedForward entries are gunzipped and checked with :func:`scan_entries`, never
    decoded; Message and Forward events are packed into entries with :func:`pack_entry`.
    """
    if not isinstance(obj, (list, tuple)) or len(obj) < 2:
        raise ForwardProtocolError("an event message is an array of 2 to 4 items")
    if isinstance(obj[1], (bytes, bytearray, str)) and isinstance(obj[0], str):
        entries, option, mode = _packed_entries(obj, max_bytes)
        return RawMessage(obj[0], entries, scan_entries(entries), option, mode)
    batch, _ = decode_event_message(obj, max_bytes)
    try:
        entries = b"".join(
            pack_entry(
                EventTime(event.seconds, event.nanoseconds) if event.nanoseconds else event.seconds, event.record
            )
            for event in batch.events
        )
    except (OverflowError, ValueError, TypeError, struct.error) as exc:
        raise ForwardProtocolError(f"events that cannot be stored: {exc}") from None
    return RawMessage(batch.tag, entries, len(batch.events), batch.option, batch.mode)


def _packed_entries(obj: Any, max_bytes: int) -> Tuple[bytes, Dict[str, Any], str]:
    """The plain entries blob, option and mode of a (Compressed)PackedForward message."""
    if len(obj) > 3:
        raise ForwardProtocolError("PackedForward mode takes at most 3 items")
    option = _option(obj[2] if len(obj) > 2 else None)
    entries = _raw_bytes(obj[1])
    if option.get("compressed") == "gzip":
        return _gunzip_all(entries, max_bytes), option, "compressed_packed_forward"
    return entries, option, "packed_forward"


def _option(value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ForwardProtocolError("the option is not a map")
    return value


# --- the shared-key handshake ----------------------------------------------------------------------


def _as_bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)


class PingCheck(NamedTuple):
    """What a server concluded from a PING: ``ok``, the PONG ``reason`` when not, and the client's
    hostname and salt (the salt goes into the server's PONG digest)."""

    ok: bool
    reason: str
    hostname: str
    salt: Union[str, bytes]


def check_ping(
    message: Any,
    nonce: bytes,
    shared_key: Union[str, bytes],
    auth_salt: bytes = b"",
    users: Optional[Dict[str, str]] = None,
) -> PingCheck:
    """The server's check of a decoded PING against the nonce (and auth salt) of its HELO.

    Raises :class:`ForwardProtocolError` when ``message`` is not a PING at all (data sent before the
    handshake, a wrong shape); returns ``ok=False`` with Fluentd's reason (``"shared_key mismatch"``,
    ``"username/password mismatch"``) when the digests do not match. With ``users`` (user name ->
    password) the user name and its password digest are checked too.
    """
    if not isinstance(message, (list, tuple)) or not message or message[0] != "PING":
        if isinstance(message, (list, tuple)) and message and isinstance(message[0], str):
            raise ForwardProtocolError(f"sent data (tag {message[0][:40]!r}) before the shared-key handshake")
        raise ForwardProtocolError(f"sent {type(message).__name__} instead of PING")
    if len(message) != 6:
        raise ForwardProtocolError(f"PING of {len(message)} items instead of 6")
    _, hostname, salt, digest, username, user_digest = message
    if not (
        isinstance(hostname, str)
        and isinstance(salt, (str, bytes))
        and isinstance(digest, (str, bytes))
        and isinstance(username, str)
        and isinstance(user_digest, (str, bytes))
    ):
        raise ForwardProtocolError("PING with a field of the wrong type")
    expected = shared_key_digest(salt, hostname, nonce, shared_key)
    if not hmac.compare_digest(_as_bytes(digest), expected.encode("ascii")):
        return PingCheck(False, "shared_key mismatch", hostname, salt)
    if users:
        password = users.get(username)
        user_ok = password is not None and hmac.compare_digest(
            _as_bytes(user_digest), password_digest(auth_salt, username, password).encode("ascii")
        )
        if not user_ok:
            return PingCheck(False, "username/password mismatch", hostname, salt)
    return PingCheck(True, "", hostname, salt)
