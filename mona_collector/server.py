"""The asyncio Forward protocol server: connections, framing, acks, limits and the UDP heartbeat.

Each TCP connection decodes its byte stream into frames (msgpack, or JSON when the first byte is
``{`` or ``[`` as Fluentd allows), checks each frame as an event message of any of the four modes
(framing and shape only: the records of PackedForward entries are not decoded, see
:func:`~mona_collector.forward_codec.split_event_message`) and hands its entries blob to the
:class:`~mona_collector.ingest.Ingestor`, which appends it to the raw log. The ack
``{"ack": chunk}`` is written when that transaction is committed, never before; merging into ARCs
happens afterwards, in the merger process.

A connection that sends something that is not a Forward message, a frame above the size limit, or
does not complete a frame within the stall timeout of its first byte is closed with one log line; the
others carry on. A connection whose messages wait to be written stops being read (TCP backpressure),
which keeps memory bounded. Connection resets are normal (Fluentd closes with RST) and are not errors.

Limits against clients that hold resources without sending anything useful (see :class:`ServerSettings`):
a cap on open connections (beyond it a new connection is closed at once), an idle timeout (no complete
frame for that long, including a connection that never sent a byte), and a cap on the bytes held in
incomplete frames across all connections (beyond it the connection holding the most is closed). When
``accept()`` runs out of file descriptors, asyncio stops accepting for a second and retries. Each of
these is logged in one line per kind at most once a minute, with a count of the occurrences left out.

Security, both optional and usable together (the handshake then runs inside TLS):

* With a shared key the collector speaks first: ``HELO`` (a random nonce, a random auth salt,
  keepalive). The first frame from the client must be a ``PING`` whose digest proves it knows the key
  (and, with users configured, a user name and password); the collector answers ``PONG`` with its own
  digest and only then takes event messages. Anything else (a wrong key, an unknown user, data instead
  of ``PING``, bytes that are not msgpack) is answered ``PONG`` false with the reason, logged in one
  line naming the peer, and the connection is closed before anything is stored. Repeated refusals of
  one address for one reason are logged once a minute with a count.
* With a certificate and key the server speaks TLS 1.2 or 1.3; with a CA file it also requires a client
  certificate signed by that CA. A failed TLS handshake is logged the same way.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import math
import os
import re
import resource
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Union

import msgpack

from mona_client.forward import DEFAULT_MAX_FRAME_BYTES, ForwardProtocolError, FrameDecoder, shared_key_digest
from mona_client.logs import RateLimitedLog

from .forward_codec import check_ping, pack_ack, pack_helo, pack_pong, split_event_message
from .ingest import Ingestor, IngestResult, Submission

log = logging.getLogger("mona_collector")


@dataclass
class ServerSettings:
    """Limits of the Forward server."""

    #: Largest frame, and largest incomplete frame a connection may buffer, in bytes.
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    #: A frame must be complete this many seconds after its first byte arrived (measured from the
    #: start of the frame, not reset by each byte: a client dribbling bytes cannot hold memory for long).
    stall_timeout: float = 30.0
    #: At most this many connections are open at once; a new one beyond it is closed at once.
    max_connections: int = 1024
    #: A connection that completes no frame for this many seconds is closed (one that never sends a
    #: byte too). Connections waiting for their events to be stored are not idle.
    idle_timeout: float = 300.0
    #: Bytes held in incomplete frames across all connections; beyond it the connection holding the
    #: most (the oldest frame among equals) is closed.
    max_buffered_bytes: int = 256 * 1024 * 1024
    #: A connection is not read while this many of its events wait to be committed.
    max_pending_events: int = 50000
    #: Accept JSON frames (first byte ``{`` or ``[``) as Fluentd does.
    accept_json: bool = True
    #: Answer the UDP heartbeat (0x00 -> 0x00) on the same port.
    udp_heartbeat: bool = True
    #: Require the shared-key handshake with this key (None: no handshake).
    shared_key: Optional[str] = field(default=None, repr=False)
    #: With a shared key, also require one of these user names with its password.
    users: Optional[Dict[str, str]] = field(default=None, repr=False)
    #: The name the collector gives in PONG (a client refuses a server that has its own name, so the
    #: default is not the bare host name, which a client on the same machine would also use).
    hostname: Optional[str] = None
    #: TLS: the server's certificate chain and key (PEM). Both set: TLS only, no plain connections.
    tls_cert_file: Optional[Union[str, os.PathLike[str]]] = None
    tls_key_file: Optional[Union[str, os.PathLike[str]]] = None
    #: TLS: require client certificates signed by this CA.
    tls_ca_file: Optional[Union[str, os.PathLike[str]]] = None

    def __post_init__(self) -> None:
        self._check_limits()
        if self.hostname is None:
            self.hostname = f"mona-collector.{socket.gethostname()}"
        if self.shared_key is not None and not self.shared_key:
            raise ValueError("the shared key is empty")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("TLS needs both a certificate file and a key file")
        if self.tls_ca_file and not self.tls_cert_file:
            raise ValueError("a client CA file needs TLS (a certificate and a key) too")
        if self.users and self.shared_key is None:
            raise ValueError("user authentication needs a shared key")

    def _check_limits(self) -> None:
        """Refuse limits that would make the server useless or that are not numbers at all."""
        for name in ("max_frame_bytes", "max_connections", "max_buffered_bytes", "max_pending_events"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
        for name in ("stall_timeout", "idle_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ValueError(f"{name} must be a number of seconds above 0, not {value!r}")
        if self.max_buffered_bytes < self.max_frame_bytes:
            raise ValueError(
                f"max_buffered_bytes ({self.max_buffered_bytes}) is below max_frame_bytes ({self.max_frame_bytes}): "
                "a frame of the largest size could never be received"
            )

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    def describe(self) -> str:
        """How connections are secured, for the start-up log line."""
        parts = ["TLS" + (" with client certificates" if self.tls_ca_file else "") if self.tls else "TCP"]
        if self.shared_key is not None:
            parts.append("shared key" + (" and users" if self.users else ""))
        return ", ".join(parts)


def server_ssl_context(
    cert_file: Union[str, os.PathLike[str]],
    key_file: Union[str, os.PathLike[str]],
    ca_file: Optional[Union[str, os.PathLike[str]]] = None,
) -> ssl.SSLContext:
    """A TLS server context: TLS 1.2 or 1.3; with ``ca_file``, client certificates are required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    if ca_file:
        context.load_verify_locations(cafile=os.fspath(ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


#: Largest PING, or anything a client may buffer before it authenticated.
MAX_HANDSHAKE_BYTES = 64 * 1024


#: asyncio's message when accept() fails for lack of file descriptors, buffers or memory.
_ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"
#: File descriptors the collector needs besides its connections (databases, WAL files, pipes, logs).
_RESERVED_DESCRIPTORS = 64


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_surrogates(obj: Any) -> None:
    """Refuse a JSON value whose ``\\uXXXX`` escapes left a lone surrogate: it has no bytes to store."""
    try:
        msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogateescape")
    except (UnicodeEncodeError, ValueError, OverflowError) as exc:
        raise ForwardProtocolError(f"JSON that cannot be stored: {exc}") from None


def _json_int(text: str) -> int:
    """JSON integers must fit msgpack's 64 bits, or the events could never be stored."""
    value = int(text)
    if not -(2**63) <= value < 2**64:
        raise ForwardProtocolError(f"JSON integer out of the 64-bit range: {text[:30]}")
    return value


class JsonFrameDecoder:
    """Turns a stream of concatenated JSON values into objects, with the same size cap as msgpack."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._decoder = json.JSONDecoder(parse_int=_json_int)

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
            start = position
            try:
                obj, position = self._decoder.raw_decode(buffer, position)
            except json.JSONDecodeError as exc:
                if exc.pos >= len(buffer) or exc.msg.startswith("Unterminated string"):
                    break  # incomplete: wait for more bytes
                raise ForwardProtocolError(f"invalid JSON: {exc.msg}") from None
            except RecursionError:
                raise ForwardProtocolError("JSON nested too deeply") from None
            if _SURROGATE_ESCAPE.search(buffer, start, position):
                _check_surrogates(obj)
            objects.append(obj)
        self._buffer = buffer[position:]
        if len(self._buffer) > self.max_frame_bytes:
            raise ForwardProtocolError(f"frame larger than the {self.max_frame_bytes} byte limit")
        return objects


class ForwardConnection(asyncio.Protocol):
    """One TCP client of the Forward server."""

    def __init__(self, server: ForwardServer) -> None:
        self.server = server
        self.settings = server.settings
        self.transport: Optional[asyncio.Transport] = None
        self.peer = "?"
        self.decoder: Optional[Union[FrameDecoder, JsonFrameDecoder]] = None
        self.pending_events = 0
        self.paused = False
        self.closed = False
        self.host = "?"
        self.connected_at = time.monotonic()
        #: When the last complete frame arrived (the connection's start before the first one).
        self.last_frame_at = self.connected_at
        #: When the first byte of the incomplete frame arrived (None: no incomplete frame).
        self.frame_started_at: Optional[float] = None
        #: Bytes of the incomplete frame, as counted in the server's total.
        self.buffered_bytes = 0
        # TLS: False until the TLS handshake completed (True at once without TLS).
        self.secured = server.ssl_context is None
        # Shared key: False until a valid PING was answered (True at once without a key).
        self.authenticated = self.settings.shared_key is None
        self.nonce = b""
        self.auth_salt = b""
        # The user name of a valid PING when users are configured: what this connection may write.
        self.user: Optional[str] = None

    # --- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.host = str(peer[0])
            self.peer = f"{peer[0]}:{peer[1]}"
        if len(self.server.connections) >= self.settings.max_connections:
            self.server.limits.log(
                logging.WARNING,
                "connections",
                "collector: %d connections open, the limit (--max-connections): closing new connections at once "
                "(this one from %s)",
                len(self.server.connections),
                self.peer,
            )
            self.closed = True
            transport.close()
            return
        self.server.connections.add(self)
        if not self.secured:
            transport.pause_reading()  # start_tls takes the socket over
            self.server.loop.create_task(self._start_tls(transport))
        else:
            self._secured()

    async def _start_tls(self, raw: asyncio.Transport) -> None:
        assert self.server.ssl_context is not None
        try:
            transport = await self.server.loop.start_tls(
                raw,
                self,
                self.server.ssl_context,
                server_side=True,
                ssl_handshake_timeout=max(1.0, self.settings.stall_timeout),
            )
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
            self._drop()  # connected and left (a TCP heartbeat): nothing to say
            return
        except Exception as exc:
            reason = _tls_reason(exc)
            self.server.refusals.log(
                logging.WARNING,
                f"{self.host} tls:{reason}",
                "collector: refused connection from %s: TLS handshake failed: %s",
                self.peer,
                reason,
            )
            raw.close()
            self._drop()
            return
        if transport is None or self.closed:  # closed during the handshake
            self._drop()
            return
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.secured = True
        self._secured()

    def _secured(self) -> None:
        """The connection is usable (after TLS, if any): greet the client when a key is required."""
        if self.authenticated:
            return
        assert self.transport is not None
        self.nonce = os.urandom(16)
        self.auth_salt = os.urandom(16)
        self.decoder = FrameDecoder(self.settings.max_frame_bytes)  # msgpack only, never JSON
        self.transport.write(pack_helo(self.nonce, self.auth_salt, keepalive=True))

    def _drop(self) -> None:
        self.closed = True
        self._release()

    def _release(self) -> None:
        """Give back what this connection holds in the server: its place and its buffered bytes."""
        self.server.connections.discard(self)
        self._set_buffered(0)
        self.decoder = None

    def _set_buffered(self, count: int) -> None:
        self.server.buffered_bytes += count - self.buffered_bytes
        self.buffered_bytes = count

    def close_silently(self) -> None:
        """Close without a word to the client; what it holds is given back at once."""
        self.closed = True
        self._release()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self._release()
        if not self.secured:
            return  # a failed TLS handshake: _start_tls says why
        if exc is not None and not isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            log.info("collector: connection from %s lost: %s", self.peer, exc)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
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
            if not self.authenticated:
                self.refuse(
                    "invalid ping message", f"sent bytes that are not msgpack instead of PING: {exc}", "msgpack"
                )
            else:
                self.fail(str(exc))
            return
        self._track_frames(bool(frames), decoder.pending_bytes)
        for frame in frames:
            if frame is None:  # keepalive
                continue
            if not self.authenticated:
                if not self._check_ping(frame):
                    return
                continue
            try:
                message = split_event_message(frame, self.settings.max_frame_bytes)
            except ForwardProtocolError as exc:
                self.fail(f"not a Forward event message: {exc}")
                return
            done = self._done_callback(message.chunk, message.events)
            self._submit(Submission(message.tag, message.entries, message.events, done, self.user))
        if not self.authenticated and decoder.pending_bytes > MAX_HANDSHAKE_BYTES:
            self.refuse("invalid ping message", f"sent more than {MAX_HANDSHAKE_BYTES} bytes without a PING", "size")
            return
        if self.server.buffered_bytes > self.settings.max_buffered_bytes:
            self.server.shed_buffered()

    def _track_frames(self, completed: bool, pending: int) -> None:
        """After a read: restart the idle clock if a frame was completed, start the stall clock when a
        new frame began (it is not reset by later bytes of that frame), count the bytes held."""
        now = time.monotonic()
        if completed:
            self.last_frame_at = now
        if not pending:
            self.frame_started_at = None
        elif completed or self.frame_started_at is None:
            self.frame_started_at = now
        self._set_buffered(pending)

    # --- shared-key handshake ------------------------------------------------------------------

    def _check_ping(self, frame: Any) -> bool:
        """Answer the client's first frame: PONG true and True for a valid PING, else refuse."""
        settings = self.settings
        assert settings.shared_key is not None and settings.hostname is not None
        try:
            check = check_ping(frame, self.nonce, settings.shared_key, self.auth_salt, settings.users)
        except ForwardProtocolError as exc:
            self.refuse("invalid ping message", str(exc), "no ping")
            return False
        if not check.ok:
            self.refuse(check.reason, f"{check.reason} (client hostname {check.hostname!r})")
            return False
        self.authenticated = True
        if settings.users:
            self.user = frame[4]  # check_ping checked it is a configured user name
        assert self.transport is not None
        digest = shared_key_digest(check.salt, settings.hostname, self.nonce, settings.shared_key)
        self.transport.write(pack_pong(True, "", settings.hostname, digest))
        return True

    def refuse(self, reason: str, detail: str, kind: str = "") -> None:
        """Answer PONG false with ``reason`` and close, with one log line (rate-limited per address and
        ``kind`` of refusal, which defaults to the reason)."""
        if self.closed:
            return
        self.server.refusals.log(
            logging.WARNING,
            f"{self.host} {kind or reason}",
            "collector: refused connection from %s: %s; nothing from it is stored",
            self.peer,
            detail,
        )
        if self.transport is not None:
            self.transport.write(pack_pong(False, reason, "", ""))
        self.close_silently()

    # --- ingest --------------------------------------------------------------------------------

    def _submit(self, submission: Submission) -> None:
        self.pending_events += submission.events
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
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        if chunk is not None:
            self.transport.write(pack_ack(chunk))
        if self.paused and self.pending_events <= self.settings.max_pending_events // 2:
            self.paused = False
            if self.frame_started_at is not None:  # the frame was not read on, through no fault of the client
                self.frame_started_at = time.monotonic()
            self.transport.resume_reading()

    def fail(self, reason: str) -> None:
        """Close this connection because of what it sent, with one log line."""
        if self.closed:
            return
        log.warning("collector: closing connection from %s: %s", self.peer, reason)
        self.close_silently()

    def check_timers(self, now: float) -> None:
        """Close this connection if it is past the handshake, stall or idle timeout."""
        settings = self.settings
        if not self.authenticated and self.secured and now - self.connected_at > settings.stall_timeout:
            # Connected and never authenticated: close without a warning (it may just be idle).
            log.info("collector: closing connection from %s: no PING within %g s", self.peer, settings.stall_timeout)
            self.close_silently()
            return
        if self.paused or not self.secured:  # waiting for the database, or in the TLS handshake (timed by asyncio)
            return
        if self.frame_started_at is not None:
            if now - self.frame_started_at > settings.stall_timeout:
                self.fail(
                    f"a frame still incomplete {settings.stall_timeout:g} s after its first byte (--stall-timeout)"
                )
            return
        if self.pending_events == 0 and now - self.last_frame_at > settings.idle_timeout:
            self.server.limits.log(
                logging.INFO,
                "idle",
                "collector: closing connection from %s: no complete message for %g s (--idle-timeout)",
                self.peer,
                settings.idle_timeout,
            )
            self.close_silently()


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, ConnectionAbortedError)):
        return "no TLS handshake within the stall timeout"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return f"{type(exc).__name__}: {exc}"


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
        # One line per refused address and reason, and per kind of limit reached, then one a minute.
        self.refusals = RateLimitedLog(60.0, log)
        self.limits = RateLimitedLog(60.0, log)
        #: Bytes held in incomplete frames, summed over the connections.
        self.buffered_bytes = 0
        self.ssl_context: Optional[ssl.SSLContext] = None
        if self.settings.tls:
            assert self.settings.tls_cert_file and self.settings.tls_key_file
            self.ssl_context = server_ssl_context(
                self.settings.tls_cert_file, self.settings.tls_key_file, self.settings.tls_ca_file
            )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the server runs on (known once :meth:`start` ran)."""
        assert self._loop is not None, "the server is not started"
        return self._loop

    async def start(self, bind: str, port: int) -> int:
        """Listen on ``bind:port`` (0 picks a free port) and return the port."""
        self._loop = asyncio.get_running_loop()
        self._chain_exception_handler()
        self._check_descriptor_limit()
        self._server = await self.loop.create_server(lambda: ForwardConnection(self), bind, port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.settings.udp_heartbeat:
            try:
                self._udp, _ = await self.loop.create_datagram_endpoint(HeartbeatProtocol, local_addr=(bind, self.port))
            except OSError as exc:
                log.warning("collector: no UDP heartbeat on port %d: %s", self.port, exc)
        self._sweeper = self.loop.create_task(self._sweep())
        return self.port

    def _chain_exception_handler(self) -> None:
        """Log accept() running out of file descriptors in one rate-limited line: asyncio reports it
        with a traceback, up to a hundred times per attempt, and pauses accepting for a second."""
        previous = self.loop.get_exception_handler()

        def handle(loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
            if context.get("message") == _ACCEPT_OUT_OF_RESOURCES:
                self.limits.log(
                    logging.WARNING,
                    "accept",
                    "collector: cannot accept connections: %s; %d open; retrying in a second "
                    "(raise the file descriptor limit, `ulimit -n`, or lower --max-connections)",
                    context.get("exception"),
                    len(self.connections),
                )
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        self.loop.set_exception_handler(handle)

    def _check_descriptor_limit(self) -> None:
        """Say at start when the process may run out of file descriptors before --max-connections."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = self.settings.max_connections + _RESERVED_DESCRIPTORS
        if soft != resource.RLIM_INFINITY and soft < wanted:
            log.warning(
                "collector: the file descriptor limit (%d) is below --max-connections (%d) + %d: "
                "accepting pauses when it runs out; raise `ulimit -n` or lower --max-connections",
                soft,
                self.settings.max_connections,
                _RESERVED_DESCRIPTORS,
            )

    def shed_buffered(self) -> None:
        """Close the connections holding the most bytes in incomplete frames (the oldest frame among
        equals) until the total is within --max-buffered-bytes."""
        limit = self.settings.max_buffered_bytes
        while self.buffered_bytes > limit:
            holders = [c for c in self.connections if c.buffered_bytes and not c.closed]
            if not holders:
                return
            victim = max(holders, key=lambda c: (c.buffered_bytes, -(c.frame_started_at or 0.0)))
            self.limits.log(
                logging.WARNING,
                "buffered",
                "collector: %d bytes held in incomplete frames, above --max-buffered-bytes (%d): "
                "closing the connection from %s, which holds %d",
                self.buffered_bytes,
                limit,
                victim.peer,
                victim.buffered_bytes,
            )
            victim.close_silently()

    async def _sweep(self) -> None:
        settings = self.settings
        interval = max(0.05, min(1.0, settings.stall_timeout / 4, settings.idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.check_timers(now)

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
