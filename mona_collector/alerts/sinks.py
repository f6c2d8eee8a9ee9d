"""Delivering the outbox: each queued notification to its webhook or command, off the evaluating thread.

A webhook gets the notification as a JSON POST and must answer 2xx within its timeout; a command gets
it as JSON on standard input and must exit 0 within its timeout. Anything else (refused, timed out,
500) leaves the row in the outbox with its attempt counted and its next attempt backed off (1 s, 2 s,
4 s, ... up to ``max_backoff``), so a sink that is down receives everything once it is back, in order:
a sink's later rows wait while an earlier one fails. The log sink is written at evaluation (state.py).

:class:`Deliverer` is the thread that does this in the collector; ``mona alerts check`` calls
:func:`deliver_due` itself before it exits, with a deadline.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Tuple

from ..databases import Database
from ..sql import Statements, driver_errors
from ..store import StoreError
from .rules import AlertConfig, SinkConfig
from .state import connect

log = logging.getLogger("mona_collector.alerts")

#: The first retry waits this long; each failure doubles it, up to the config's ``max_backoff``.
FIRST_BACKOFF = 1.0
#: Rows read from the outbox per pass.
_BATCH = 100


def post_webhook(sink: SinkConfig, payload: str) -> Optional[str]:
    """POST ``payload`` to the sink's URL; None when it answered 2xx, else why not."""
    assert sink.url is not None
    request = urllib.request.Request(sink.url, data=payload.encode("utf-8"), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", "mona-collector-alerts")
    for name, value in sink.headers:
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=sink.timeout) as answer:
            answer.read(65536)
            return None if 200 <= answer.status < 300 else f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(exc).__name__}: {reason}"


def run_command(sink: SinkConfig, payload: str) -> Optional[str]:
    """Run the sink's command with ``payload`` on standard input; None when it exited 0."""
    try:
        done = subprocess.run(
            list(sink.command),
            input=payload.encode("utf-8"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=sink.timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {sink.timeout:g} s"
    except OSError as exc:
        return f"cannot run {sink.command[0]}: {exc.strerror or exc}"
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"exit status {done.returncode}" + (f": {detail[-1][:200]}" if detail else "")
    return None


def send(sink: SinkConfig, payload: str) -> Optional[str]:
    return post_webhook(sink, payload) if sink.kind == "webhook" else run_command(sink, payload)


def backoff(attempts: int, max_backoff: float) -> float:
    """Seconds to wait after the ``attempts``-th failure."""
    return float(min(max_backoff, FIRST_BACKOFF * 2 ** min(attempts - 1, 30)))


def deliver_due(db: Statements, config: AlertConfig, now: Optional[float] = None) -> Tuple[int, int]:
    """One pass over the outbox rows due now: send each; returns (delivered, failed).

    Rows of a sink the config no longer names wait (they go out once it is configured again)."""
    now = time.time() if now is None else now
    sinks: Dict[str, SinkConfig] = {sink.name: sink for sink in config.sinks if sink.kind != "log"}
    rows: List[Tuple[int, str, str, int]] = db.execute(
        "SELECT id, sink, payload, attempts FROM mona_alert_outbox ORDER BY id LIMIT ?", (_BATCH,)
    ).fetchall()
    blocked = set()  # sinks with an earlier row not delivered: keep their order
    delivered = failed = 0
    for row_id, name, payload, attempts in rows:
        sink = sinks.get(name)
        if sink is None or name in blocked:
            continue
        (due,) = db.execute("SELECT next_attempt FROM mona_alert_outbox WHERE id = ?", (row_id,)).fetchone()
        if due > now:
            blocked.add(name)
            continue
        error = send(sink, payload)
        if error is None:
            db.execute("DELETE FROM mona_alert_outbox WHERE id = ?", (row_id,))
            delivered += 1
            continue
        failed += 1
        blocked.add(name)
        delay = backoff(attempts + 1, config.max_backoff)
        db.execute(
            "UPDATE mona_alert_outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE id = ?",
            (time.time() + delay, error, row_id),
        )
        log.warning("alerts: %s did not take a notification (%s); next try in %g s", name, error, delay)
    return delivered, failed


def pending(db: Statements) -> int:
    (count,) = db.execute("SELECT count(*) FROM mona_alert_outbox").fetchone()
    return int(count)


def next_due(db: Statements, config: AlertConfig) -> Optional[float]:
    """When the next row can go: the earliest next attempt of each configured sink's oldest row."""
    names = {sink.name for sink in config.sinks if sink.kind != "log"}
    rows = db.execute(
        "SELECT sink, next_attempt FROM mona_alert_outbox"
        " WHERE id IN (SELECT min(id) FROM mona_alert_outbox GROUP BY sink)"
    ).fetchall()
    times = [float(due) for sink, due in rows if sink in names]
    return min(times) if times else None


def drain(db_path: Database, config: AlertConfig, deadline: float) -> int:
    """Deliver until the outbox is empty or ``deadline`` (monotonic) passes; returns the rows left."""
    db = connect(db_path)
    try:
        while True:
            delivered, _ = deliver_due(db, config)
            left, due = pending(db), next_due(db, config)
            if not left or due is None or time.monotonic() >= deadline:
                return left
            if not delivered:
                wait = min(due - time.time(), deadline - time.monotonic())
                time.sleep(max(0.05, min(wait, 0.5)))
    finally:
        db.close()


class Deliverer:
    """A thread that keeps delivering the outbox of the database at ``db_path``.

    :meth:`wake` after queueing makes it look at once; :meth:`set_config` swaps the sinks."""

    def __init__(self, db_path: Database, config: AlertConfig, poll: float = 1.0) -> None:
        self._db_path, self._config, self._poll = db_path, config, poll
        self._wake = threading.Event()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    def set_config(self, config: AlertConfig) -> None:
        self._config = config

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mona-alert-sinks", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        db: Optional[Statements] = None
        while not self._stopping:
            try:
                db = db or connect(self._db_path)
                delivered, _ = deliver_due(db, self._config)
                due = next_due(db, self._config)
                wait = self._poll if due is None else max(0.05, min(self._poll, due - time.time()))
            except driver_errors(OSError, StoreError) as exc:
                log.error("alerts: cannot read the outbox: %s", exc)
                delivered, wait = 0, self._poll
            if not delivered:
                self._wake.wait(wait)
                self._wake.clear()
        if db is not None:
            db.close()
