"""Fixtures of the alert tests: a database written by a real collector where one segment's accuracy
drops on one day, a real local HTTP server as the webhook, and ``mona alerts`` as a process."""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import pytest

from bench.report_data import DAY, build_database, record
from tests.support.collector import run_mona
from tests.support.postgres import build_any_database

__all__ = ["DAY"]

NOW = time.time()
#: The first of the ten generated days (UTC midnight), so that day d is [START + d DAY, START + (d+1) DAY).
START = (NOW // DAY) * DAY - 10 * DAY
BAD_DAY = 6
ARCS_PER_DAY = 400
COUNTRIES = ["DE", "FR", "US", "BR"]


def accuracy_drop_scenario(seed: int = 3) -> Iterator[Dict[str, Any]]:
    """ARCs of class FRAUD over ten days: a ``country`` at the root, the model's ``prediction`` in a
    MODEL sub-context, and the ``label`` exported an hour later into the same ARC. Accuracy is 90 %
    everywhere except for ``country=BR`` on day BAD_DAY, where it is 40 %."""
    rng = np.random.default_rng(seed)
    for day in range(10):
        for i in range(ARCS_PER_DAY):
            when = START + day * DAY + (i + 0.5) * DAY / ARCS_PER_DAY
            country = COUNTRIES[i % 4]
            truth = "fraud" if rng.random() < 0.3 else "ok"
            right = 0.4 if (country == "BR" and day == BAD_DAY) else 0.9
            guess = truth if rng.random() < right else ("ok" if truth == "fraud" else "fraud")
            context = f"d{day}-{i}"
            yield record(context, {"MONA_ARC_CLASS": "FRAUD", "country": country}, when)
            yield record(f"{context}.model", {"MONA_ARC_CLASS": "MODEL", "prediction": guess}, when)
            yield record(context, {"label": truth}, when + 3600)


@pytest.fixture(scope="package")
def drop_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("drop") / "arcs.db"
    build_database(path, accuracy_drop_scenario())
    return path


@pytest.fixture
def drop_db(drop_db_template: Path, tmp_path: Path) -> Path:
    """A copy of the scenario's database of the test's own (alert state is written into it)."""
    target = tmp_path / "arcs.db"
    for source in drop_db_template.parent.iterdir():
        if source.name.startswith("arcs.db"):
            shutil.copy(source, tmp_path / source.name)
    return target


@pytest.fixture(params=["sqlite", "postgresql"])
def drop_any_db(request: pytest.FixtureRequest, drop_db: Path) -> Union[Path, str]:
    """The scenario on each store in turn (PostgreSQL: a database of the test's own, written by a real collector)."""
    if request.param == "sqlite":
        return drop_db
    url: str = request.getfixturevalue("postgres_url")
    build_any_database(url, accuracy_drop_scenario())
    return url


def day_end(day: int) -> float:
    return START + (day + 1) * DAY


class Webhook:
    """A real HTTP server in a thread: records each POSTed JSON body; answers the statuses in
    ``answers`` in turn (then 200)."""

    def __init__(self, port: int = 0, answers: Optional[List[int]] = None) -> None:
        self.received: List[Dict[str, Any]] = []
        self.attempts = 0
        self.answers = list(answers or [])
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.attempts += 1
                status = hook.answers.pop(0) if hook.answers else 200
                if status == 200:
                    hook.received.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    server = Webhook()
    yield server
    server.close()


def mona(*args: str, timeout: float = 120) -> Tuple[int, str, str]:
    done = run_mona(*args, check=False, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def write_config(path: Path, alerts: Dict[str, Any], **rest: Any) -> Path:
    path.write_text(json.dumps({"alerts": alerts, **rest}))
    return path
