"""Every option of the sender in one frozen object, and how the client's settings make it.

The sender's three parts (:mod:`mona_client.batching`, :mod:`mona_client.connection` and the worker in
:mod:`mona_client.transport`) each read what they need from one :class:`SenderOptions`, so that an
option is named, defaulted and normalised in one place.
"""

from __future__ import annotations

import dataclasses
import ssl
from typing import Optional

from . import forward
from .config import Settings
from .record import TAG

__all__ = ["SenderOptions", "client_ssl_context"]


@dataclasses.dataclass(frozen=True)
class SenderOptions:
    """Where and how the sender delivers. Values out of range are brought back in ``__post_init__``."""

    host: str = "127.0.0.1"
    port: int = forward.DEFAULT_PORT
    tag: str = TAG
    #: The queue's bounds: past half of either, the excess goes to the spool; when full, records drop.
    max_queue: int = 200_000
    max_queue_bytes: int = 64 * 1024 * 1024
    #: A chunk holds up to ``chunk_records`` entries (more when the queue is long) and never more than
    #: ``chunk_bytes``, except a single entry larger than that, which travels alone.
    chunk_records: int = 1000
    chunk_bytes: int = 1024 * 1024
    #: Chunks on the wire before the sender waits for their acks (1 without acks).
    max_inflight: int = 4
    #: How often the sender thread looks at a queue that did not wake it.
    flush_interval: float = 0.05
    require_ack: bool = True
    ack_timeout: float = 10.0
    send_timeout: float = 5.0
    connect_timeout: float = 3.0
    max_backoff: float = 5.0
    #: Deliver on the caller's thread right after each put (scripts, debugging).
    blocking: bool = False
    ssl_context: Optional[ssl.SSLContext] = None
    #: The name the TLS certificate must carry; ``host`` when None.
    server_hostname: Optional[str] = None
    #: Turns on the Forward protocol's shared-key handshake. Secrets are kept out of repr (and logs).
    shared_key: Optional[str] = dataclasses.field(default=None, repr=False)
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    #: The name this client gives in the handshake; the machine's hostname when None.
    client_hostname: Optional[str] = None

    def __post_init__(self) -> None:
        # Frozen: the normalised values are set the way dataclasses itself sets fields.
        set_field = object.__setattr__
        set_field(self, "max_queue_bytes", max(1, self.max_queue_bytes))
        set_field(self, "chunk_bytes", max(1, self.chunk_bytes))
        if not self.require_ack:
            set_field(self, "max_inflight", 1)  # nothing tells when a chunk arrived: one at a time

    @classmethod
    def from_settings(cls, settings: Settings) -> SenderOptions:
        """The options the client's settings (environment, ``init_client``) ask for."""
        ssl_context = None
        if settings.tls:
            ssl_context = client_ssl_context(
                settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file, settings.tls_verify
            )
        return cls(
            host=settings.host,
            port=settings.port,
            blocking=settings.blocking,
            chunk_bytes=settings.max_chunk_bytes,
            max_queue_bytes=settings.max_queue_bytes,
            ssl_context=ssl_context,
            shared_key=settings.shared_key,
        )


def client_ssl_context(
    ca_file: Optional[str] = None,
    cert_file: Optional[str] = None,
    key_file: Optional[str] = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """A TLS client context: the system store (or ``ca_file``), TLS 1.2 or 1.3, optional client cert."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
