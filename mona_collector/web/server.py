"""The dashboard's HTTP server: the Flask application served by waitress on a thread of its own.

:class:`DashboardServer` is what ``mona ui`` runs in the foreground and what the collector starts
beside its Forward server (``mona collect --http-port``).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Callable, Dict, Optional, Union

from waitress import wasyncore
from waitress.server import BaseWSGIServer, MultiSocketServer, create_server

from ..databases import Database, resolve_db
from ..report.monitoring_config import MonitoringConfig
from .app import create_app
from .reports import Reports
from .settings import DashboardSettings

#: How long one poll of the serving loop may wait: the longest a stop waits for it.
_POLL_SECONDS = 0.2

log = logging.getLogger("mona_collector")

#: Requests answered at once (a class page computing a report does not hold up the others).
THREADS = 4


class DashboardServer:
    """The dashboard of the database at ``db_path``, listening as ``settings`` say once started.

    ``open_connections`` (given by the collector) adds the Forward connections to ``/metrics``."""

    def __init__(
        self,
        db_path: Database,
        settings: DashboardSettings,
        config: Optional[MonitoringConfig] = None,
        open_connections: Optional[Callable[[], int]] = None,
    ) -> None:
        self.settings = settings
        self.reports = Reports(resolve_db(db_path), config)
        self._app = create_app(self.reports, settings.token, open_connections)
        self._server: Optional[Union[BaseWSGIServer, MultiSocketServer]] = None
        self._thread: Optional[threading.Thread] = None
        self._sockets: Dict[int, Any] = {}
        self._stopping = threading.Event()
        self.port = 0

    def start(self) -> int:
        """Listen and serve on a background thread; returns the port. Raises OSError if it cannot listen."""
        # waitress's dispatchers by file descriptor (its stubs say sockets; they are dispatchers)
        sockets: Dict[int, Any] = {}
        server = create_server(
            self._app,
            host=self.settings.bind,
            port=self.settings.port,
            threads=THREADS,
            ident="mona",
            map=sockets,
            clear_untrusted_proxy_headers=True,
        )
        listeners = [item for item in sockets.values() if isinstance(item, BaseWSGIServer)]
        bound = listeners[0].socket if listeners else None
        self.port = int(bound.getsockname()[1]) if bound is not None else self.settings.port
        self._sockets = sockets
        self._server = server
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(server, sockets, self._stopping), name="mona-dashboard", daemon=True
        )
        self._thread.start()
        log.info("mona dashboard on http://%s:%d/", self.settings.bind, self.port)
        return self.port

    @staticmethod
    def _serve(
        server: Union[BaseWSGIServer, MultiSocketServer], sockets: Dict[int, Any], stopping: threading.Event
    ) -> None:
        """waitress's loop, a short poll at a time, until told to stop; then this thread closes every
        socket itself (closing them from another thread while it polls them fails with EBADF)."""
        while not stopping.is_set():
            wasyncore.loop(timeout=_POLL_SECONDS, map=sockets, count=1)
        wasyncore.close_all(sockets)

    @property
    def url(self) -> str:
        host = self.settings.bind if ":" not in self.settings.bind else f"[{self.settings.bind}]"
        return f"http://{host}:{self.port}/"

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection, and wait for the serving thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        # The worker threads first (they finish the requests they hold and touch the sockets no
        # more), then the serving loop, which closes every socket on its way out.
        server.task_dispatcher.shutdown(timeout=math.ceil(timeout))
        self._stopping.set()
        thread.join(timeout)

    def __enter__(self) -> DashboardServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
