"""Running the rules: once (``mona alerts check``) or every few minutes in the collector (:class:`AlertLoop`).

In the collector, evaluation runs on a thread of its own and delivery on another (sinks.py), so the
Forward server and the raw-log writer never wait for either. The config file is read again when it
changes on disk; a config that has become invalid keeps the previous rules running, with one log line
per change.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..report.monitoring_config import ConfigError
from .evaluate import evaluate
from .rules import AlertConfig, load_alert_config
from .sinks import Deliverer
from .state import AlertRow, apply, connect, read_alerts

log = logging.getLogger("mona_collector.alerts")


def check(
    db_path: Path, config: AlertConfig, now: Optional[float] = None
) -> Tuple[List[Dict[str, Any]], List[AlertRow]]:
    """Evaluate every rule as of ``now``, store the states; returns the notifications and every alert."""
    now = time.time() if now is None else now
    evaluation = evaluate(db_path, config, now)
    db = connect(db_path)
    try:
        events = apply(db, config, evaluation, now)
        return events, read_alerts(db)
    finally:
        db.close()


def _signature(path: str) -> Optional[Tuple[float, int, int]]:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime, info.st_size, info.st_ino)


class AlertLoop:
    """Evaluates the rules every ``every`` seconds in a thread of the collector's process.

    The first config must be valid (:class:`ConfigError` from the constructor otherwise); later edits
    of the file that do not parse are logged once and the previous rules stay in force."""

    def __init__(self, db_path: Path, every: float, config_path: Optional[str] = None) -> None:
        if not every > 0:
            raise ValueError(f"the evaluation interval must be above 0 seconds, not {every}")
        self._db_path, self._every, self._config_path = Path(db_path), every, config_path
        self.config = load_alert_config(config_path)
        self._signature = _signature(config_path) if config_path else None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._deliverer = Deliverer(self._db_path, self.config)
        self.evaluations = 0
        self._last_error: Optional[str] = None

    def start(self) -> None:
        self._deliverer.start()
        self._thread = threading.Thread(target=self._run, name="mona-alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._deliverer.stop()

    def _reload(self) -> None:
        """Read the config file again when it changed; keep the rules in force when it is invalid."""
        if self._config_path is None:
            return
        signature = _signature(self._config_path)
        if signature == self._signature:
            return
        self._signature = signature
        try:
            config = load_alert_config(self._config_path)
        except ConfigError as exc:
            log.error("alerts: %s: %s; the previous rules keep running", self._config_path, exc)
            return
        self.config = config
        self._deliverer.set_config(config)
        log.info("alerts: %s reloaded: %d rules", self._config_path, len(config.rules))

    def evaluate_once(self) -> None:
        self._reload()
        try:
            events, _ = check(self._db_path, self.config)
        except Exception as exc:  # the loop must outlive any one evaluation: log it, try at the next interval
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:  # one line per distinct failure, not one per interval
                log.error("alerts: evaluation failed: %s", message)
            self._last_error = message
            return
        self._last_error = None
        self.evaluations += 1
        if events:
            self._deliverer.wake()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.evaluate_once()
