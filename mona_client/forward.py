"""The client's half of the Fluentd Forward protocol v1 codec: what a sender writes and reads.

A sender packs ``[time, record]`` entries into PackedForward messages with a chunk id, reads acks and,
with a shared key, answers the server's ``HELO`` with a ``PING`` and checks its ``PONG``. The receiving
half (the four event modes, checking entries without decoding them, ``HELO``/``PONG`` and the ``PING``
check) belongs to the collector, in :mod:`mona_collector.forward_codec`. Nothing here opens a socket.

Strings are packed with ``surrogateescape``: text decoded from invalid UTF-8 on the wire packs back to
its exact bytes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import struct
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import msgpack

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_PORT",
    "EVENT_TIME_EXT_CODE",
    "EventTime",
    "ForwardProtocolError",
    "FrameDecoder",
    "encode_event_time",
    "new_chunk_id",
    "new_unpacker",
    "pack_entry",
    "pack_packed_forward",
    "pack_ping",
    "password_digest",
    "shared_key_digest",
]

DEFAULT_PORT = 24224
#: Cap for one msgpack frame and for what one connection may buffer (fluent-bit caps near 6 MB).
DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
EVENT_TIME_EXT_CODE = 0

_EVENT_TIME = struct.Struct(">II")


class ForwardProtocolError(ValueError):
    """Bytes or objects that do not form a valid Forward protocol message."""


class EventTime(NamedTuple):
    """Fluentd's nanosecond time: msgpack ext type 0, big-endian uint32 seconds and nanoseconds."""

    seconds: int
    nanoseconds: int = 0


# --- encoding -------------------------------------------------------------------------------------


def encode_event_time(seconds: int, nanoseconds: int = 0) -> msgpack.ExtType:
    """The msgpack ``EventTime`` extension for a time, ready to pass to ``msgpack.packb``."""
    return msgpack.ExtType(EVENT_TIME_EXT_CODE, _EVENT_TIME.pack(seconds, nanoseconds))


def pack_entry(time: Union[int, EventTime], record: Any) -> bytes:
    """One ``[time, record]`` entry as PackedForward concatenates them."""
    if isinstance(time, float):
        raise ForwardProtocolError("event times are integers or EventTime, never floats")
    if isinstance(time, EventTime):  # a NamedTuple would otherwise pack as a plain array
        time = encode_event_time(time.seconds, time.nanoseconds)
    # surrogateescape: strings decoded from invalid UTF-8 on the wire are packed back to their bytes.
    packed: bytes = msgpack.packb([time, record], use_bin_type=True, unicode_errors="surrogateescape")
    return packed


def new_chunk_id() -> str:
    """A unique chunk id for the option map, in the form out_forward uses (Base64 of 16 random bytes)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def pack_packed_forward(
    tag: str,
    entries: bytes,
    size: int,
    chunk: Optional[str] = None,
    compress: bool = False,
) -> bytes:
    """A PackedForward (or CompressedPackedForward) message around already packed entries.

    ``entries`` is the concatenation of :func:`pack_entry` results and ``size`` their count. With
    ``chunk`` set the receiver answers ``{"ack": chunk}`` once it has accepted the events.
    """
    option: Dict[str, Any] = {"size": size}
    if chunk is not None:
        option["chunk"] = chunk
    if compress:
        entries = gzip.compress(entries)
        option["compressed"] = "gzip"
    packed: bytes = msgpack.packb([tag, entries, option], use_bin_type=True)
    return packed


# --- decoding (acks, HELO, PONG) ------------------------------------------------------------------


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EVENT_TIME_EXT_CODE and len(data) == 8:
        return EventTime(*_EVENT_TIME.unpack(data))
    return msgpack.ExtType(code, data)


def new_unpacker(max_buffer_size: int = DEFAULT_MAX_FRAME_BYTES) -> msgpack.Unpacker:
    """A streaming unpacker configured the way every Forward reader here needs it."""
    return msgpack.Unpacker(
        raw=False,
        unicode_errors="surrogateescape",
        ext_hook=_ext_hook,
        strict_map_key=False,
        max_buffer_size=max_buffer_size,
    )


class FrameDecoder:
    """Turns a byte stream, cut anywhere, into whole msgpack objects.

    ``feed`` raises :class:`ForwardProtocolError` when the bytes are not msgpack or when one frame
    would need more than ``max_frame_bytes`` of buffer; the connection should then be closed.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._unpacker = new_unpacker(max_frame_bytes)
        self._fed = 0
        self._consumed = 0  # stream offset after the last whole frame

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet part of a whole frame (non-zero means: stopped mid-frame)."""
        return self._fed - self._consumed

    def feed(self, data: bytes) -> List[Any]:
        objects: List[Any] = []
        view = memoryview(data)
        # Feed in slices that always fit, so that a large read of several small frames is not
        # refused only because it arrived in one piece.
        step = max(1, self.max_frame_bytes // 2)
        for start in range(0, len(view), step):
            try:
                piece = view[start : start + step]
                self._unpacker.feed(piece)
                self._fed += len(piece)
            except msgpack.BufferFull:
                raise ForwardProtocolError(f"frame larger than the {self.max_frame_bytes} byte limit") from None
            try:
                for obj in self._unpacker:
                    objects.append(obj)
                    self._consumed = self._unpacker.tell()
            except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
                # TypeError: a map key that is itself a map or an array (unhashable).
                raise ForwardProtocolError(f"invalid msgpack: {exc}") from None
        return objects


# --- shared-key handshake -------------------------------------------------------------------------


def _as_bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)


def shared_key_digest(
    salt: Union[str, bytes], hostname: Union[str, bytes], nonce: bytes, shared_key: Union[str, bytes]
) -> str:
    """hex(sha512(salt + hostname + nonce + shared_key)), as both PING and PONG carry it."""
    digest = hashlib.sha512()
    for part in (salt, hostname, nonce, shared_key):
        digest.update(_as_bytes(part))
    return digest.hexdigest()


def password_digest(auth_salt: Union[str, bytes], username: str, password: str) -> str:
    """hex(sha512(auth + username + password)) for user authentication in PING."""
    digest = hashlib.sha512()
    for part in (auth_salt, username, password):
        digest.update(_as_bytes(part))
    return digest.hexdigest()


def pack_ping(
    hostname: str,
    shared_key: str,
    nonce: bytes,
    auth_salt: bytes = b"",
    username: str = "",
    password: str = "",
) -> Tuple[bytes, str]:
    """The PING message, and the salt the server's PONG digest must be checked against."""
    salt = base64.b16encode(os.urandom(16)).decode("ascii").lower()
    user_digest = password_digest(auth_salt, username, password) if auth_salt else ""
    message = [
        "PING",
        hostname,
        salt,
        shared_key_digest(salt, hostname, nonce, shared_key),
        username,
        user_digest,
    ]
    return msgpack.packb(message, use_bin_type=True), salt
