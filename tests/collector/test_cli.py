"""The ``mona`` command as a real subprocess, against a database filled through a real socket."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import List

import pytest

from mona_client.forward import pack_entry
from mona_client.transport import Sender, SenderOptions
from mona_collector import Collector
from tests.support.collector import (
    BASE,
    TAG,
    MonaCollect,
    RawClient,
    bin32,
    entry,
    packed_message,
    record,
    store_through_a_collector,
    time_fixext8,
)
from tests.support.collector import run_mona as mona


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
    running = MonaCollect(db)
    try:
        assert re.search(r"storing in .+$", running.listening_line), running.listening_line
        client = RawClient(running.port)
        client.send(
            packed_message(TAG, bin32(entry(time_fixext8(BASE, 0), record("cli-run", {"v": 1}))), {"chunk": "x"})
        )
        assert client.answer() == {"ack": "x"}
        assert running.stop() == 0
    finally:
        running.kill()
    assert json.loads(mona("arcs", "show", "cli-run", "--db", str(db)).stdout)["fields"] == {"v": 1}


# --- hostile text, NaN, exports -------------------------------------------------------------------

EVIL_CLASS = "evil\x1b[31m\r\nforged line\x07"


def _fill(path: Path, records: list) -> Path:
    """A database holding ``records`` (strings may carry surrogates: they go out as their raw bytes)."""
    store_through_a_collector(path, records)
    return path


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory) -> Path:
    return _fill(
        tmp_path_factory.mktemp("hostile") / "h.db",
        [
            record("ctx\udcfe", {"MONA_ARC_CLASS": EVIL_CLASS, "f\udcff": 1}, user="user\udcff", record_id="h:1"),
            record("nan-run", {"loss": float("nan"), "peak": float("inf"), "ok": 1.5}, record_id="h:2"),
        ],
    )


def test_list_and_stats_escape_control_characters_and_invalid_bytes(hostile_db):
    table = mona("arcs", "list", "--db", str(hostile_db)).stdout
    assert "\x1b" not in table and "\r" not in table and "\x07" not in table
    assert len(table.splitlines()) == 3  # the header and two ARCs: no forged line
    assert "evil\\x1b[31m\\r\\nforged line\\x07" in table
    assert "ctx\\xfe" in table and "user\\xff" in table
    text = mona("stats", "--db", str(hostile_db)).stdout
    assert "\x1b" not in text and "\r" not in text
    assert "evil\\x1b[31m\\r\\nforged line\\x07" in text
    assert not [line for line in text.splitlines() if line.startswith("forged")]


def _strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} in JSON output")

    return json.loads(text, parse_constant=refuse)


def test_json_output_writes_nan_and_infinity_as_null(hostile_db):
    shown = _strict_json(mona("arcs", "show", "nan-run", "--db", str(hostile_db)).stdout)
    assert shown["fields"] == {"loss": None, "peak": None, "ok": 1.5}
    for line in mona("arcs", "list", "--json", "--db", str(hostile_db)).stdout.splitlines():
        _strict_json(line)
    for line in mona("arcs", "export", "--format", "jsonl", "--db", str(hostile_db)).stdout.splitlines():
        _strict_json(line)
    _strict_json(mona("stats", "--json", "--db", str(hostile_db)).stdout)


def test_csv_export_escapes_invalid_bytes_and_replaces_the_file_only_when_complete(hostile_db, tmp_path):
    out = tmp_path / "arcs.csv"
    out.write_text("the previous export\n")
    mona("arcs", "export", "--format", "csv", "--out", str(out), "--db", str(hostile_db))
    rows = list(csv.DictReader(io.StringIO(out.read_bytes().decode("utf-8"), newline="")))
    assert sorted(row["context_id"] for row in rows) == ["ctx\\xfe", "nan-run"]
    evil = next(row for row in rows if row["context_id"] == "ctx\\xfe")
    assert evil["user_id"] == "user\\xff" and evil["arc_class"] == EVIL_CLASS and evil["fields.f\\xff"] == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arcs.csv"]  # no temporary file left
    to_stdout = mona("arcs", "export", "--format", "csv", "--db", str(hostile_db)).stdout
    assert "ctx\\xfe" in to_stdout


@pytest.mark.parametrize(
    "args, status, says",
    [
        (["arcs", "list", "--limit", "9" * 30], 2, "out of range"),
        (["arcs", "list", "--limit", "0"], 2, "out of range"),
        (["arcs", "list", "--since", "yesterday"], 2, "neither a duration"),
        (["arcs", "export", "--format", "csv", "--out", "{tmp}"], 2, "is a directory"),
        (["arcs", "export", "--format", "csv", "--out", "{tmp}/no/such/folder/x.csv"], 2, "no folder"),
        (["collect", "--port", "99999", "--db", "{tmp}/c.db"], 2, "out of range"),
        (["collect", "--max-frame-bytes", "0", "--db", "{tmp}/c.db"], 2, "out of range"),
        (["collect", "--stall-timeout", "-1", "--db", "{tmp}/c.db"], 2, "above 0"),
        (["collect", "--stall-timeout", "nan", "--db", "{tmp}/c.db"], 2, "above 0"),
        (["collect", "--idle-timeout", "0", "--db", "{tmp}/c.db"], 2, "above 0"),
        (["collect", "--max-connections", "0", "--db", "{tmp}/c.db"], 2, "out of range"),
        (["collect", "--max-buffered-bytes", "1000", "--db", "{tmp}/c.db"], 2, "below --max-frame-bytes"),
        (["collect", "--db", "/etc/passwd/x.db"], 2, "/etc/passwd is not a directory"),
        (["db", "migrate", "--db", "/etc/passwd/x.db"], 2, "/etc/passwd is not a directory"),
        (["collect", "--db", "{tmp}"], 2, "is a directory"),
        (["collect", "--users-file", "{tmp}/none.txt", "--db", "{tmp}/c.db"], 2, "cannot read"),
    ],
)
def test_wrong_arguments_are_one_line_and_status_2_never_a_traceback(filled_db, tmp_path, args, status, says):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    if args[0] == "arcs":
        args += ["--db", str(filled_db)]
    result = mona(*args, check=False)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert says in result.stderr.splitlines()[-1], result.stderr
    assert "cannot listen" not in result.stderr
    assert not (tmp_path / "c.db").exists()


# --- mona collect: files, lock, deletion, users ---------------------------------------------------


def _send_one(port: int, context: str, chunk: str) -> None:
    client = RawClient(port)
    client.send(packed_message(TAG, bin32(entry(time_fixext8(BASE, 0), record(context, {"v": 1}))), {"chunk": chunk}))
    assert client.answer() == {"ack": chunk}
    client.close()


def test_collect_creates_its_files_for_its_user_only(tmp_path):
    db = tmp_path / "new" / "folder" / "c.db"
    running = MonaCollect(db, umask=0o022)
    try:
        _send_one(running.port, "private", "p1")
        deadline = time.monotonic() + 20
        while not (tmp_path / "new" / "folder" / "c.db-wal").exists():
            assert time.monotonic() < deadline, "the merger wrote nothing"
            time.sleep(0.05)
        for folder in (tmp_path / "new", tmp_path / "new" / "folder"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        files = sorted(db.parent.iterdir())
        assert {f.name for f in files} >= {"c.db", "c.raw.db", "c.db-wal", "c.raw.db-wal", "c.db.collector.lock"}
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert running.stop() == 0
    finally:
        running.kill()


def test_a_second_collector_on_the_same_database_says_it_is_in_use(tmp_path):
    db = tmp_path / "c.db"
    first = MonaCollect(db)
    try:
        second = mona("collect", "--port", "0", "--db", str(db), check=False)  # hangs (test timeout) if it waits
        assert second.returncode == 1
        last = second.stderr.splitlines()[-1]
        assert "in use by another collector" in last and f"process {first.process.pid}" in last
        assert "Traceback" not in second.stderr
        _send_one(first.port, "first-still-works", "f1")
        assert first.stop() == 0
    finally:
        first.kill()
    embedded = Collector(port=0, db_path=db, synchronous="NORMAL", udp_heartbeat=False)
    with embedded:  # a collector started from Python holds the merger's lock only
        third = mona("collect", "--port", "0", "--db", str(db), check=False)
        assert third.returncode == 1 and "in use by another collector" in third.stderr


def test_deleting_the_database_stops_the_collector_with_status_1(tmp_path):
    db = tmp_path / "c.db"
    running = MonaCollect(db)
    try:
        _send_one(running.port, "before-deletion", "d1")
        for name in ("c.db", "c.raw.db"):
            (tmp_path / name).unlink()
        assert running.process.wait(timeout=60) == 1
        assert running.process.stderr is not None
        rest = running.process.stderr.read()
        assert "deleted or replaced" in rest and "Traceback" not in rest
    finally:
        running.kill()


def test_users_file(tmp_path):
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    users = tmp_path / "users.txt"
    users.write_text("# who may send\n\nalice:wonder:land\n  # indented comment\nbob:builder\n")
    users.chmod(0o600)
    running = MonaCollect(tmp_path / "c.db", "--shared-key-file", str(key), "--users-file", str(users))
    try:

        def deliver(user: str, password: str) -> bool:
            sender = Sender(
                SenderOptions(
                    "127.0.0.1",
                    running.port,
                    shared_key="s3cret",
                    username=user,
                    password=password,
                    connect_timeout=2.0,
                    max_backoff=0.2,
                    client_hostname="cli-test",
                )
            )
            try:
                sender.put(pack_entry(BASE, record(f"by-{user}-{len(password)}", {"v": 1}, user=user)))
                return sender.flush(5)
            finally:
                sender.close(0.1)

        assert deliver("alice", "wonder:land")  # the password is everything after the first colon
        assert deliver("bob", "builder")
        assert not deliver("bob", "wrong")
        assert running.stop() == 0
    finally:
        running.kill()


@pytest.mark.parametrize(
    "content, says",
    [
        ("alice:pw\nno-colon-here\n", "line 2: expected user:password"),
        ("alice:pw\n:secret-without-user\n", "line 2: expected user:password"),
        ("alice:\n", "line 1: expected user:password"),
        ("alice:one\nalice:two\n", "line 2: the user alice is listed twice"),
        ("# nobody\n\n", "lists no user"),
    ],
)
def test_a_bad_users_file_is_refused_with_its_line_number(tmp_path, content, says):
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    users = tmp_path / "users.txt"
    users.write_text(content)
    result = mona(
        "collect",
        "--port",
        "0",
        "--db",
        str(tmp_path / "c.db"),
        "--shared-key-file",
        str(key),
        "--users-file",
        str(users),
        check=False,
    )
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert "secret-without-user" not in result.stderr and "Traceback" not in result.stderr


def test_a_users_file_needs_a_shared_key(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("alice:pw\n")
    env_without_key = {k: v for k, v in os.environ.items() if k != "MONA_COLLECTOR_SHARED_KEY"}
    result = mona(
        "collect",
        "--port",
        "0",
        "--db",
        str(tmp_path / "c.db"),
        "--users-file",
        str(users),
        check=False,
        env=env_without_key,
    )
    assert result.returncode == 2 and "needs a shared key" in result.stderr
