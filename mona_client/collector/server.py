"""The asyncio Forward protocol server: connections, framing, acks, limits and the UDP heartbeat.

Each TCP connection decodes its byte stream into frames (msgpack, or JSON when the first byte is
``{`` or ``[`` as Fluentd allows), turns each frame into an event message of any of the four modes and
hands it to the :class:`~mona_client.collector.ingest.Ingestor`. The ack ``{"ack": chunk}`` is written
when the ingestor reports the transaction committed, never before.

A connection that sends something that is not a Forward message, a frame above the size limit, or
stops mid-frame for longer than the stall timeout is closed with one log line; the others carry on.
A connection whose messages wait to be written stops being read (TCP backpressure), which keeps
memory bounded. Connection resets are normal (Fluentd closes with RST) and are not errors.

The shared-key handshake and TLS are not implemented yet; they belong in :class:`ForwardConnection`
(a HELO on ``connection_made``, frames checked before data) and in the ``ssl`` argument of ``start``.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Set, Union

from ..forward import (
    DEFAULT_MAX_FRAME_BYTES,
    ForwardProtocolError,
    FrameDecoder,
    decode_event_message,
    pack_ack,
)
from .ingest import IngestResult, Ingestor, Submission

log = logging.getLogger("mona_client.collector")


@dataclass
class ServerSettings:
    """Limits of the Forward server."""

    #: Largest frame, and largest incomplete frame a connection may buffer, in bytes.
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    #: A connection that stops mid-frame for this many seconds is closed.
    stall_timeout: float = 30.0
    #: A connection is not read while this many of its events wait to be committed.
    max_pending_events: int = 50000
    #: Accept JSON frames (first byte ``{`` or ``[``) as Fluentd does.
    accept_json: bool = True
    #: Answer the UDP heartbeat (0x00 -> 0x00) on the same port.
    udp_heartbeat: bool = True


class JsonFrameDecoder:
    """Turns a stream of concatenated JSON values into objects, with the same size cap as msgpack."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._decoder = json.JSONDecoder()

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> List[Any]:
        try:
            buffer = self._buffer + self._text.decode(data)
        except UnicodeDecodeError as exc:
            raise ForwardProtocolError(f"invalid JSON text: {exc}") from None
        objects: List[Any] = []
        position = 0
        while True:
            while position < len(buffer) and buffer[position].isspace():
                position += 1
            if position == len(buffer):
                break
            try:
                obj, position = self._decoder.raw_decode(buffer, position)
            except json.JSONDecodeError as exc:
                if exc.pos >= len(buffer) or exc.msg.startswith("Unterminated string"):
                    break  # incomplete: wait for more bytes
                raise ForwardProtocolError(f"invalid JSON: {exc.msg}") from None
            objects.append(obj)
        self._buffer = buffer[position:]
        if len(self._buffer) > self.max_frame_bytes:
            raise ForwardProtocolError(f"frame larger than the {self.max_frame_bytes} byte limit")
        return objects


class ForwardConnection(asyncio.Protocol):
    """One TCP client of the Forward server."""

    def __init__(self, server: "ForwardServer") -> None:
        self.server = server
        self.settings = server.settings
        self.transport: Optional[asyncio.Transport] = None
        self.peer = "?"
        self.decoder: Optional[Union[FrameDecoder, JsonFrameDecoder]] = None
        self.last_activity = time.monotonic()
        self.pending_events = 0
        self.paused = False
        self.closed = False
        self._reject_logged = False

    # --- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.server.connections.add(self)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if exc is not None and not isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            log.info("collector: connection from %s lost: %s", self.peer, exc)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_activity = time.monotonic()
        decoder = self.decoder
        if decoder is None:
            stripped = data.lstrip()
            if not stripped:
                return
            if self.settings.accept_json and stripped[:1] in (b"{", b"["):
                decoder = JsonFrameDecoder(self.settings.max_frame_bytes)
            else:
                decoder = FrameDecoder(self.settings.max_frame_bytes)
            self.decoder = decoder
        try:
            frames = decoder.feed(data)
        except ForwardProtocolError as exc:
            self.fail(str(exc))
            return
        for frame in frames:
            if frame is None:  # keepalive
                continue
            try:
                batch, entries = decode_event_message(frame, self.settings.max_frame_bytes)
            except ForwardProtocolError as exc:
                self.fail(f"not a Forward event message: {exc}")
                return
            self._submit(Submission(batch, entries, self._done_callback(batch.chunk, len(batch.events))))

    # --- ingest --------------------------------------------------------------------------------

    def _submit(self, submission: Submission) -> None:
        self.pending_events += len(submission.batch.events)
        if not self.paused and self.pending_events > self.settings.max_pending_events:
            assert self.transport is not None
            self.transport.pause_reading()
            self.paused = True
        self.server.ingestor.submit(submission)

    def _done_callback(self, chunk: Any, events: int) -> Any:
        loop = self.server.loop

        def done(result: IngestResult) -> None:  # called on the writer thread
            loop.call_soon_threadsafe(self._stored, result, chunk, events)

        return done

    def _stored(self, result: IngestResult, chunk: Any, events: int) -> None:
        self.pending_events -= events
        if not result.ok:
            self.fail(f"could not store its events, it will have to resend them: {result.error}")
            return
        if result.rejected and not self._reject_logged:
            self._reject_logged = True
            log.warning(
                "collector: %s sent %d malformed mona record(s) (first: %s); they are kept raw only",
                self.peer,
                result.rejected,
                result.reject_reason,
            )
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        if chunk is not None:
            self.transport.write(pack_ack(chunk))
        if self.paused and self.pending_events <= self.settings.max_pending_events // 2:
            self.paused = False
            self.transport.resume_reading()

    def fail(self, reason: str) -> None:
        """Close this connection because of what it sent, with one log line."""
        if self.closed:
            return
        self.closed = True
        log.warning("collector: closing connection from %s: %s", self.peer, reason)
        if self.transport is not None:
            self.transport.close()

    def check_stall(self, now: float) -> None:
        decoder = self.decoder
        if (
            decoder is not None
            and not self.paused
            and decoder.pending_bytes
            and now - self.last_activity > self.settings.stall_timeout
        ):
            self.fail(f"stalled mid-frame for more than {self.settings.stall_timeout:g} s")


class HeartbeatProtocol(asyncio.DatagramProtocol):
    """Answers Fluentd's UDP heartbeat: any datagram is answered with one 0x00 byte."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(b"\x00", addr)


class ForwardServer:
    """The listening side; lives on one asyncio loop."""

    def __init__(self, ingestor: Ingestor, settings: Optional[ServerSettings] = None) -> None:
        self.ingestor = ingestor
        self.settings = settings or ServerSettings()
        self.connections: Set[ForwardConnection] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[asyncio.base_events.Server] = None
        self._udp: Optional[asyncio.DatagramTransport] = None
        self._sweeper: Optional[asyncio.Task[None]] = None
        self.port = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the server runs on (known once :meth:`start` ran)."""
        assert self._loop is not None, "the server is not started"
        return self._loop

    async def start(self, bind: str, port: int) -> int:
        """Listen on ``bind:port`` (0 picks a free port) and return the port."""
        self._loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(lambda: ForwardConnection(self), bind, port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.settings.udp_heartbeat:
            try:
                self._udp, _ = await self.loop.create_datagram_endpoint(
                    HeartbeatProtocol, local_addr=(bind, self.port)
                )
            except OSError as exc:
                log.warning("collector: no UDP heartbeat on port %d: %s", self.port, exc)
        self._sweeper = self.loop.create_task(self._sweep())
        return self.port

    async def _sweep(self) -> None:
        interval = max(0.05, min(1.0, self.settings.stall_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.check_stall(now)

    async def close(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, store what was received, send its acks, then close every connection."""
        if self._server is not None:
            self._server.close()
        if self._udp is not None:
            self._udp.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            if connection.transport is not None and not connection.transport.is_closing():
                connection.transport.pause_reading()
        drained = await self.loop.run_in_executor(None, self.ingestor.drain, drain_timeout)
        if not drained:
            log.warning("collector: gave up waiting for the database after %g s", drain_timeout)
        await asyncio.sleep(0)  # run the ack callbacks the writer scheduled
        for connection in list(self.connections):
            connection.closed = True
            if connection.transport is not None:
                connection.transport.close()
        await asyncio.sleep(0)
