"""The :class:`Collector`: store, writer thread and Forward server put together, in a background thread.

This is what ``mona collect`` runs, and what tests and demos embed::

    with Collector(port=0, db_path="arcs.db") as collector:
        send_to(("127.0.0.1", collector.port))
        collector.wait_for_records(100)
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Dict, Optional, Union

from ..forward import DEFAULT_MAX_FRAME_BYTES, DEFAULT_PORT
from .ingest import Ingestor
from .server import ForwardServer, ServerSettings
from .store import ArcStore, SQLiteStore, default_db_path

log = logging.getLogger("mona_client.collector")


class Collector:
    """An embedded Forward collector that merges mona records into ARCs.

    ``port=0`` picks a free port (read it from :attr:`port` after :meth:`start`). ``db_path`` defaults
    to :func:`~mona_client.collector.store.default_db_path`; ``store`` replaces the SQLite store by any
    :class:`~mona_client.collector.store.ArcStore` (the collector then does not close it).

    ``shared_key`` turns on the Forward protocol's shared-key handshake (``users``, a map of user name
    to password, adds user authentication; ``hostname`` is the name the collector gives in PONG).
    ``tls_cert_file`` and ``tls_key_file`` turn on TLS; ``tls_ca_file`` then requires client
    certificates signed by that CA. See docs/collector.md, "Security".
    """

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        db_path: Optional[Union[str, os.PathLike]] = None,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        stall_timeout: float = 30.0,
        udp_heartbeat: bool = True,
        synchronous: str = "FULL",
        store: Optional[ArcStore] = None,
        shared_key: Optional[str] = None,
        users: Optional[Dict[str, str]] = None,
        hostname: Optional[str] = None,
        tls_cert_file: Optional[Union[str, os.PathLike]] = None,
        tls_key_file: Optional[Union[str, os.PathLike]] = None,
        tls_ca_file: Optional[Union[str, os.PathLike]] = None,
    ) -> None:
        self.bind = bind
        self.requested_port = port
        self.db_path = Path(db_path) if db_path is not None else default_db_path()
        self.settings = ServerSettings(
            max_frame_bytes=max_frame_bytes,
            stall_timeout=stall_timeout,
            udp_heartbeat=udp_heartbeat,
            shared_key=shared_key,
            users=users,
            hostname=hostname,
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            tls_ca_file=tls_ca_file,
        )
        self._synchronous = synchronous
        self._given_store = store
        self._store: Optional[ArcStore] = None
        self._ingestor: Optional[Ingestor] = None
        self._server: Optional[ForwardServer] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._start_error: Optional[BaseException] = None
        self.port = 0

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> int:
        """Open the store, start listening and return the bound port; raises if it cannot listen."""
        if self._thread is not None:
            return self.port
        self._store = self._given_store or SQLiteStore(self.db_path, synchronous=self._synchronous)
        self._ingestor = Ingestor(self._store)
        self._ingestor.start()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="mona-collector", daemon=True)
        self._thread.start()
        ready.wait()
        if self._start_error is not None:
            error = self._start_error
            self._thread.join()
            self._thread = None
            self._close_store()
            raise error
        where = self.db_path if self._given_store is None else type(self._given_store).__name__
        log.info(
            "mona collector listening on %s:%d (%s, UDP heartbeat), storing in %s",
            self.bind,
            self.port,
            self.settings.describe(),
            where,
        )
        return self.port

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            assert self._ingestor is not None
            self._server = ForwardServer(self._ingestor, self.settings)
            self.port = loop.run_until_complete(self._server.start(self.bind, self.requested_port))
        except BaseException as exc:  # reported by start()
            self._start_error = exc
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, store and ack what was received, close connections and the store."""
        if self._thread is None:
            return
        loop, server = self._loop, self._server
        assert loop is not None and server is not None
        try:
            asyncio.run_coroutine_threadsafe(server.close(timeout), loop).result(timeout + 5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout)
            self._thread = None
            self._close_store()
        log.info("mona collector stopped")

    def _close_store(self) -> None:
        if self._ingestor is not None:
            self._ingestor.stop()
            self._ingestor = None
        if self._store is not None and self._given_store is None:
            self._store.close()
        self._store = None

    def __enter__(self) -> "Collector":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- observing -----------------------------------------------------------------------------

    @property
    def processed_records(self) -> int:
        """Records committed since start (stored, or dropped as duplicates of stored ones)."""
        return self._ingestor.processed_events if self._ingestor is not None else 0

    def wait_for_records(self, count: int, timeout: Optional[float] = 10.0) -> bool:
        """Block until :attr:`processed_records` reaches ``count``; False on timeout."""
        if self._ingestor is None:
            raise RuntimeError("the collector is not running")
        return self._ingestor.wait_for_events(count, timeout)
