"""One Forward connection, as the sender uses it: connect, TLS, the shared-key handshake, chunks out,
acks in, and a TLS close_notify at the end.

It has no thread and no queue: each call does its socket I/O on the caller's thread, in short slices
(``IO_SLICE``) between which it calls ``between_slices`` (the sender spills a growing queue there, and
gives up by raising when it is closing), so that the worker in :mod:`mona_client.transport` stays in
charge of time. Tests drive it directly, one call after the other.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import sys
import time
from collections import deque
from typing import Any, Callable, Deque, Iterator, Union

from . import forward
from .sender_options import SenderOptions

__all__ = ["IO_SLICE", "ForwardConnection", "HandshakeError", "is_refusal"]

# Failures that mean "the peer closed the connection on what we sent", as a frame above its size cap
# does; timeouts, refused connections and handshake failures are something else.
_REFUSALS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, ssl.SSLEOFError, ssl.SSLZeroReturnError)

# How long closing a TLS connection may wait to send its close_notify (a TLS shutdown).
_TLS_SHUTDOWN_TIMEOUT = 0.2

#: How long one blocking socket call may last before the caller gets its ``between_slices`` call.
IO_SLICE = 0.01

# What a socket call says when its I/O slice ended with nothing done.
_SLICE_ENDED = (socket.timeout, BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class HandshakeError(ConnectionError):
    """The shared-key handshake failed: wrong key, or a server that is not who it claims."""


def is_refusal(exc: BaseException) -> bool:
    """True when ``exc`` says the peer closed the connection on what was sent (not a timeout, not a
    refused connection): counted against the oldest unacked chunk."""
    return isinstance(exc, _REFUSALS)


def _nothing() -> None:
    """The default ``between_slices``: nothing to do between two I/O slices."""


class ForwardConnection:
    """A connected, handshaken Forward peer. Make one with :meth:`open`; every failure raises
    (``OSError``, :class:`HandshakeError`, :class:`~mona_client.forward.ForwardProtocolError`)."""

    def __init__(self, sock: socket.socket, options: SenderOptions) -> None:
        """Wrap a socket that is connected (and handshaken) already; its I/O is sliced from now on."""
        _slice_io(sock)
        self._sock = sock
        self._options = options
        self._decoder = forward.FrameDecoder(64 * 1024)

    @classmethod
    def open(cls, options: SenderOptions) -> ForwardConnection:
        """Connect to ``options.host:options.port``, with TLS and the shared-key handshake if asked."""
        sock = socket.create_connection((options.host, options.port), timeout=options.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if options.ssl_context is not None:
                sock = options.ssl_context.wrap_socket(sock, server_hostname=options.server_hostname or options.host)
            if options.shared_key is not None:
                _handshake(sock, options, options.shared_key)
        except BaseException:
            sock.close()
            raise
        return cls(sock, options)

    def send_chunk(self, entries: bytes, count: int, between_slices: Callable[[], None] = _nothing) -> str:
        """Send ``count`` encoded entries as one PackedForward frame; returns the chunk id its ack will
        carry ("" without acks). A fresh id per call: an ack that arrives late for an earlier attempt
        of the same entries is not taken for this one."""
        chunk_id = forward.new_chunk_id() if self._options.require_ack else ""
        self._send(forward.pack_packed_forward(self._options.tag, entries, count, chunk_id or None), between_slices)
        return chunk_id

    def _send(self, data: bytes, between_slices: Callable[[], None]) -> None:
        """sendall in slices; raises TimeoutError when the peer took nothing for send_timeout."""
        view = memoryview(data)
        deadline = time.monotonic() + self._options.send_timeout
        while view:
            try:
                sent = self._sock.send(view)
            except _SLICE_ENDED:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the peer took nothing for {self._options.send_timeout:g}s") from None
                between_slices()
                continue
            view = view[sent:]

    def receive_acks(self, deadline: float, between_slices: Callable[[], None] = _nothing) -> Iterator[str]:
        """Read once from the peer (waiting until ``deadline``, monotonic) and yield the chunk ids it acked.

        An empty read means the peer closed the connection; a HELO means it wants the shared key.
        """
        while True:
            try:
                data = self._sock.recv(65536)
                break
            except _SLICE_ENDED:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no ack within {self._options.ack_timeout:g}s") from None
                between_slices()
        if not data:
            raise ConnectionResetError("the peer closed the connection")
        for answer in self._decoder.feed(data):
            yield _ack_of(answer)

    def close(self) -> None:
        """Close the connection; a TLS one first says so with a close_notify (a peer such as Fluentd
        warns about every TLS connection that ends without one). Waits at most _TLS_SHUTDOWN_TIMEOUT."""
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.settimeout(_TLS_SHUTDOWN_TIMEOUT)
                sock.unwrap()
            except (OSError, ValueError):
                pass  # a peer that is gone or does not answer: the socket is closed anyway
        with contextlib.suppress(OSError):
            sock.close()


def _ack_of(answer: Any) -> str:
    """The chunk id of an ack; anything else the peer may say is an error."""
    if isinstance(answer, list) and answer[:1] == ["HELO"]:
        raise HandshakeError("the server requires shared-key authentication (set MONA_SHARED_KEY)")
    if not isinstance(answer, dict) or "ack" not in answer:
        raise forward.ForwardProtocolError(f"unexpected answer from the peer: {answer!r:.100}")
    ack: str = answer["ack"]
    return ack


def _handshake(sock: socket.socket, options: SenderOptions, shared_key: str) -> None:
    """The Forward protocol's HELO / PING / PONG exchange (shared-key authentication)."""
    decoder = forward.FrameDecoder(64 * 1024)
    sock.settimeout(options.connect_timeout)
    received: Deque[Any] = deque()

    def receive() -> Any:
        while not received:
            data = sock.recv(65536)
            if not data:
                raise HandshakeError("the server closed the connection during the handshake")
            received.extend(decoder.feed(data))
        return received.popleft()

    helo = receive()
    if not (isinstance(helo, list) and len(helo) == 2 and helo[0] == "HELO" and isinstance(helo[1], dict)):
        raise HandshakeError(f"expected HELO, got a {type(helo).__name__}")
    nonce = helo[1].get("nonce", b"")
    auth_salt = helo[1].get("auth", b"")
    if not isinstance(nonce, (bytes, str)) or not isinstance(auth_salt, (bytes, str)):
        raise HandshakeError("the server's HELO carries a nonce or auth salt that is not bytes")
    nonce, auth_salt = _as_bytes(nonce), _as_bytes(auth_salt)
    client_hostname = options.client_hostname or socket.gethostname()
    ping, salt = forward.pack_ping(client_hostname, shared_key, nonce, auth_salt, options.username, options.password)
    sock.sendall(ping)
    pong = receive()
    if not (isinstance(pong, list) and len(pong) == 5 and pong[0] == "PONG"):
        raise HandshakeError(f"expected PONG, got a {type(pong).__name__}")
    _, ok, reason, server_hostname, digest = pong
    if not ok:
        raise HandshakeError(f"the server refused the shared key: {reason}")
    if server_hostname == client_hostname:
        raise HandshakeError("the server claims this client's own hostname")
    expected = forward.shared_key_digest(salt, server_hostname, nonce, shared_key)
    if digest != expected:
        raise HandshakeError("the server does not know the shared key")


def _slice_io(sock: socket.socket) -> None:
    """Make each send and recv return after at most ``IO_SLICE`` seconds.

    On Linux the kernel's own socket timeouts do it in one system call per send or recv. Python's
    ``settimeout`` polls first, and each of those two calls releases the GIL and waits to get it back
    (up to the 5 ms switch interval while exporting threads run), which halves what the sender moves.
    Cooperative sockets (gevent's) keep ``settimeout``: their waits go through the hub.
    """
    cooperative = not type(sock).__module__.startswith(("socket", "ssl"))
    if sys.platform.startswith("linux") and not cooperative:
        slice_time = struct.pack("ll", 0, int(IO_SLICE * 1_000_000))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, slice_time)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, slice_time)
            sock.settimeout(None)
            return
        except OSError:
            pass
    sock.settimeout(IO_SLICE)


def _as_bytes(value: Union[str, bytes]) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return value
