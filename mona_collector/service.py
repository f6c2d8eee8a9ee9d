"""The :class:`Collector`: the Forward server and the raw-log writer in a background thread of this
process, and the merger in a child process (see :mod:`.merger`).

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
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

from mona_client.forward import DEFAULT_MAX_FRAME_BYTES, DEFAULT_PORT

from .databases import Database, describe, is_postgres_url, migrate, open_raw_log, resolve_db
from .ingest import Ingestor
from .merging.documents import DEFAULT_CACHE_BYTES, DEFAULT_MAX_DEPTH, MAX_DEPTH_LIMIT
from .merging.process import MergerProcess, MergerThread
from .server import ForwardServer, ServerSettings
from .store import ArcStore, RawLog, SQLiteStore
from .web.settings import DashboardSettings

if TYPE_CHECKING:
    from .alerts.runner import AlertLoop

log = logging.getLogger("mona_collector")


class Collector:
    """An embedded Forward collector that merges mona records into ARCs.

    ``port=0`` picks a free port (read it from :attr:`port` after :meth:`start`). ``db_path`` defaults
    to :func:`~mona_collector.store.default_db_path`. The network side appends what it receives
    to the raw log there and acks it; a merger process merges it into ARCs. ``store`` replaces the
    SQLite ARC store by any :class:`~mona_collector.store.ArcStore` (merged on a thread of this
    process, from the store's ``raw_log()`` if it has one, else the raw log in ``db_path``; the
    collector does not close it).

    ``shared_key`` turns on the Forward protocol's shared-key handshake (``users``, a map of user name
    to password, adds user authentication; ``hostname`` is the name the collector gives in PONG).
    ``tls_cert_file`` and ``tls_key_file`` turn on TLS; ``tls_ca_file`` then requires client
    certificates signed by that CA. See docs/collector.md, "Security".

    ``max_depth`` (0 to 256) refuses records of sub-contexts nested deeper below their root;
    ``merge_cache_bytes`` bounds the merger's document cache (and the raw rows of one merge
    transaction) in bytes; a merger process that dies is restarted after a delay that doubles up to
    ``merger_max_backoff`` seconds. See docs/collector.md, "Limits".
    ``max_connections``, ``idle_timeout`` and ``max_buffered_bytes`` limit what clients can hold (see
    :class:`~mona_collector.server.ServerSettings` and docs/collector.md, "Limits").

    ``evaluate_every`` (seconds) evaluates the alert rules of the monitoring config ``alerts_config``
    (the default rules without one) on a thread of this process, see docs/alerts.md; an invalid
    config raises ValueError here.
    ``dashboard`` serves the web dashboard and ``/metrics`` of ``db_path`` from this process, on a
    thread started and stopped with the collector (needs the ``ui`` extra; see docs/dashboard.md).
    """

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        db_path: Optional[Union[str, os.PathLike[str]]] = None,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        stall_timeout: float = 30.0,
        max_connections: int = 1024,
        idle_timeout: float = 300.0,
        max_buffered_bytes: int = 256 * 1024 * 1024,
        udp_heartbeat: bool = True,
        synchronous: str = "FULL",
        store: Optional[ArcStore] = None,
        shared_key: Optional[str] = None,
        users: Optional[Dict[str, str]] = None,
        hostname: Optional[str] = None,
        tls_cert_file: Optional[Union[str, os.PathLike[str]]] = None,
        tls_key_file: Optional[Union[str, os.PathLike[str]]] = None,
        tls_ca_file: Optional[Union[str, os.PathLike[str]]] = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
        merge_cache_bytes: int = DEFAULT_CACHE_BYTES,
        merger_max_backoff: float = 30.0,
        evaluate_every: Optional[float] = None,
        alerts_config: Optional[str] = None,
        dashboard: Optional[DashboardSettings] = None,
    ) -> None:
        if not 0 <= max_depth <= MAX_DEPTH_LIMIT:
            raise ValueError(f"the maximum context depth must be between 0 and {MAX_DEPTH_LIMIT}, not {max_depth}")
        if merge_cache_bytes < 1024 * 1024:
            raise ValueError(f"the merge cache needs at least 1 MiB (1048576 bytes), not {merge_cache_bytes}")
        if not merger_max_backoff > 0:
            raise ValueError(f"the merger's maximum restart delay must be above 0 seconds, not {merger_max_backoff}")
        self._merger_options: Dict[str, Any] = dict(
            max_depth=max_depth, cache_bytes=merge_cache_bytes, max_backoff=merger_max_backoff
        )
        self.bind = bind
        self.requested_port = port
        #: An SQLite file, or a PostgreSQL URL that several collectors may share (see docs/deployment.md).
        self.db_path: Database = resolve_db(db_path)
        self.settings = ServerSettings(
            max_frame_bytes=max_frame_bytes,
            stall_timeout=stall_timeout,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            max_buffered_bytes=max_buffered_bytes,
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
        self._raw_log: Optional[RawLog] = None
        self._merger: Optional[Union[MergerProcess, MergerThread]] = None
        self._ingestor: Optional[Ingestor] = None
        self._server: Optional[ForwardServer] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._start_error: Optional[BaseException] = None
        self._dashboard_settings = dashboard
        self._dashboard: Any = None
        self.port = 0
        self.alerts: Optional[AlertLoop] = None
        if evaluate_every is not None:
            if store is not None:
                raise ValueError("alert evaluation needs the collector's own database, not a given store")
            from .alerts.runner import AlertLoop  # imported here: it loads numpy, which only alerting needs

            self.alerts = AlertLoop(self.db_path, evaluate_every, alerts_config)
        self.dashboard_port = 0

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> int:
        """Open the store, start listening and return the bound port; raises if it cannot listen."""
        if self._thread is not None:
            return self.port
        if self._given_store is None:
            if is_postgres_url(self.db_path):
                migrate(self.db_path)  # creates or upgrades the schema; collectors starting together take turns
            else:
                SQLiteStore(self.db_path, synchronous=self._synchronous).close()  # creates or upgrades the file
            self._raw_log = open_raw_log(self.db_path, synchronous=self._synchronous)
            self._merger = MergerProcess(self.db_path, self._synchronous, **self._merger_options)
        else:
            self._store = self._given_store
            raw_log = getattr(self._given_store, "raw_log", None)
            self._raw_log = raw_log() if callable(raw_log) else open_raw_log(self.db_path, self._synchronous)
            self._merger = MergerThread(self._given_store, self._raw_log, **self._merger_options)
        try:
            self._merger.start()
        except BaseException:
            self._merger = None
            self._close_store()
            raise
        self._ingestor = Ingestor(self._raw_log, on_commit=self._merger.notify)
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
        if self.alerts is not None:
            self.alerts.start()
        if self._dashboard_settings is not None:
            self._start_dashboard(self._dashboard_settings)
        where = describe(self.db_path) if self._given_store is None else type(self._given_store).__name__
        log.info(
            "mona collector listening on %s:%d (%s, UDP heartbeat), storing in %s",
            self.bind,
            self.port,
            self.settings.describe(),
            where,
        )
        return self.port

    def _start_dashboard(self, settings: DashboardSettings) -> None:
        from .web import load_server  # the ui extra loads only when the dashboard is asked for

        try:
            self._dashboard = load_server()(self.db_path, settings, open_connections=lambda: self.open_connections)
            self.dashboard_port = self._dashboard.start()
        except BaseException:
            self._dashboard = None
            self.stop()
            raise

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
        if self._dashboard is not None:
            self._dashboard.stop()
            self._dashboard = None
        if self._thread is None:
            return
        loop, server = self._loop, self._server
        assert loop is not None and server is not None
        if self.alerts is not None:
            self.alerts.stop()
        try:
            asyncio.run_coroutine_threadsafe(server.close(timeout), loop).result(timeout + 5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout)
            self._thread = None
            self._close_store(max(timeout, 60.0))
        log.info("mona collector stopped")

    def _close_store(self, timeout: float = 60.0) -> None:
        last_id = 0
        if self._ingestor is not None:
            self._ingestor.stop()
            last_id = self._ingestor.last_id
            self._ingestor = None
        if self._merger is not None:
            if self._raw_log is not None:
                last_id = max(last_id, self._raw_log.last_id())
            self._merger.stop(last_id, timeout)  # merges everything received first
        if self._raw_log is not None:
            self._raw_log.close()
            self._raw_log = None
        self._store = None

    def __enter__(self) -> Collector:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- observing -----------------------------------------------------------------------------

    @property
    def processed_records(self) -> int:
        """Records merged since start and queryable (merged into ARCs, dropped as duplicates of
        merged ones, rejected as malformed, or of other tags and counted)."""
        return self._merger.progress.events if self._merger is not None else 0

    @property
    def received_records(self) -> int:
        """Records appended to the raw log (and acked) since start."""
        return self._ingestor.stored_events if self._ingestor is not None else 0

    @property
    def open_connections(self) -> int:
        """Forward connections open now."""
        return len(self._server.connections) if self._server is not None else 0

    @property
    def merger_restarts(self) -> int:
        """How many times the merger died and was started again since start."""
        return self._merger.restarts if self._merger is not None else 0

    def wait_for_records(self, count: int, timeout: Optional[float] = 10.0) -> bool:
        """Block until :attr:`processed_records` reaches ``count``; False on timeout."""
        if self._merger is None:
            raise RuntimeError("the collector is not running")
        progress = self._merger.progress
        return progress.wait(lambda: progress.events >= count, timeout)

    def wait_merged(self, timeout: Optional[float] = 10.0) -> bool:
        """Block until everything appended to the raw log so far is merged and queryable."""
        if self._merger is None or self._ingestor is None:
            raise RuntimeError("the collector is not running")
        target = self._ingestor.last_id
        progress = self._merger.progress
        return progress.wait(lambda: progress.watermark >= target, timeout)
