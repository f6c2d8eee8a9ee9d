"""The ``mona`` command as a real subprocess, against a database filled through a real socket."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from collector_support import BASE, RawClient, bin32, entry, packed_message, record, time_fixext8, TAG
from mona_client.collector import Collector

ROOT = Path(__file__).resolve().parent.parent


def mona(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "mona_client.collector.cli", *args], capture_output=True, text=True, env=env, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def filled_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "c.db"
    now = int(time.time())
    records = [
        record("old-run", {"MONA_ARC_CLASS": "batch", "rows": 10}, now - 3 * 86400, record_id="cli:1"),
        record("new-run", {"MONA_ARC_CLASS": "training", "loss": 0.25}, now - 60, record_id="cli:2"),
        record("new-run.fold1", {"acc": 0.75}, now - 50, record_id="cli:3"),
        "not a record",
    ]
    with Collector(port=0, db_path=path) as collector:
        client = RawClient(collector.port)
        blob = b"".join(entry(time_fixext8(BASE, 0), rec) for rec in records)
        client.send(packed_message(TAG, bin32(blob), {"chunk": "cli"}))
        assert client.answer() == {"ack": "cli"}
    return path


def test_list_table_and_filters(filled_db):
    out = mona("arcs", "list", "--db", str(filled_db)).stdout
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["CONTEXT", "USER", "CLASS"]
    assert [line.split()[0] for line in lines[1:]] == ["new-run", "old-run"]
    recent = mona("arcs", "list", "--db", str(filled_db), "--since", "2h", "--json").stdout.splitlines()
    assert [json.loads(line)["context_id"] for line in recent] == ["new-run"]
    batch = mona("arcs", "list", "--db", str(filled_db), "--arc-class", "batch", "--json").stdout.splitlines()
    assert [json.loads(line)["arc_class"] for line in batch] == ["batch"]
    assert len(mona("arcs", "list", "--db", str(filled_db), "--limit", "1", "--json").stdout.splitlines()) == 1


def test_show_sub_context_and_unknown(filled_db):
    arc = json.loads(mona("arcs", "show", "new-run.fold1", "--db", str(filled_db)).stdout)
    assert arc["context_id"] == "new-run" and arc["sub_arcs"]["fold1"]["fields"] == {"acc": 0.75}
    missing = mona("arcs", "show", "no-such-run", "--db", str(filled_db), check=False)
    assert missing.returncode == 1 and "no ARC" in missing.stderr


def test_export_jsonl_and_csv(filled_db, tmp_path):
    lines = mona("arcs", "export", "--format", "jsonl", "--db", str(filled_db)).stdout.splitlines()
    assert sorted(json.loads(line)["context_id"] for line in lines) == ["new-run", "old-run"]
    out = tmp_path / "arcs.csv"
    mona("arcs", "export", "--format", "csv", "--arc-class", "training", "--out", str(out), "--db", str(filled_db))
    rows: List[dict] = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 1
    assert rows[0]["context_id"] == "new-run"
    assert rows[0]["fields.loss"] == "0.25" and rows[0]["sub_arcs.fold1.fields.acc"] == "0.75"


def test_stats(filled_db):
    text = mona("stats", "--db", str(filled_db)).stdout
    assert re.search(r"^events\s+4$", text, re.M) and re.search(r"^rejected\s+1\b", text, re.M)
    data = json.loads(mona("stats", "--json", "--db", str(filled_db)).stdout)
    assert data["arcs_by_class"] == {"batch": 1, "training": 1} and data["tags"][TAG]["events"] == 4


def test_missing_database_is_a_clear_error(tmp_path):
    result = mona("stats", "--db", str(tmp_path / "nothing.db"), check=False)
    assert result.returncode == 1 and "no collector database" in result.stderr


def test_collect_runs_until_sigterm_and_stores_what_it_got(tmp_path):
    db = tmp_path / "collect.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "mona_client.collector.cli", "collect", "--port", "0", "--db", str(db)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+).*storing in (.+)$", line)
        assert match, line
        client = RawClient(int(match.group(1)))
        client.send(packed_message(TAG, bin32(entry(time_fixext8(BASE, 0), record("cli-run", {"v": 1}))), {"chunk": "x"}))
        assert client.answer() == {"ack": "x"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert json.loads(mona("arcs", "show", "cli-run", "--db", str(db)).stdout)["fields"] == {"v": 1}
