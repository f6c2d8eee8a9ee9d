"""Delivery guarantees end to end: mona_client -> a real `mona collect` process -> ARC documents.

At-least-once on the wire, exactly-once in the ARCs: whatever fails in between (the collector absent,
or killed with SIGKILL and restarted), every accepted export is merged once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

from mona_client import client
from tests.support.collector import run_mona
from tests.support.receiver import free_port, wait_until

ARC_CLASS = "DELIVERY"


class CollectorProcess:
    """`mona collect` in a process of its own, on a fixed port and database."""

    def __init__(self, port: int, db: str) -> None:
        self.port = port
        self.db = db
        self.process = None

    def start(self) -> CollectorProcess:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mona_collector.cli",
                "collect",
                "--port",
                str(self.port),
                "--db",
                self.db,
                "--quiet",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        import socket

        def listening():
            if self.process.poll() is not None:
                raise AssertionError(f"mona collect exited: {self.process.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        assert wait_until(listening, timeout=20), "the collector did not start listening"
        return self

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(30) == 0


def arcs(db):
    out = run_mona("arcs", "export", "--format", "jsonl", "--db", db, timeout=120).stdout
    return {doc["context_id"]: doc for doc in map(json.loads, out.splitlines())}


def export_arcs(n_arcs, keys_per_arc, prefix, progress=None):
    """n_arcs ARCs, each exporting keys k0..k{keys_per_arc-1} one record at a time."""
    for a in range(n_arcs):
        with client.new_mona_context(arc_class=ARC_CLASS, context_id=f"{prefix}{a}"):
            for k in range(keys_per_arc):
                assert client.export({f"k{k}": a * keys_per_arc + k})
        if progress is not None:
            progress(a)


def check_exactly_once(docs, n_arcs, keys_per_arc, prefix):
    assert len(docs) == n_arcs
    for a in range(n_arcs):
        doc = docs[f"{prefix}{a}"]
        assert doc["arc_class"] == ARC_CLASS
        assert doc["export_count"] == keys_per_arc + 1  # + the MONA_ARC_CLASS record
        assert doc["fields"] == {f"k{k}": a * keys_per_arc + k for k in range(keys_per_arc)}


def test_collector_absent_for_the_whole_run_then_started(tmp_path):
    port, db = free_port(), str(tmp_path / "arcs.db")
    client.init_client(port=port, spool_dir=str(tmp_path / "spool"), print_logs=False, user_id="d")
    collector = CollectorProcess(port, db)
    try:
        export_arcs(200, 100, "absent-")  # 20,000 exports with nobody listening
        assert client.flush(0.2) is False
        collector.start()
        assert client.flush(120)
        stats = client.stats()
        assert stats["dropped"] == 0
        collector.stop()
        check_exactly_once(arcs(db), 200, 100, "absent-")
    finally:
        client.close(1)
        collector.stop()


def test_collector_sigkilled_mid_run_and_restarted(tmp_path):
    port, db = free_port(), str(tmp_path / "arcs.db")
    client.init_client(port=port, spool_dir=str(tmp_path / "spool"), print_logs=False, user_id="d")
    collector = CollectorProcess(port, db).start()
    halfway = threading.Event()
    failure = []

    def exporter():
        try:
            export_arcs(1000, 100, "killed-", progress=lambda a: a == 400 and halfway.set())
        except BaseException as exc:  # reported by the test
            failure.append(exc)
            halfway.set()

    thread = threading.Thread(target=exporter)
    thread.start()
    try:
        assert halfway.wait(120)
        acked_before_kill = client.stats()["acked"]
        collector.kill()  # no chance to finish anything: acked data must already be on disk
        time.sleep(0.5)
        collector.start()
        thread.join(300)
        assert not failure
        assert client.flush(180)
        assert client.stats()["dropped"] == 0
        collector.stop()
        docs = arcs(db)
        check_exactly_once(docs, 1000, 100, "killed-")
        print(f"acked before SIGKILL: {acked_before_kill}; after: {client.stats()}")
    finally:
        client.close(1)
        thread.join(10)
        collector.stop()
