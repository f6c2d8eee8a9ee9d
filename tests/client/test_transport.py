"""The sender against a real receiver: batching, acks, resends, reconnects, stuck and absent peers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from mona_client import client
from mona_client.export import encode_entry
from mona_client.transport import Sender, SenderOptions
from tests.support.receiver import ForwardReceiver, free_port, wait_until


def entries(count, start=0):
    return [encode_entry(1_700_000_000, "u", "ctx", {"i": i}, f"src:{i}") for i in range(start, start + count)]


def indexes(receiver):
    return [r["message"]["i"] for r in receiver.records]


def test_records_travel_as_packed_forward_chunks_with_acks(receiver):
    sender = Sender(SenderOptions(port=receiver.port, chunk_records=1000))
    for entry in entries(2500):
        assert sender.put(entry)
    assert sender.flush(10)
    assert indexes(receiver) == list(range(2500))
    assert {b.mode for b in receiver.batches} == {"packed_forward"}
    assert all(len(b.events) <= 1000 and b.option["size"] == len(b.events) for b in receiver.batches)
    assert len({b.chunk for b in receiver.batches}) == len(receiver.batches)
    assert sender.stats()["acked"] == 2500
    assert all(type(e.seconds) is int for e in receiver.events)
    sender.close(1)


def test_an_absent_forwarder_keeps_records_until_it_comes(tmp_path):
    port = free_port()
    sender = Sender(SenderOptions(port=port, max_backoff=0.2))
    for entry in entries(3000):
        assert sender.put(entry)  # returns at once: nothing listens yet
    assert sender.flush(0.5) is False
    assert sender.pending() == 3000
    with ForwardReceiver(port=port) as receiver:
        assert sender.flush(15)
        assert sorted(indexes(receiver)) == list(range(3000))
    sender.close(1)


def test_a_lost_ack_makes_the_chunk_go_again(receiver):
    receiver.drop_acks = 1
    sender = Sender(SenderOptions(port=receiver.port, ack_timeout=0.3, max_backoff=0.2))
    for entry in entries(10):
        sender.put(entry)
    assert sender.flush(15)
    # Delivered twice (at least once), with the same record ids the collector dedupes on.
    got = receiver.records
    assert len(got) == 20
    assert sorted({r["record_id"] for r in got}) == sorted(f"src:{i}" for i in range(10))
    assert sender.stats()["resent_chunks"] >= 1
    sender.close(1)


def test_a_restarted_forwarder_gets_everything(tmp_path):
    port = free_port()
    first = ForwardReceiver(port=port)
    sender = Sender(SenderOptions(port=port, max_backoff=0.2, ack_timeout=1))
    for entry in entries(500):
        sender.put(entry)
    assert sender.flush(10)
    first.close()
    for entry in entries(500, start=500):
        sender.put(entry)
    with ForwardReceiver(port=port) as second:
        assert sender.flush(15)
        got = set(indexes(first)) | set(indexes(second))
    assert got == set(range(1000))
    assert sender.stats()["connections"] >= 2
    sender.close(1)


def test_a_stuck_forwarder_never_blocks_the_caller():
    with ForwardReceiver(read=False) as stuck:
        sender = Sender(SenderOptions(port=stuck.port, max_queue=20_000, ack_timeout=30))
        big = [encode_entry(1, "u", "c", {"pad": "x" * 2000, "i": i}, f"s:{i}") for i in range(40_000)]
        accepted = [sender.put(entry) for entry in big]  # would hang here if put() waited on the socket
        assert accepted.count(True) >= 20_000
        assert sender.stats()["dropped"] == accepted.count(False) > 0
        assert wait_until(lambda: stuck.connections == 1)
        sender._closing = True  # the test ends here; don't wait 30 s for acks on close


def test_a_full_queue_drops_and_counts(caplog):
    sender = Sender(SenderOptions(port=free_port(), max_queue=100, max_backoff=5))
    with caplog.at_level(logging.WARNING, logger="mona-logger"):
        results = [sender.put(entry) for entry in entries(150)]
    assert results.count(True) >= 100
    assert sender.stats()["dropped"] == results.count(False) >= 1
    assert "queue is full" in caplog.text


def test_blocking_mode_delivers_before_put_returns(receiver):
    sender = Sender(SenderOptions(port=receiver.port, blocking=True))
    for entry in entries(3):
        sender.put(entry)
        assert len(receiver.records) == sender.stats()["acked"]
    assert indexes(receiver) == [0, 1, 2]
    assert sender.stats()["acked"] == 3


def test_without_acks_chunks_carry_no_chunk_id(receiver):
    sender = Sender(SenderOptions(port=receiver.port, require_ack=False))
    for entry in entries(5):
        sender.put(entry)
    assert sender.flush(10)
    assert receiver.wait_for(lambda r: len(r.records) == 5)
    assert all(b.chunk is None for b in receiver.batches)


def test_many_threads_export_concurrently(mona):
    def work(n):
        with client.new_mona_context(context_id=f"t{n}"):
            for i in range(2000):
                client.export({"i": i})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.flush(30)
    records = mona.wait_records(8 * 2000)
    assert len(records) == 16_000
    for n in range(8):
        assert [r["message"]["i"] for r in records if r["context"] == f"t{n}"] == list(range(2000))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_gets_its_own_working_sender(mona):
    with client.new_mona_context(context_id="parent"):
        client.export({"who": "parent-before"})
        client.flush(10)
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                client.export({"who": "child"})
                code = 0 if client.flush(10) else 2
            finally:
                os._exit(code)
        client.export({"who": "parent-after"})
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.flush(10)
    records = mona.wait_records(3)
    assert sorted(r["message"]["who"] for r in records) == ["child", "parent-after", "parent-before"]
    assert len({r["record_id"] for r in records}) == 3
    assert len({r["record_id"].split(":")[0] for r in records}) == 2


def test_interpreter_exit_flushes_what_was_queued(receiver, tmp_path):
    script = textwrap.dedent(
        """
        from mona_client import client
        with client.new_mona_context(arc_class="EXIT"):
            for i in range(5000):
                client.export({"i": i})
        # no flush(): leaving the interpreter must deliver
        """
    )
    env = dict(os.environ, MONA_PORT=str(receiver.port), MONA_PRINT_LOGS="false")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    assert len(receiver.records) == 5001
