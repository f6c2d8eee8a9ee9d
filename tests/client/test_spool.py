"""The disk spool: absent and stuck forwarders, exits and SIGTERM, replay by the next process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mona_client import client
from mona_client.export import encode_entry
from mona_client.spool import Spool
from mona_client.transport import Sender, SenderOptions
from tests.support.receiver import ForwardReceiver, free_port, wait_until


def indexes(receiver):
    return [r["message"]["i"] for r in receiver.records]


def start_client(port, spool_dir, **kwargs):
    client.init_client(port=port, spool_dir=str(spool_dir), print_logs=False, user_id="spool", **kwargs)


def test_absent_forwarder_for_the_whole_run_then_all_arrive_once(tmp_path):
    port = free_port()
    start_client(port, tmp_path)
    try:
        with client.new_mona_context(context_id="absent"):
            accepted = [client.export({"i": i}) for i in range(20_000)]
        assert all(accepted)
        assert wait_until(lambda: client.stats()["spooled"] == 20_000, timeout=20)
        assert client.stats()["queued"] == 0  # memory stays small while the peer is away
        with ForwardReceiver(port=port) as receiver:
            assert client.flush(60)
            got = indexes(receiver)
        assert sorted(set(got)) == list(range(20_000))
        assert len(got) == 20_000  # nothing sent twice when nothing was lost on the way
        assert client.stats()["replayed"] == 20_000
    finally:
        client.close(1)
    assert Spool(os.path.join(str(tmp_path), f"127.0.0.1-{port}"), 1 << 30).pending_records() == 0


def test_stuck_forwarder_spools_without_blocking_the_caller(tmp_path):
    with ForwardReceiver(read=False) as stuck:
        port = stuck.port
        spool = Spool(str(tmp_path), 1 << 30)
        sender = Sender(SenderOptions(port=port, send_timeout=1, ack_timeout=1, max_backoff=0.2), spool=spool)
        payload = "x" * 1000
        for i in range(30_000):  # ~30 MB: far beyond what socket buffers take
            assert sender.put(encode_entry(1, "u", "c", {"i": i, "pad": payload}, f"s:{i}"))
        assert sender.stats()["dropped"] == 0
        assert wait_until(lambda: sender.stats()["spooled"] > 0, timeout=20)
    sender.close(0)  # the stuck peer is gone: what is left goes to the spool
    with ForwardReceiver(port=port) as good:
        replayer = Sender(SenderOptions(port=port), spool=Spool(str(tmp_path), 1 << 30))
        assert replayer.flush(60)
        assert set(indexes(good)) >= set(range(30_000)) - set(indexes(stuck))
        replayer.close(1)


def run_child(script, port, spool_dir, **env):
    environment = dict(
        os.environ,
        MONA_PORT=str(port),
        MONA_SPOOL_DIR=str(spool_dir),
        MONA_PRINT_LOGS="false",
        MONA_FLUSH_TIMEOUT="0.5",
    )
    environment.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=environment, timeout=60)


def test_exit_with_the_forwarder_down_spools_and_the_next_process_delivers(tmp_path):
    port = free_port()
    exporter = """
        from mona_client import client
        with client.new_mona_context(context_id="exit"):
            for i in range(5000):
                assert client.export({"i": i})
    """
    assert run_child(exporter, port, tmp_path).returncode == 0
    with ForwardReceiver(port=port) as receiver:
        deliverer = """
            from mona_client import client
            assert client.flush(30)
        """
        assert run_child(deliverer, port, tmp_path, MONA_FLUSH_TIMEOUT="30").returncode == 0
        assert sorted(indexes(receiver)) == list(range(5000))


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="POSIX signals")
def test_sigterm_while_exporting_spools_and_the_next_process_delivers(tmp_path):
    port = free_port()
    script = textwrap.dedent(
        """
        import sys
        from mona_client import client
        with client.new_mona_context(context_id="killed"):
            i = 0
            while True:
                assert client.export({"i": i})
                i += 1
                if i == 20_000:
                    print("ready", flush=True)
        """
    )
    env = dict(os.environ, MONA_PORT=str(port), MONA_SPOOL_DIR=str(tmp_path), MONA_PRINT_LOGS="false")
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == -signal.SIGTERM  # it still dies by SIGTERM, as without mona-client
    finally:
        child.kill()
    with ForwardReceiver(port=port) as receiver:
        deliverer = "from mona_client import client\nassert client.flush(30)\n"
        assert run_child(deliverer, port, tmp_path, MONA_FLUSH_TIMEOUT="30").returncode == 0
        got = sorted(set(indexes(receiver)))
    assert len(got) >= 20_000
    assert got == list(range(len(got)))  # every accepted record up to the kill, none missing


def test_a_full_spool_drops_and_counts(tmp_path, caplog):
    spool = Spool(str(tmp_path), max_bytes=200_000)  # room for one chunk of 1000, not two
    sender = Sender(SenderOptions(port=free_port(), max_backoff=5), spool=spool)
    for i in range(2000):
        sender.put(encode_entry(1, "u", "c", {"i": i, "pad": "y" * 100}, f"s:{i}"))
    sender.close(0.2)
    stats = sender.stats()
    assert stats["spooled"] > 0 and stats["dropped"] > 0
    assert stats["spooled"] + stats["dropped"] == 2000
    assert spool.size_bytes() <= 200_000
    assert "spool" in caplog.text and "full" in caplog.text


def test_claims_of_a_dead_process_are_taken_back(tmp_path):
    spool = Spool(str(tmp_path), 1 << 20)
    assert spool.write(encode_entry(1, "u", "c", {"i": 0}, "s:0"), 1)
    (name,) = os.listdir(tmp_path)
    # As if a process that no longer exists had claimed it and died.
    os.rename(tmp_path / name, tmp_path / f"{name}.999999999-deadbeef.claimed")
    other = Spool(str(tmp_path), 1 << 20)
    chunk = other.claim_next()  # takes the orphan back, then claims it
    assert chunk is not None and chunk.count == 1
    other.done(chunk)
    assert os.listdir(tmp_path) == []


def test_a_caller_far_faster_than_the_forwarder_loses_nothing(tmp_path):
    with ForwardReceiver(ack_delay=0.05) as slow:  # at most a few chunks a second
        sender = Sender(SenderOptions(port=slow.port, max_queue=50_000), spool=Spool(str(tmp_path), 1 << 30))
        # Four times the queue, encoded and queued as fast as one thread can.
        accepted = [sender.put(encode_entry(1, "u", "c", {"i": i}, f"s:{i}")) for i in range(200_000)]
        assert all(accepted)
        assert sender.stats()["dropped"] == 0
        assert sender.stats()["spooled"] > 0
        assert sender.flush(120)
        assert set(indexes(slow)) == set(range(200_000))
        sender.close(1)
