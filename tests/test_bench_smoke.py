"""The benchmark keeps working: its quick mode runs end to end and prints every table.

No figure is checked: times on a shared machine say nothing in a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("fluent.asyncsender")
pytest.importorskip("structlog")
pytest.importorskip("opentelemetry.sdk.trace")
pytest.importorskip("psutil")


def test_quick_bench_prints_the_tables(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for heading in (
        "### Per call",
        "### Where the time",
        "### End to end",
        "### Memory",
        "### The collector alone",
        "### Where the merger's time goes",
        "### Goals",
    ):
        assert heading in out, out
    for row in (
        "mona export()",
        "msgpack.packb(record) [floor]",
        "fluent-logger async emit",
        "fluent-logger sync emit",
        "OTel SDK span, 3 attributes",
        "structlog bind_contextvars + info",
        "ContextVar set + reset",
        "mona context enter+exit (arc_class)",
        "mona sub-context enter+exit",
        "disabled: context + export",
        "mona client → mona collect, merged in ARCs, queryable",
        "per queued export",
        "collector alone: the same records pre-encoded",
        "burst:",
        "collector alone ≥ 400,000 records/s merged and queryable",
    ):
        assert row in out, row
    assert "all delivered records found merged in the database" in out, out
    assert not list(tmp_path.glob("mona-bench-*")), "the bench left its temporary files"
