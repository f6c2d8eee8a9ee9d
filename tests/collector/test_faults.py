"""The collector's merger under faults and abuse: a full disk, a dying merger, deep sub-contexts, long
ARCs, big documents, users writing for each other, a merger whose collector is gone.

Everything is real: a tmpfs filled up for the full disk, SIGKILL for a dying merger, the merger's
own /proc/PID/io for the bytes it writes, tracemalloc for the memory the merge holds, the shared-key
and user handshake of mona's own Sender for the users.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Iterator, List

import pytest

from mona_client.forward import pack_entry
from mona_client.transport import Sender, SenderOptions
from mona_collector import Collector, SQLiteStore
from mona_collector.cli import main as mona_cli
from mona_collector.merging.process import MergeLoop
from mona_collector.store import RawChunk, SQLiteRawLog, raw_log_path
from tests.support.collector import (
    BASE,
    TAG,
    RawClient,
    bin32,
    entry,
    packed_message,
    record,
    run_mona,
    stats,
    stored_arcs,
    time_fixext8,
)
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
COLLECTOR_LOG = "mona_collector"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "collector.db"


def _chunk(records: list, chunk: str) -> bytes:
    blob = b"".join(entry(time_fixext8(BASE, 0), rec) for rec in records)
    return packed_message(TAG, bin32(blob), {"chunk": chunk})


def _send(client: RawClient, records: list, chunk: str) -> None:
    client.send(_chunk(records, chunk))
    assert client.answer() == {"ack": chunk}


def _error_lines(caplog, text: str) -> List[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == COLLECTOR_LOG and r.levelno >= logging.ERROR and text in r.getMessage()
    ]


# --- a merger that dies --------------------------------------------------------------------------------


def test_a_killed_merger_is_restarted_logged_and_counted(db_path, caplog):
    caplog.set_level(logging.INFO)
    with Collector(port=0, db_path=db_path, synchronous="NORMAL", merger_max_backoff=0.5) as collector:
        client = RawClient(collector.port)
        _send(client, [record("a", {"x": 1}, record_id="s:1")], "1")
        assert collector.wait_merged()
        os.kill(collector._merger.pid, signal.SIGKILL)  # a real death (OOM killer, a crash)
        _send(client, [record("b", {"y": 2}, record_id="s:2")], "2")  # acked while no merger runs
        assert collector.wait_merged(30), "the merger was not restarted"
        assert collector.merger_restarts == 1
    assert stored_arcs(db_path, "b")[0]["fields"] == {"y": 2}
    assert _error_lines(caplog, "the merger process died (killed by signal 9)")
    counts = stats(db_path)
    assert counts["merger_restarts"] == 1 and "signal 9" in counts["merger_last_error"]
    out = io.StringIO()
    sys.stdout, saved = out, sys.stdout
    try:
        assert mona_cli(["stats", "--db", str(db_path)]) == 0
    finally:
        sys.stdout = saved
    assert "merger        1 restart(s), last error at " in out.getvalue()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs: a disk that really fills up (needs root, as the test machines run)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until about ``leave`` bytes are free; the filler file is returned."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(descriptor, b"\0" * 65536):
            pass
    except OSError:  # no space left
        pass
    finally:
        os.close(descriptor)
    with open(filler, "r+b") as f:  # give back what should stay free
        f.truncate(max(0, os.path.getsize(filler) - leave))
    return filler


def test_full_disk_restarts_the_merger_and_nothing_unstored_is_acked(small_disk, caplog, capfd):
    caplog.set_level(logging.INFO)
    db_path = small_disk / "collector.db"
    big = "x" * 300_000  # each record needs about this much in the raw log and again in its ARC
    with Collector(port=0, db_path=db_path, synchronous="NORMAL", merger_max_backoff=0.5) as collector:
        client = RawClient(collector.port)
        _send(client, [record("before", {"x": 1}, record_id="s:1")], "1")
        assert collector.wait_merged()
        filler = _fill(small_disk, leave=450_000)  # room for the raw row, not for merging it too
        _send(client, [record("during", {"big": big}, record_id="s:2")], "2")
        assert wait_until(lambda: collector.merger_restarts >= 1), "the merger did not die on the full disk"
        assert _error_lines(caplog, "the merger process died (StoreUnavailable: cannot write to")
        assert "collector merger: stopped, the storage failed" in capfd.readouterr().err  # the merger's own line
        # The network side cannot store this one: it must not ack it (the sender keeps it).
        refused = RawClient(collector.port)
        refused.send(_chunk([record("refused", {"big": big}, record_id="s:3")], "3"))
        refused.wait_closed()
        assert refused.answers == []
        filler.unlink()  # space comes back: the restarted merger merges what was acked
        assert collector.wait_merged(60), "the merger did not merge after space came back"
        _send(RawClient(collector.port), [record("refused", {"big": big}, record_id="s:3")], "3")  # the resend
        assert collector.wait_merged(30)
    assert stored_arcs(db_path, "during")[0]["fields"] == {"big": big}
    assert stored_arcs(db_path, "refused")[0]["export_count"] == 1
    counts = stats(db_path)
    assert counts["rejected"] == 0 and counts["unmerged_events"] == 0
    assert counts["merger_restarts"] >= 1 and "full" in counts["merger_last_error"]


def test_a_merger_whose_collector_is_gone_exits_quietly(db_path):
    SQLiteStore(db_path).close()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    worker = subprocess.Popen(
        [sys.executable, "-m", "mona_collector.merging", "--db", str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert worker.stdout.readline().startswith(b"merged ")  # ready
    worker.stdout.close()  # the collector is gone: its end of both pipes closes
    worker.stdin.close()
    assert worker.wait(30) == 0
    errors = worker.stderr.read().decode()
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors
    assert len(errors.strip().splitlines()) == 1 and "is gone" in errors


# --- deep sub-contexts ----------------------------------------------------------------------------------


def test_records_deeper_than_the_limit_are_refused_alone(db_path, capfd):
    names = [f"n{i}" for i in range(1000)]
    deep = [record(".".join(["deep", *names[:depth]]), {"d": depth}) for depth in range(0, 1000, 10)]
    with Collector(port=0, db_path=db_path, synchronous="NORMAL") as collector:
        client = RawClient(collector.port)
        _send(client, [*deep, record("tiny", {"t": 1})], "deep")
        assert collector.wait_merged(60)
    arc = stored_arcs(db_path, "deep")[0]
    assert arc["export_count"] == 7  # depths 0, 10, ..., 60: the default limit is 64
    node = arc
    for name in names[:60]:
        node = node["sub_arcs"][name]
    assert node["fields"] == {"d": 60} and node["sub_arcs"] == {}
    assert stored_arcs(db_path, "tiny")[0]["fields"] == {"t": 1}
    assert stats(db_path)["rejected"] == 100 - 7
    assert "nested 70 levels deep, more than the limit of 64" in capfd.readouterr().err  # the merger's log


def test_mona_collect_takes_the_depth_limit(tmp_path):
    db = tmp_path / "c.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    refused = run_mona("collect", "--db", str(db), "--max-depth", "1000", check=False)
    assert refused.returncode == 2 and "between 0 and 256" in refused.stderr and "Traceback" not in refused.stderr
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mona_collector.cli",
            "collect",
            "--db",
            str(db),
            "--port",
            "0",
            "--max-depth",
            "2",
            "--merge-cache-bytes",
            "2000000",
            "--merger-max-backoff",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = ""
        while "listening on" not in line:
            line = process.stderr.readline()
            assert line, "mona collect did not start"
        port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
        _send(RawClient(port), [record("r.a.b", {"ok": 1}), record("r.a.b.c", {"no": 1})], "1")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)
    counts = stats(db)
    assert counts["rejected"] == 1 and stored_arcs(db, "r")[0]["sub_arcs"]["a"]["sub_arcs"]["b"]["fields"] == {"ok": 1}


def _merge_directly(db_path: Path, records: list, max_depth: int) -> None:
    """Merge ``records`` into the database in this process, with the depth limit given (a database
    written before depths were limited holds such documents)."""
    raw_log = SQLiteRawLog(raw_log_path(db_path))
    store = SQLiteStore(db_path)
    try:
        blob = b"".join(entry(time_fixext8(BASE, 0), rec) for rec in records)
        raw_log.append([RawChunk(TAG, time.time(), len(records), None, None, blob)])
        loop = MergeLoop(store, raw_log, max_depth=max_depth)
        loop.merge_available()
        loop.close()
    finally:
        store.close()
        raw_log.close()


def test_show_and_export_a_document_deeper_than_any_limit(db_path, tmp_path, capsys):
    names = [f"n{i}" for i in range(1000)]
    _merge_directly(db_path, [record(".".join(["old", *names]), {"leaf": 1}), record("old", {"root": 1})], 10**6)
    assert mona_cli(["arcs", "show", "old", "--db", str(db_path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    node = shown
    for name in names[:256]:  # nested down to the deepest level shown, then the rest of the path
        node = node["sub_arcs"][name]
    rest = ".".join(names[256:])
    assert node["sub_arcs"][rest]["fields"] == {"leaf": 1}
    out = tmp_path / "arcs.csv"
    assert mona_cli(["arcs", "export", "--format", "csv", "--db", str(db_path), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 1 and rows[0]["fields.root"] == "1"
    assert any(key.endswith(f".{rest}.fields.leaf") and value == "1" for key, value in rows[0].items())


# --- long ARCs: bytes written --------------------------------------------------------------------------


def _written_bytes(pid: int) -> int:
    """What the merger process ``pid`` wrote to the database so far: what its writer process (its
    child, when it has one) passed to write calls (``wchar``: database files and WALs alike)."""
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        children = [int(child) for child in f.read().split()]
    written = 0
    for process in children or [pid]:
        with open(f"/proc/{process}/io", encoding="ascii") as f:
            written += int(dict(line.split(": ") for line in f.read().splitlines())["wchar"])
    return written


def _bytes_written_for_steps(db_path: Path, transactions: int, steps_per_transaction: int = 10) -> int:
    """Bytes the merger process writes (write calls: database and WAL) to merge one long ARC that
    gets a sub-context per training step, one merge transaction per ``steps_per_transaction`` steps."""
    with Collector(port=0, db_path=db_path, synchronous="NORMAL") as collector:
        client = RawClient(collector.port)
        _send(client, [record("train", {"MONA_ARC_CLASS": "training"}, record_id="t:0")], "0")
        assert collector.wait_merged()
        pid = collector._merger.pid
        before = _written_bytes(pid)
        step = 0
        for n in range(transactions):
            batch = []
            for _ in range(steps_per_transaction):
                step += 1
                batch.append(record(f"train.step-{step}", {"loss": 1 / step, "note": "s" * 200}, record_id=f"t:{step}"))
            _send(client, batch, str(n + 1))
            assert collector.wait_merged()
        written = _written_bytes(pid) - before
    assert stored_arcs(db_path, "train")[0]["export_count"] == step + 1
    return written


def test_write_cost_of_a_long_arc_grows_linearly(tmp_path):
    small = _bytes_written_for_steps(tmp_path / "small.db", 60)
    large = _bytes_written_for_steps(tmp_path / "large.db", 180)
    # Three times the steps: three times the bytes when each merge writes what changed, about nine
    # times when each merge rewrites the whole ARC.
    assert large / small < 4.5, (small, large)


# --- the merger's cache in bytes --------------------------------------------------------------------------


def test_the_merge_cache_is_bounded_in_bytes(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    db_path = tmp_path / "big.db"
    raw_log = SQLiteRawLog(raw_log_path(db_path), synchronous="OFF")
    value = "v" * 1_000_000
    for i in range(40):  # forty 1 MB records, each in a chunk and an ARC of its own
        blob = entry(time_fixext8(BASE, 0), record(f"big-{i}", {"value": value, "i": i}))
        raw_log.append([RawChunk(TAG, time.time(), 1, None, None, blob)])
    store = SQLiteStore(db_path, synchronous="OFF")
    try:
        gc.collect()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            loop = MergeLoop(store, raw_log, cache_bytes=4 * 1024 * 1024)
            loop.merge_available()
            loop.close()
            gc.collect()
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert held - baseline < 12_000_000, held - baseline  # 40 MB when every document stays cached
        assert peak - baseline < 40_000_000, peak - baseline  # one batch is bounded in bytes too
        assert len(store.list_arcs(limit=None)) == 40
        assert store.find_arcs("big-7")[0]["fields"] == {"value": value, "i": 7}
    finally:
        store.close()
        raw_log.close()
    lines = [r for r in caplog.records if "document cache reached its limit of 4194304 bytes" in r.getMessage()]
    assert len(lines) == 1


def test_the_merge_cache_bound_counts_memory_not_stored_bytes(tmp_path):
    # Documents of many small numbers take several times their stored size in memory: the bound must
    # hold for what the process holds, not for the msgpack form.
    db_path = tmp_path / "numbers.db"
    raw_log = SQLiteRawLog(raw_log_path(db_path), synchronous="OFF")
    for arc in range(1500):  # 1,500 ARCs of 100 numeric fields in 20 nodes, one chunk each
        blob = b"".join(
            entry(
                time_fixext8(BASE, 0),
                record(f"n-{arc}" + (f".s{node}" if node else ""), {f"k{k}": arc * 0.5 + k for k in range(5)}),
            )
            for node in range(20)
        )
        raw_log.append([RawChunk(TAG, time.time(), 20, None, None, blob)])
    store = SQLiteStore(db_path, synchronous="OFF")
    limit = 4 * 1024 * 1024
    try:
        gc.collect()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            loop = MergeLoop(store, raw_log, cache_bytes=limit)
            loop.merge_available()
            loop.close()
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
        assert held < limit * 1.5, held  # 1,500 documents of about 23 KB each: 34 MB if all stayed
        assert store.find_arcs("n-1499")[0]["sub_arcs"]["s19"]["fields"]["k4"] == 1499 * 0.5 + 4
    finally:
        store.close()
        raw_log.close()


# --- users own what they write -------------------------------------------------------------------------------


USERS = {"alice": "wonderland", "bob": "builder"}
KEY = "a shared key"


def _send_as(port: int, username: str, records: list) -> None:
    sender = Sender(
        SenderOptions(
            "127.0.0.1",
            port,
            shared_key=KEY,
            username=username,
            password=USERS[username],
            connect_timeout=2.0,
            max_backoff=0.2,
        )
    )
    try:
        for rec in records:
            sender.put(pack_entry(BASE, rec))
        assert sender.flush(10)
    finally:
        sender.close(0.1)


def test_an_authenticated_user_owns_what_it_writes(db_path, capfd):
    with Collector(
        port=0, db_path=db_path, synchronous="NORMAL", udp_heartbeat=False, shared_key=KEY, users=USERS
    ) as collector:
        _send_as(collector.port, "bob", [record("run", {"x": "bob's"}, user="bob", record_id="b:1")])
        assert collector.wait_merged()
        # alice writes as bob: over his field, and under his next record id.
        _send_as(
            collector.port,
            "alice",
            [
                record("run", {"x": "alice's"}, BASE + 5, user="bob", record_id="b:2"),
                record("run", {"x": "alice's own"}, user="alice", record_id="b:2"),
            ],
        )
        assert collector.wait_merged()
        _send_as(collector.port, "bob", [record("run", {"y": 2}, BASE + 1, user="bob", record_id="b:2")])
        assert collector.wait_merged()
    arcs = {arc["user_id"]: arc for arc in stored_arcs(db_path, "run")}
    assert arcs["bob"]["fields"] == {"x": "bob's", "y": 2} and arcs["bob"]["export_count"] == 2
    assert arcs["alice"]["fields"] == {"x": "alice's own"}
    counts = stats(db_path)
    assert counts["rejected"] == 1 and counts["duplicates"] == 0
    assert "user_id 'bob' is not the user the sender authenticated as ('alice')" in capfd.readouterr().err
