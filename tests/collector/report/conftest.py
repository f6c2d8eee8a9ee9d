"""Fixtures of the report's tests: databases written by a real collector from generated ARCs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from bench.report_data import build_database, fraud_scenario

#: The reports run "now" here, so that the generated windows stay the default ones.
NOW = time.time()


@pytest.fixture(scope="package")
def fraud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """3,000 ARCs in the last 24 h and 6,000 in the 7 days before, see fraud_scenario."""
    path = tmp_path_factory.mktemp("fraud") / "arcs.db"
    build_database(path, fraud_scenario(NOW))
    yield path


def mona_report(db: Path, *args: str) -> Tuple[int, str, str]:
    """Run ``mona report`` as a user would: a process of its own; returns status, stdout and stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "mona_collector.cli", "report", "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def flagged(report: dict) -> List[Tuple[str, str]]:
    """The (section, name) of every KAPI and dimension at warn or above."""
    return [
        (section, item["name"])
        for section in ("kapis", "dimensions")
        for item in report[section]
        if item["status"] in ("warn", "alert")
    ]
