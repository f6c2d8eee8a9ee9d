"""Fixtures of the dashboard's tests: a database written by a real collector, a dashboard serving it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest

from bench.report_data import build_database, fraud_scenario, record
from mona_collector.web import DashboardSettings, load_server
from mona_collector.web.server import DashboardServer
from tests.support.postgres import PostgresServer, build_any_database


def _demo_records(now: float) -> Iterator[Dict[str, Any]]:
    """The fraud scenario, plus one ARC like the demo's: globals and a sub-ARC tree two levels deep."""
    yield from fraud_scenario(now, window_arcs=600, baseline_arcs=1200)
    root = {"MONA_ARC_CLASS": "CHECKOUT", "country": "DE", "MONA_GLOBALS": {"service": "payments"}}
    yield record("demo-1", root, now - 60, user="demo")
    yield record("demo-1.model", {"MONA_ARC_CLASS": "MODEL", "fraud_score": 0.42}, now - 60, user="demo")
    yield record("demo-1.model.calibration", {"MONA_ARC_CLASS": "CALIBRATION", "bias": 0.01}, now - 60, user="demo")


@pytest.fixture(scope="package")
def generated_at() -> float:
    """The "now" of the generated data: its window is the 24 h before it."""
    return time.time()


@pytest.fixture(scope="package")
def demo_db(tmp_path_factory: pytest.TempPathFactory, generated_at: float) -> Path:
    path = tmp_path_factory.mktemp("dashboard") / "arcs.db"
    build_database(path, _demo_records(generated_at))
    return path


@pytest.fixture(scope="package")
def dashboard(demo_db: Path) -> Iterator[DashboardServer]:
    server = load_server()(demo_db, DashboardSettings(port=0))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def postgres_dashboard(postgres_server: PostgresServer, generated_at: float) -> Iterator[DashboardServer]:
    """The same records in a PostgreSQL database, written by a real collector, and its dashboard."""
    url = postgres_server.create_database()
    build_any_database(url, _demo_records(generated_at))
    server = load_server()(url, DashboardSettings(port=0))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def any_dashboard(request: pytest.FixtureRequest, dashboard: DashboardServer) -> DashboardServer:
    """The dashboard on each store in turn."""
    if request.param == "sqlite":
        return dashboard
    server: DashboardServer = request.getfixturevalue("postgres_dashboard")
    return server


def get(url: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
    """Status, headers and body of a GET (an HTTP error is an answer too)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> Tuple[int, Any]:
    status, _, body = get(url)
    return status, json.loads(body)
