"""The client sending into a real embedded collector, and the `mona` command reading what it stored:
for tests that show a feature end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from mona_client import client
from mona_collector import Collector

from .collector import run_mona, wait_merged

ROOT = Path(__file__).resolve().parents[2]


def mona_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the `mona` command of this tree; fails the test on a non-zero exit."""
    return run_mona(*args)


class Embedded:
    """A running collector the client sends to; :meth:`arc` is `mona arcs show` once all is merged."""

    def __init__(self, collector: Collector, db_path: Path) -> None:
        self.collector = collector
        self.db_path = db_path

    def arc(self, context_id: str) -> Dict[str, Any]:
        assert client.flush(20), client.stats()
        wait_merged(self.db_path)
        document: Dict[str, Any] = json.loads(mona_cli("arcs", "show", context_id, "--db", str(self.db_path)).stdout)
        return document


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Embedded]:
    """The client started against a real collector (its own config file); both closed afterwards."""
    db_path = tmp_path / "collector.db"
    config = tmp_path / "mona_client_config.json"
    config.write_text('{"disable_all": false}')
    with Collector(port=0, db_path=db_path, stall_timeout=1.0, synchronous="NORMAL") as running:
        client.init_client(port=running.port, user_id="e2e", config_file=str(config), print_logs=False)
        client.reset()
        try:
            yield Embedded(running, db_path)
        finally:
            client.reset()
            client.close(timeout=5)
