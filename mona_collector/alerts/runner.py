"""Running the rules: once (``mona alerts check``) or every few minutes in the collector (:class:`AlertLoop`).

In the collector, each evaluation runs in a child process started by a thread of its own, and delivery
on another thread (sinks.py): evaluating decodes every ARC document of a window, pure Python work that
would hold the interpreter lock the Forward server and the raw-log writer need, so it runs elsewhere;
the child writes the states and the outbox, the collector's delivery thread sends them. The config
file is read again when it changes on disk; a config that has become invalid keeps the previous rules
running, with one log line per change.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from ..databases import Database, resolve_db
from ..report.monitoring_config import ConfigError
from .evaluate import evaluate
from .rules import AlertConfig, load_alert_config, parse_alert_config
from .sinks import Deliverer
from .state import AlertRow, apply, connect, read_alerts

log = logging.getLogger("mona_collector.alerts")


def check(
    db_path: Database, config: AlertConfig, now: Optional[float] = None
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


def _read(path: Optional[str]) -> Optional[str]:
    """The config file's text (None: no file, the defaults); ConfigError when it cannot be read."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def child_main() -> None:
    """One evaluation in a process of its own: ``{"db", "config"}`` as JSON on standard input (the config's
    text, null for the defaults); prints ``{"notifications": n}``. Its log lines go to standard error,
    which is the collector's."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        os.nice(10)  # on a busy machine, the collector's own threads and its merger go first
    except OSError:
        pass
    request = json.loads(sys.stdin.read())
    text = request["config"]
    config = load_alert_config(None) if text is None else parse_alert_config(text)
    events, _ = check(resolve_db(request["db"]), config)
    sys.stdout.write(json.dumps({"notifications": len(events)}))


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

    def __init__(self, db_path: Database, every: float, config_path: Optional[str] = None) -> None:
        if not every > 0:
            raise ValueError(f"the evaluation interval must be above 0 seconds, not {every}")
        self._db_path, self._every, self._config_path = resolve_db(db_path), every, config_path
        self._signature = _signature(config_path) if config_path else None
        self._text = _read(config_path)
        self.config = load_alert_config(config_path)
        self._stop = threading.Event()
        self._child: Optional[subprocess.Popen[bytes]] = None
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
        child = self._child
        if child is not None:  # its transaction is atomic: stopping it loses nothing stored
            child.terminate()
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
            text = _read(self._config_path)
            config = load_alert_config(self._config_path)
        except ConfigError as exc:
            log.error("alerts: %s: %s; the previous rules keep running", self._config_path, exc)
            return
        self.config, self._text = config, text
        self._deliverer.set_config(config)
        log.info("alerts: %s reloaded: %d rules", self._config_path, len(config.rules))

    def evaluate_once(self) -> None:
        self._reload()
        try:
            events = self._evaluate_in_child()
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

    def _evaluate_in_child(self) -> int:
        """Run one evaluation in a child process; returns how many notifications it queued."""
        request = json.dumps({"db": str(self._db_path), "config": self._text}).encode("utf-8")
        child = self._child = subprocess.Popen(
            [sys.executable, "-c", "from mona_collector.alerts.runner import child_main; child_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            out, _ = child.communicate(request)
        finally:
            self._child = None
        if self._stop.is_set():
            return 0
        if child.returncode != 0:
            raise RuntimeError(f"the evaluation process exited with status {child.returncode}")
        return int(json.loads(out)["notifications"])

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.evaluate_once()
