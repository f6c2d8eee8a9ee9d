"""Several collectors on one PostgreSQL database, real processes and a real server: failover, a killed
collector, a restarted database; the `mona` commands on both stores; migrate and prune."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

import pytest

from mona_client.forward import pack_entry
from mona_client.transport import Sender, SenderOptions
from mona_collector import Collector
from mona_collector.databases import open_store
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
from tests.support.postgres import PostgresServer


def _sender(port: int) -> Sender:
    return Sender(SenderOptions("127.0.0.1", port, connect_timeout=2.0, max_backoff=0.2, ack_timeout=5.0))


def _wait_merged(db: Union[Path, str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        store = open_store(db, readonly=True)
        try:
            if store.stats()["unmerged_rows"] == 0:
                return
        finally:
            store.close()
        assert time.monotonic() < deadline, "the collectors did not merge everything"
        time.sleep(0.1)


def _arcs(db: Union[Path, str]) -> Dict[str, dict]:
    store = open_store(db, readonly=True)
    try:
        return {arc["context_id"]: arc for arc in store.iter_arcs()}
    finally:
        store.close()


@pytest.fixture
def collectors(postgres_url: str) -> Iterator[List[MonaCollect]]:
    running: List[MonaCollect] = []
    try:
        running.extend(MonaCollect(postgres_url, drain=True) for _ in range(3))
        yield running
    finally:
        for collector in running:
            collector.kill()


def test_three_collectors_a_killed_one_and_failover_store_every_field_once(postgres_url, collectors):
    fluent = pytest.importorskip("fluent.sender")
    first, second, third = collectors
    senders = [_sender(c.port) for c in collectors]
    arcs, steps = 40, 6
    sent: Dict[int, List[bytes]] = {0: [], 1: [], 2: []}
    # Every ARC's exports are spread over the three collectors; each export has a record id.
    for step in range(steps):
        for arc in range(arcs):
            target = (arc + step) % 3
            context = f"run-{arc}" if step == 0 else f"run-{arc}.s{step}"
            message = {"MONA_ARC_CLASS": "spread"} if step == 0 else {}
            message[f"f{step}"] = arc * 100 + step
            packed = pack_entry(
                BASE + step, record(context, message, BASE + step, record_id=f"py:{arc * steps + step}")
            )
            sent[target].append(packed)
            assert senders[target].put(packed)
        if step == steps // 2:
            assert senders[0].flush(30)
            first.process.send_signal(signal.SIGKILL)  # whatever its merger held is merged by another one
            first.process.wait(timeout=30)
    # fluent-logger (no acks) writes to the collectors that live: one more field for every ARC.
    logger = fluent.FluentSender("mona.client", host="127.0.0.1", port=second.port, nanosecond_precision=True)
    other = fluent.FluentSender("mona.client", host="127.0.0.1", port=third.port, nanosecond_precision=True)
    try:
        for arc in range(arcs):
            out = logger if arc % 2 else other
            rec = record(f"run-{arc}", {"fl": arc}, BASE + 100, record_id=f"fl:{arc}")
            assert out.emit("message", rec), out.last_error
    finally:
        logger.close()
        other.close()
    # Failover: what went to the killed collector is resent to another one (as Fluentd does), and the
    # killed collector comes back on its port, where its own sender delivers what it still holds.
    for packed in sent[0]:
        assert senders[1].put(packed)
    restarted = MonaCollect(postgres_url, port=first.port, drain=True)
    collectors.append(restarted)
    for sender in senders:
        assert sender.flush(60)
        sender.close(1)
    _wait_merged(postgres_url)
    stored = _arcs(postgres_url)
    assert len(stored) == arcs
    for arc in range(arcs):
        document = stored[f"run-{arc}"]
        assert document["arc_class"] == "spread"
        assert document["fields"] == {"f0": arc * 100, "fl": arc}
        assert {name: sub["fields"] for name, sub in document["sub_arcs"].items()} == {
            f"s{step}": {f"f{step}": arc * 100 + step} for step in range(1, steps)
        }
        assert document["export_count"] == steps + 1  # each record once, resent ones dropped
    stats = json.loads(mona("stats", "--json", "--db", postgres_url).stdout)
    assert stats["tags"][TAG]["events"] == arcs * (steps + 1)
    assert stats["duplicates"] >= len(sent[0])  # every failover resend was dropped
    for collector in (second, third, restarted):
        assert collector.stop() == 0


def test_a_database_restart_mid_run_loses_nothing_and_doubles_nothing(postgres_url, postgres_server: PostgresServer):
    total = 600
    with Collector(port=0, db_path=postgres_url, merger_max_backoff=1.0) as collector:
        sender = _sender(collector.port)
        try:
            for i in range(total):
                sender.put(pack_entry(BASE, record(f"db-{i % 30}.s{i}", {"v": i}, BASE + i, record_id=f"db:{i}")))
                if i == total // 3:
                    assert sender.flush(30)
                    postgres_server.restart()  # every session is cut; the collector reconnects
                    for _ in range(5):
                        sender.put(pack_entry(BASE, record("db-0.again", {"v": -1}, BASE, record_id="db:0")))
            assert sender.flush(60)
        finally:
            sender.close(1)
        _wait_merged(postgres_url)
    stored = _arcs(postgres_url)
    assert sum(len(arc["sub_arcs"]) for arc in stored.values()) == total
    assert sum(arc["export_count"] for arc in stored.values()) == total
    assert all(
        sub["fields"] == {"v": int(name[1:])} for arc in stored.values() for name, sub in arc["sub_arcs"].items()
    )


# --- the mona commands on both stores ------------------------------------------------------------


def _fill(db: Union[Path, str], now: Optional[int] = None) -> None:
    now = int(time.time()) if now is None else now
    records = [
        record("old-run", {"MONA_ARC_CLASS": "batch", "rows": 10}, now - 40 * 86400, record_id="cli:1"),
        record("new-run", {"MONA_ARC_CLASS": "training", "loss": 0.25}, now - 60, record_id="cli:2"),
        record("new-run.fold1", {"acc": 0.75}, now - 50, record_id="cli:3"),
        record("ctx\udcfe", {"f\udcff": 1}, now - 30, user="user\udcff", record_id="cli:4"),
        "not a record",
    ]
    store_through_a_collector(db, records, chunk="cli")


def _without_database_line(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("database"))


@pytest.fixture
def both_filled(tmp_path, postgres_url) -> List[str]:
    sqlite = str(tmp_path / "c.db")
    now = int(time.time())
    for db in (sqlite, postgres_url):
        _fill(db, now)
    return [sqlite, postgres_url]


def test_the_query_commands_give_the_same_output_on_both_stores(both_filled):
    sqlite, postgres = both_filled
    for args in (
        ["arcs", "list"],
        ["arcs", "list", "--json", "--since", "2h"],
        ["arcs", "list", "--arc-class", "batch", "--json"],
        ["arcs", "show", "new-run.fold1"],
        ["arcs", "export", "--format", "jsonl"],
        ["arcs", "export", "--format", "csv"],
        ["stats"],
    ):
        on_sqlite = mona(*args, "--db", sqlite).stdout
        on_postgres = mona(*args, "--db", postgres).stdout
        if args[0] == "stats":
            on_sqlite, on_postgres = _without_database_line(on_sqlite), _without_database_line(on_postgres)
        assert on_postgres == on_sqlite, args
    missing = mona("arcs", "show", "no-such-run", "--db", postgres, check=False)
    assert missing.returncode == 1 and "no ARC" in missing.stderr and "Traceback" not in missing.stderr


def test_report_and_alerts_give_the_same_output_on_both_stores(both_filled):
    sqlite, postgres = both_filled
    now = time.time()  # the same window for both
    since, until = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment)) for moment in (now - 7 * 86400, now))
    for args in (
        ["report", "--since", since, "--until", until],
        ["alerts", "check", "--json", "--at", until],
        ["alerts", "list"],
    ):
        on_sqlite = mona(*args, "--db", sqlite, check=False)
        on_postgres = mona(*args, "--db", postgres, check=False)
        assert (on_postgres.returncode, on_postgres.stderr) == (on_sqlite.returncode, on_sqlite.stderr), args
        assert on_postgres.stdout == on_sqlite.stdout, args


def test_an_unreachable_database_is_one_line(postgres_server: PostgresServer):
    url = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/no_such_database"
    for args in (["arcs", "list"], ["stats"], ["db", "migrate"]):
        result = mona(*args, "--db", url, check=False)
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and "no_such_database" in result.stderr


def test_migrate_is_versioned_and_idempotent(any_db):
    db = str(any_db)
    assert re.search(r"schema version \d+ created", mona("db", "migrate", "--db", db).stdout)
    assert "up to date" in mona("db", "migrate", "--db", db).stdout
    _fill(db)  # a collector runs on the migrated database
    assert "up to date" in mona("db", "migrate", "--db", db).stdout


def test_a_database_without_the_schema_is_named_for_queries(postgres_url):
    result = mona("arcs", "list", "--db", postgres_url, check=False)
    assert result.returncode == 1 and "mona db migrate" in result.stderr


def _send_one(db: str, context: str, chunk: str) -> None:
    with Collector(port=0, db_path=db, synchronous="NORMAL") as collector:
        client = RawClient(collector.port)
        rec = record(context, {"x": 1}, int(time.time()))
        client.send(packed_message(TAG, bin32(entry(time_fixext8(BASE, 0), rec)), {"chunk": chunk}))
        assert client.answer() == {"ack": chunk}
        client.close()


def test_prune_deletes_old_arcs_and_merged_raw_rows_and_counts_them(any_db):
    db = str(any_db)
    _fill(db)
    _send_one(db, "late", "l")  # a second raw row
    first = mona("prune", "--older-than", "30d", "--db", db).stdout
    assert "deleted 0 merged raw row(s) and 1 ARC(s)" in first  # old-run; the raw rows are recent
    assert sorted(_arcs(db)) == sorted(["new-run", "ctx\udcfe", "late"])
    time.sleep(1.2)
    second = mona("prune", "--older-than", "1s", "--db", db).stdout
    deleted = int(re.search(r"deleted (\d+) merged raw row", second).group(1))
    # SQLite keeps its newest raw row (a new row's id follows it); PostgreSQL's ids never go back.
    assert deleted == (1 if isinstance(any_db, Path) else 2) and "and 3 ARC(s)" in second
    assert _arcs(db) == {}
    _send_one(db, "after-prune", "a")  # what arrives after a prune is merged
    assert list(_arcs(db)) == ["after-prune"]
