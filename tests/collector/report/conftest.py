"""Fixtures of the report's tests: databases written by a real collector from generated ARCs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, List, Tuple, Union

import pytest

from bench.report_data import build_database, fraud_scenario
from tests.support.collector import run_mona
from tests.support.postgres import PostgresServer, build_any_database

#: The reports run "now" here, so that the generated windows stay the default ones.
NOW = time.time()


@pytest.fixture(scope="package")
def fraud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """3,000 ARCs in the last 24 h and 6,000 in the 7 days before, see fraud_scenario."""
    path = tmp_path_factory.mktemp("fraud") / "arcs.db"
    build_database(path, fraud_scenario(NOW))
    yield path


@pytest.fixture(scope="package")
def fraud_postgres_db(postgres_server: PostgresServer) -> str:
    """The same records in a PostgreSQL database, written by a real collector."""
    url = postgres_server.create_database()
    build_any_database(url, fraud_scenario(NOW))
    return url


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def fraud_any_db(request: pytest.FixtureRequest, fraud_db: Path) -> Union[Path, str]:
    """The fraud scenario on each store in turn."""
    if request.param == "sqlite":
        return fraud_db
    url: str = request.getfixturevalue("fraud_postgres_db")
    return url


def mona_report(db: Union[Path, str], *args: str) -> Tuple[int, str, str]:
    """Run ``mona report`` as a user would: a process of its own; returns status, stdout and stderr."""
    done = run_mona("report", "--db", str(db), *args, check=False, timeout=120)
    return done.returncode, done.stdout, done.stderr


def flagged(report: dict) -> List[Tuple[str, str]]:
    """The (section, name) of every KAPI and dimension at warn or above."""
    return [
        (section, item["name"])
        for section in ("kapis", "dimensions")
        for item in report[section]
        if item["status"] in ("warn", "alert")
    ]
