"""Delivery under hostile conditions: chunks the peer refuses, bounded flushes, unusable spools,
multiprocessing children, forks and signals amid locks, memory bounded in bytes, TLS shutdown.

Every peer is real: the embedded collector (8 MiB frame cap), tests/receiver.py, a TLS server on a
real socket; children are real processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import psutil
import pytest

from mona_client import client
from mona_client.export import EntryEncoder
from mona_client.spool import DEAD_LETTER_DIR, Spool
from mona_client.transport import MAX_REFUSALS, Sender, SenderOptions
from mona_collector import Collector
from mona_collector.forward_codec import iter_entries
from tests.support.collector import stored_arcs
from tests.support.receiver import ForwardReceiver, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
MB = 1_000_000


# Records above the default MONA_MAX_RECORD_BYTES: what a user who raised it, or an older version's
# spool, hands the sender.
_BIG_RECORDS = EntryEncoder("u", max_record_bytes=64 * MB)


def entry(i: int, pad: int = 0, context: str = "ctx") -> bytes:
    return _BIG_RECORDS.encode(1_700_000_000, context, {"i": i, "pad": "x" * pad}, f"faults:{context}:{i}")


def fields(db: Path, context: str) -> Dict[str, Any]:
    (arc,) = stored_arcs(db, context)
    return arc["fields"]


@pytest.fixture
def collector(tmp_path: Path):
    """The real collector, with its default 8 MiB frame cap."""
    with Collector(
        port=0, db_path=tmp_path / "arcs.db", stall_timeout=5.0, synchronous="NORMAL", udp_heartbeat=False
    ) as running:
        yield running


def run_script(tmp_path: Path, script: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Run ``script`` from a file (multiprocessing's forkserver needs an importable main module)."""
    path = tmp_path / f"script_{os.urandom(4).hex()}.py"
    path.write_text(textwrap.dedent(script))
    environment = dict(os.environ, PYTHONPATH=str(ROOT), MONA_PRINT_LOGS="true")
    environment.update(env)
    return subprocess.run([sys.executable, str(path)], env=environment, capture_output=True, text=True, timeout=timeout)


# --- chunks the peer cannot take ------------------------------------------------------------------


def test_a_big_record_is_never_packed_with_others_beyond_the_chunk_cap(collector, tmp_path):
    # 1 MB and 7.5 MB together make a frame above the collector's 8 MiB cap: each must go alone.
    sender = Sender(SenderOptions(port=collector.port, max_backoff=0.2), spool=Spool(str(tmp_path / "spool"), 1 << 30))
    sender.put(entry(0, pad=MB - 100))
    sender.put(entry(1, pad=7_500_000))
    for i in range(2, 12):
        sender.put(entry(i))
    try:
        assert sender.flush(60), sender.stats()
        assert sender.stats()["dead_lettered"] == 0
    finally:
        sender.close(1)
    assert sorted(fields(collector.db_path, "ctx")) == ["i", "pad"]
    assert fields(collector.db_path, "ctx")["i"] == 11


def test_a_chunk_the_peer_keeps_refusing_is_set_aside_and_the_rest_flows(collector, tmp_path):
    spool_dir = tmp_path / "spool"
    sender = Sender(SenderOptions(port=collector.port, max_backoff=0.2), spool=Spool(str(spool_dir), 1 << 30))
    sender.put(entry(0, context="before"))
    sender.put(entry(1, pad=10 * MB, context="huge"))  # alone above the collector's cap
    for i in range(2, 100):
        sender.put(entry(i, context="after"))
    try:
        assert sender.flush(60), sender.stats()
        stats = sender.stats()
    finally:
        sender.close(1)
    assert stats["dead_lettered"] == 1
    assert stats["acked"] == 99
    assert fields(collector.db_path, "before")["i"] == 0
    assert fields(collector.db_path, "after")["i"] == 99
    assert stored_arcs(collector.db_path, "huge") == []
    (kept,) = os.listdir(spool_dir / DEAD_LETTER_DIR)
    (event,) = iter_entries((spool_dir / DEAD_LETTER_DIR / kept).read_bytes(), 1 << 30)
    assert event.record["message"]["i"] == 1  # set aside whole, for someone to look at


def test_a_spooled_file_the_peer_keeps_refusing_is_set_aside_by_the_next_process(collector, tmp_path, caplog):
    # An earlier process left an oversized chunk in the spool, and newer files behind it.
    spool_dir = tmp_path / "spool"
    earlier = Spool(str(spool_dir), 1 << 30)
    assert earlier.write(entry(0, pad=7_000_000, context="big") + entry(1, pad=2_000_000, context="big"), 2)
    assert earlier.write(b"".join(entry(i, context="later") for i in range(50)), 50)
    sender = Sender(SenderOptions(port=collector.port, max_backoff=0.2), spool=Spool(str(spool_dir), 1 << 30))
    try:
        assert sender.flush(60), sender.stats()
        stats = sender.stats()
    finally:
        sender.close(1)
    assert stats["dead_lettered"] == 2 and stats["replayed"] == 50
    assert fields(collector.db_path, "later")["i"] == 49
    assert len(os.listdir(spool_dir / DEAD_LETTER_DIR)) == 1
    assert [n for n in os.listdir(spool_dir) if n != DEAD_LETTER_DIR] == []
    lines = [r for r in caplog.records if "closed the connection" in r.getMessage()]
    assert len(lines) == 1 and str(MAX_REFUSALS) in lines[0].getMessage()


def test_a_peer_that_closes_on_every_chunk_gets_nothing_set_aside(tmp_path):
    # As a collector wanting a client certificate does: every chunk is refused, none is at fault.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    closes = [0]
    stopping = threading.Event()

    def refuse_everything() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(5)
            try:
                conn.recv(65536)
            except OSError:
                pass
            conn.close()
            closes[0] += 1

    server = threading.Thread(target=refuse_everything, daemon=True)
    server.start()
    spool = Spool(str(tmp_path), 1 << 30)
    sender = Sender(SenderOptions(port=listener.getsockname()[1], max_backoff=0.05, chunk_bytes=2000), spool=spool)
    try:
        for i in range(30):  # several chunks
            sender.put(entry(i, pad=500))
        assert wait_until(lambda: closes[0] >= 5 * MAX_REFUSALS, timeout=60)
        assert sender.stats()["dead_lettered"] == 0
        assert sender.flush(0.2) is False
    finally:
        sender.close(0.2)
        stopping.set()
        server.join(5)
        listener.close()
    assert not os.path.exists(tmp_path / DEAD_LETTER_DIR)
    assert spool.pending_records() == 30  # all kept for a later try


def test_the_chunk_cap_is_a_setting(monkeypatch):
    from mona_client.config import settings_from_env

    assert settings_from_env({}).max_chunk_bytes == 2**20
    assert settings_from_env({"MONA_MAX_CHUNK_BYTES": "256KiB"}).max_chunk_bytes == 256 * 1024
    assert settings_from_env({"MONA_MAX_QUEUE_BYTES": "8MiB"}).max_queue_bytes == 8 * 2**20


def test_the_client_sends_chunks_no_bigger_than_max_chunk_bytes(receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("MONA_MAX_CHUNK_BYTES", "64KiB")
    client.init_client(port=receiver.port, print_logs=False, spool_dir=str(tmp_path))
    try:
        with client.new_mona_context(context_id="capped"):
            for i in range(400):
                assert client.export({"i": i, "pad": "y" * 1000})
        assert client.flush(30)
    finally:
        client.close(1)
    sizes = [len(b"".join(_entries_of(frame))) for frame in receiver.raw_frames]
    assert len(sizes) > 5 and max(sizes) <= 64 * 1024


def _entries_of(frame: List[Any]) -> List[bytes]:
    value = frame[1]
    return [value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")]


# --- bounded flush and close ----------------------------------------------------------------------


def test_flush_and_close_without_arguments_end_within_the_flush_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("MONA_FLUSH_TIMEOUT", "0.5")
    port = free_port()  # nobody listens
    client.init_client(port=port, print_logs=False, spool_dir=str(tmp_path))
    results: Dict[str, bool] = {}

    def flush_then_close() -> None:
        with client.new_mona_context(context_id="nobody"):
            for i in range(100):
                client.export({"i": i})
        results["flush"] = client.flush()
        results["close"] = client.close()

    worker = threading.Thread(target=flush_then_close, daemon=True)
    worker.start()
    worker.join(60)  # a generous wait: without a bound both calls wait for ever
    assert not worker.is_alive(), "flush() or close() without a timeout did not return"
    assert results == {"flush": False, "close": False}
    # Nothing lost: all 100 records wait in the spool for the next process.
    assert Spool(str(tmp_path / f"127.0.0.1-{port}"), 1 << 30).pending_records() == 100


def test_the_exit_flush_honours_the_flush_timeout_when_the_peer_never_acks(tmp_path):
    with ForwardReceiver(ack=False) as silent:
        script = """
            import sys, time
            from mona_client import client
            with client.new_mona_context(context_id="silent"):
                for i in range(100):
                    client.export({"i": i})
            sys.stdout.write(f"{time.monotonic()}\\n")
        """
        started = time.monotonic()
        done = run_script(
            tmp_path,
            script,
            MONA_PORT=str(silent.port),
            MONA_FLUSH_TIMEOUT="0.5",
            MONA_SPOOL_DIR=str(tmp_path / "spool"),
            MONA_PRINT_LOGS="false",
        )
        ended = time.monotonic()
        assert done.returncode == 0, done.stderr
        assert silent.wait_for(lambda r: len(r.records) == 100)
    # The peer never acks: without the bound the exit waits out the 10 s ack timeout. Generous margin.
    exit_seconds = ended - float(done.stdout.strip())
    assert ended - started > exit_seconds > 0
    assert exit_seconds < 8, f"interpreter exit took {exit_seconds:.1f}s with MONA_FLUSH_TIMEOUT=0.5"
    spool = Spool(str(tmp_path / "spool" / f"127.0.0.1-{silent.port}"), 1 << 30)
    assert spool.pending_records() == 100  # unacked, so kept for the next process


# --- an unusable spool directory ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["/dev/null", "under-a-file"])
def test_an_unusable_spool_dir_gives_one_line_and_the_client_runs_without_it(tmp_path, where):
    if where == "under-a-file":
        (tmp_path / "a-file").write_text("not a directory")
        where = str(tmp_path / "a-file" / "spool")
    with ForwardReceiver() as receiver:
        script = """
            from mona_client import client
            with client.new_mona_context(context_id="nospool"):
                for i in range(1000):
                    assert client.export({"i": i})
            assert client.flush(30) is True
            print(client.stats()["acked"])
        """
        done = run_script(tmp_path, script, MONA_PORT=str(receiver.port), MONA_SPOOL_DIR=where)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["1000"]
        assert len(receiver.records) == 1000
    assert "Traceback" not in done.stderr
    spool_lines = [line for line in done.stderr.splitlines() if "spool" in line]
    assert len(spool_lines) == 1 and "running without a spool" in spool_lines[0]


def test_without_a_usable_spool_and_without_a_peer_flush_returns_false(tmp_path):
    script = """
        from mona_client import client
        with client.new_mona_context(context_id="nospool"):
            assert client.export({"i": 1})
        assert client.flush(0.5) is False
        assert client.flush() is False
    """
    done = run_script(
        tmp_path, script, MONA_PORT=str(free_port()), MONA_SPOOL_DIR="/dev/null", MONA_FLUSH_TIMEOUT="0.3"
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot write: read-only permissions, or for root (who writes
    everywhere) a read-only tmpfs mounted on it."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:
        yield locked
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(
            f"root writes everywhere, and a read-only tmpfs cannot be mounted: {mounted.stderr.decode().strip()}"
        )
    try:
        yield locked
    finally:
        subprocess.run(["umount", str(locked)], capture_output=True)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_an_unwritable_spool_dir_gives_one_line(tmp_path, unwritable_dir):
    locked = unwritable_dir
    with ForwardReceiver() as receiver:
        script = """
            from mona_client import client
            with client.new_mona_context(context_id="nospool"):
                assert client.export({"i": 1})
            assert client.flush(30)
        """
        done = run_script(tmp_path, script, MONA_PORT=str(receiver.port), MONA_SPOOL_DIR=str(locked))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert sum("running without a spool" in line for line in done.stderr.splitlines()) == 1


# --- multiprocessing children ---------------------------------------------------------------------

MULTIPROCESSING_SCRIPT = """
    import multiprocessing, sys
    from mona_client import client

    def work(name):
        with client.new_mona_context(context_id=name):
            for i in range(100):
                client.export({"i": i})
        return name

    if __name__ == "__main__":
        context = multiprocessing.get_context(sys.argv[1] if len(sys.argv) > 1 else "fork")
        client.init_client()
        with client.new_mona_context(context_id="parent"):
            client.export({"i": 0})
        processes = [context.Process(target=work, args=(f"process-{n}",)) for n in range(3)]
        for p in processes:
            p.start()
        for p in processes:
            p.join(60)
            assert p.exitcode == 0
        pool = context.Pool(2)
        assert pool.map(work, [f"pool-{n}" for n in range(6)]) == [f"pool-{n}" for n in range(6)]
        pool.close()
        pool.join()
        with context.Pool(2) as pool:  # leaving the block terminates the workers (SIGTERM)
            assert pool.map(work, [f"terminated-{n}" for n in range(4)]) == [f"terminated-{n}" for n in range(4)]
        assert client.flush(60)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork and forkserver are POSIX only")
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_exports_of_multiprocessing_children_are_delivered(tmp_path, method):
    with ForwardReceiver() as receiver:
        script = MULTIPROCESSING_SCRIPT.replace('sys.argv[1] if len(sys.argv) > 1 else "fork"', repr(method))
        done = run_script(
            tmp_path,
            script,
            timeout=180,
            MONA_PORT=str(receiver.port),
            MONA_SPOOL_DIR=str(tmp_path / "spool"),
            MONA_FLUSH_TIMEOUT="10",
        )
        assert done.returncode == 0, done.stderr
        names = [f"process-{n}" for n in range(3)] + [f"pool-{n}" for n in range(6)]
        names += [f"terminated-{n}" for n in range(4)]
        receiver.wait_for(lambda r: len({(x["context"], x["message"]["i"]) for x in r.records}) == 1 + 100 * len(names))
        got = {(x["context"], x["message"]["i"]) for x in receiver.records}
    for name in names:
        assert {i for c, i in got if c == name} == set(range(100)), name


# --- locks across fork and signals ----------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_children_forked_while_another_thread_logs_do_not_deadlock(tmp_path):
    with ForwardReceiver() as receiver:
        script = """
            import logging, os, sys, threading, time
            from mona_client import client
            from mona_client.logs import rate_limited, logger

            client.init_client(print_logs=False)
            stop = threading.Event()

            def log_all_the_time():
                n = 0
                while not stop.is_set():
                    client.export({"outside": "any context"})  # refused: a rate-limited line
                    rate_limited.log(logging.INFO, f"busy-{n % 50}", "busy")
                    n += 1

            busy = [threading.Thread(target=log_all_the_time) for _ in range(2)]
            for t in busy:
                t.start()
            children = []
            for n in range(30):
                time.sleep(0.003)
                pid = os.fork()
                if pid == 0:
                    seen = []
                    class Keep(logging.Handler):
                        def emit(self, record):
                            seen.append(record.getMessage())
                    logger.addHandler(Keep())
                    logger.setLevel(logging.INFO)
                    code = 3
                    try:
                        with client.new_mona_context(context_id=f"child-{n}"):
                            client.export({"i": n})
                        rate_limited.log(logging.WARNING, f"child-line-{n}", "child line %d", n)
                        code = 0 if client.flush(20) and f"child line {n}" in seen else 2
                    finally:
                        os._exit(code)
                children.append(pid)
            stop.set()
            for t in busy:
                t.join()
            codes = []
            deadline = time.monotonic() + 60
            for pid in children:
                while True:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes.append(os.waitstatus_to_exitcode(status))
                        break
                    if time.monotonic() > deadline:
                        os.kill(pid, 9)
                        os.waitpid(pid, 0)
                        codes.append("hung")
                        break
                    time.sleep(0.01)
            print(codes)
            sys.exit(0 if codes == [0] * 30 else 1)
        """
        done = run_script(
            tmp_path, script, timeout=120, MONA_PORT=str(receiver.port), MONA_SPOOL_DIR=str(tmp_path / "spool")
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert receiver.wait_for(lambda r: {x["context"] for x in r.records} >= {f"child-{n}" for n in range(30)})


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX interval timers")
def test_an_export_from_a_signal_handler_while_the_main_thread_logs_does_not_deadlock(tmp_path):
    with ForwardReceiver() as receiver:
        script = """
            import signal, sys, time
            from mona_client import client

            client.init_client(print_logs=False)
            handled = [0]

            def on_alarm(signum, frame):
                handled[0] += 1
                client.export({"outside": "any context"})  # takes the rate-limited log's lock
                with client.new_mona_context(context_id="signal"):
                    client.export({"n": handled[0]})

            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline or handled[0] < 200:
                client.export({"outside": "any context"})  # the main thread in the same lock
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            assert client.flush(30)
            print(handled[0])
        """
        done = run_script(
            tmp_path, script, timeout=60, MONA_PORT=str(receiver.port), MONA_SPOOL_DIR=str(tmp_path / "spool")
        )
        assert done.returncode == 0, done.stderr
        assert int(done.stdout) >= 200
        assert receiver.wait_for(lambda r: sum(x["context"] == "signal" for x in r.records) >= 2 * 200)


# --- memory bounded in bytes ----------------------------------------------------------------------


def test_a_slow_peer_keeps_queued_bytes_bounded_and_loses_nothing(tmp_path):
    bound = 8 * 2**20
    with ForwardReceiver(ack_delay=0.3) as slow:  # a few chunks a second
        sender = Sender(SenderOptions(port=slow.port, max_queue_bytes=bound), spool=Spool(str(tmp_path), 1 << 31))
        process = psutil.Process()
        rss_before = process.memory_info().rss
        peak_queued = 0
        peak_rss = rss_before
        for i in range(5000):  # 100 MB of 20 KB records, far beyond what the slow peer takes meanwhile
            assert sender.put(_BIG_RECORDS.encode(1, "slow", {"i": i, "pad": "z" * 20_000}, f"s:{i}"))
            if i % 50 == 0:
                peak_queued = max(peak_queued, sender.stats()["queued_bytes"])
                peak_rss = max(peak_rss, process.memory_info().rss)
        stats = sender.stats()
        assert stats["dropped"] == 0
        assert stats["spooled"] > 0
        assert peak_queued <= bound
        # Without a byte bound the whole 100 MB sat in memory.
        assert peak_rss - rss_before < 60 * MB, f"RSS grew by {(peak_rss - rss_before) / MB:.0f} MB"
        slow.ack_delay = 0.0  # the peer speeds up
        assert sender.flush(120)
        assert {r["message"]["i"] for r in slow.records} == set(range(5000))
        sender.close(1)


def test_without_a_spool_records_beyond_the_byte_bound_are_dropped_and_counted():
    sender = Sender(SenderOptions(port=free_port(), max_queue_bytes=2 * 2**20, max_backoff=5))
    results = [sender.put(entry(i, pad=20_000)) for i in range(500)]  # 10 MB, nobody listens
    assert results.count(True) <= 2 * 2**20 // 20_000 + 2
    assert sender.stats()["dropped"] == results.count(False) > 0
    assert sender.stats()["queued_bytes"] <= 2 * 2**20 + 21_000
    sender.close(0.1)


# --- TLS shutdown ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_cert(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        cwd=d,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return d


def test_the_client_ends_tls_connections_with_a_close_notify(server_cert):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert / "cert.pem", server_cert / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    outcome: List[str] = []

    def serve() -> None:
        from mona_client.forward import FrameDecoder
        from mona_collector.forward_codec import pack_ack, parse_event_batch

        raw, _ = listener.accept()
        # Without suppress_ragged_eofs a TCP close without close_notify raises SSLEOFError.
        conn = context.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)
        conn.settimeout(30)
        decoder = FrameDecoder()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    outcome.append("close_notify")
                    return
                for obj in decoder.feed(data):
                    conn.sendall(pack_ack(parse_event_batch(obj).chunk))
        except ssl.SSLEOFError:
            outcome.append("closed without close_notify")
        except OSError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    from mona_client.transport import client_ssl_context

    sender = Sender(SenderOptions(port=port, ssl_context=client_ssl_context(str(server_cert / "cert.pem"))))
    try:
        sender.put(entry(0))
        assert sender.flush(20)
        assert sender.close(5)
        server.join(30)
        assert outcome == ["close_notify"]
    finally:
        listener.close()
