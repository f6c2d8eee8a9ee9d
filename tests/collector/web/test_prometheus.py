"""A real Prometheus server (Debian's ``prometheus``) scrapes the collector's /metrics, served from the
collector's own process, and its query API returns the collector's counters."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

import msgpack
import pytest

from mona_client.record import TAG
from mona_collector import Collector
from mona_collector.web import DashboardSettings
from tests.support.collector import BASE, RawClient, packed_message, record

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="needs a Prometheus server binary: apt-get install prometheus"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Start Prometheus on a free loopback port, scraping the targets given to the returned function."""
    processes = []

    def start(target: str) -> str:
        port = _free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            f"scrape_configs:\n  - job_name: mona\n    static_configs:\n      - targets: ['{target}']\n"
        )
        log = (tmp_path / "prometheus.log").open("w")
        processes.append(
            subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.terminate()
        process.wait(30)


def _query(server: str, promql: str) -> Optional[float]:
    url = f"{server}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            result = json.loads(response.read())["data"]["result"]
    except OSError:
        return None  # not listening yet
    return float(result[0]["value"][1]) if result else None


def _wait_for(server: str, promql: str, expected: float, timeout: float = 60.0) -> Optional[float]:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = _query(server, promql)
        if value == expected:
            return value
        time.sleep(0.5)
    return value


def test_prometheus_scrapes_the_collectors_counters(tmp_path: Path, prometheus: Any) -> None:
    db_path = tmp_path / "arcs.db"
    with Collector(port=0, db_path=db_path, dashboard=DashboardSettings(port=0)) as collector:
        client = RawClient(collector.port)
        try:
            records = [
                record(f"ctx-{i}", {"MONA_ARC_CLASS": "SCORER", "score": i / 10}, record_id=f"r{i}") for i in range(5)
            ]
            records.append(records[0])  # sent twice: dropped as a duplicate
            entries = b"".join(msgpack.packb([BASE, item], use_bin_type=True) for item in records)
            client.send(packed_message(TAG, msgpack.packb(entries, use_bin_type=True), {"chunk": "c1"}))
            assert client.answer() == {"ack": "c1"}
            assert collector.wait_merged(20)
            server = prometheus(f"127.0.0.1:{collector.dashboard_port}")
            assert _wait_for(server, "mona_records_received_total", 6) == 6
            assert _wait_for(server, "mona_records_merged_total", 5) == 5
            assert _wait_for(server, "mona_records_duplicates_total", 1) == 1
            assert _wait_for(server, 'mona_arcs{arc_class="SCORER"}', 5) == 5
            assert _wait_for(server, "mona_open_connections", 1) == 1  # this test's client
            assert _wait_for(server, "mona_merge_lag_records", 0) == 0
            assert (_query(server, "mona_database_bytes") or 0) > 0
        finally:
            client.close()
