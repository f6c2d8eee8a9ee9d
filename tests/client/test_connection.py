"""The sender's wire code driven step by step, with no thread of its own: a real receiver, a real
collector (with and without the shared key), real sockets."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from mona_client.config import Settings
from mona_client.connection import ForwardConnection, HandshakeError, is_refusal
from mona_client.export import encode_entry
from mona_client.sender_options import SenderOptions
from mona_collector import Collector
from tests.support.receiver import ForwardReceiver, free_port

KEY = "a shared key"


def entries(count: int, context: str = "ctx") -> bytes:
    return b"".join(encode_entry(1_700_000_000, "u", context, {"i": i}, f"conn:{context}:{i}") for i in range(count))


def acks(connection: ForwardConnection, wanted: int, timeout: float = 10.0) -> List[str]:
    deadline = time.monotonic() + timeout
    got: List[str] = []
    while len(got) < wanted:
        got.extend(connection.receive_acks(deadline))
    return got


@pytest.fixture
def keyed_collector(tmp_path: Path) -> Iterator[Collector]:
    with Collector(
        port=0, db_path=tmp_path / "arcs.db", shared_key=KEY, stall_timeout=5.0, synchronous="NORMAL"
    ) as running:
        yield running


def test_chunks_go_out_as_packed_forward_and_their_acks_come_back(receiver):
    connection = ForwardConnection.open(SenderOptions(port=receiver.port))
    try:
        first = connection.send_chunk(entries(3), 3)
        second = connection.send_chunk(entries(2, "other"), 2)
        assert first and second and first != second
        assert acks(connection, 2) == [first, second]
    finally:
        connection.close()
    assert [b.chunk for b in receiver.batches] == [first, second]
    assert {b.mode for b in receiver.batches} == {"packed_forward"}
    assert [b.option["size"] for b in receiver.batches] == [3, 2]
    assert [r["message"]["i"] for r in receiver.records] == [0, 1, 2, 0, 1]


def test_without_acks_a_chunk_carries_no_id(receiver):
    connection = ForwardConnection.open(SenderOptions(port=receiver.port, require_ack=False))
    try:
        assert connection.send_chunk(entries(2), 2) == ""
        assert receiver.wait_for(lambda r: len(r.records) == 2)
    finally:
        connection.close()
    assert receiver.batches[0].chunk is None


def test_an_ack_that_does_not_come_times_out_with_calls_between_slices():
    calls: List[float] = []
    with ForwardReceiver(ack=False) as silent:
        connection = ForwardConnection.open(SenderOptions(port=silent.port, ack_timeout=0.3))
        try:
            connection.send_chunk(entries(1), 1)
            with pytest.raises(TimeoutError, match=r"no ack within 0\.3s"):
                list(connection.receive_acks(time.monotonic() + 0.3, lambda: calls.append(time.monotonic())))
        finally:
            connection.close()
    assert len(calls) >= 3  # the I/O came back every few milliseconds while it waited


def test_between_slices_can_give_up_a_send_to_a_peer_that_does_not_read():
    class GiveUpError(Exception):
        pass

    def give_up() -> None:
        raise GiveUpError()

    with ForwardReceiver(read=False) as stuck:
        connection = ForwardConnection.open(SenderOptions(port=stuck.port, send_timeout=30))
        try:
            started = time.monotonic()
            with pytest.raises(GiveUpError):
                connection.send_chunk(b"".join([entries(1)] * 200_000), 200_000, give_up)  # far above the buffers
            assert time.monotonic() - started < 20  # not the 30 s send timeout: given up at once
        finally:
            connection.close()


def test_a_peer_that_closes_the_connection_is_a_refusal():
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        connection = ForwardConnection.open(SenderOptions(port=listener.getsockname()[1]))
        accepted, _ = listener.accept()
        accepted.close()
        connection.send_chunk(entries(1), 1)
        with pytest.raises(OSError) as failure:
            list(connection.receive_acks(time.monotonic() + 5))
        connection.close()
    finally:
        listener.close()
    assert is_refusal(failure.value)
    assert not is_refusal(TimeoutError()) and not is_refusal(HandshakeError())


def test_nobody_listening_raises_at_open():
    with pytest.raises(OSError) as failure:
        ForwardConnection.open(SenderOptions(port=free_port(), connect_timeout=2))
    assert not is_refusal(failure.value)


def test_the_shared_key_handshake_with_the_collector(keyed_collector):
    connection = ForwardConnection.open(SenderOptions(port=keyed_collector.port, shared_key=KEY, connect_timeout=5))
    try:
        chunk_id = connection.send_chunk(entries(4, "keyed"), 4)
        assert acks(connection, 1) == [chunk_id]
    finally:
        connection.close()


def test_a_wrong_shared_key_fails_the_handshake(keyed_collector):
    with pytest.raises(HandshakeError, match="refused the shared key"):
        ForwardConnection.open(SenderOptions(port=keyed_collector.port, shared_key="not it", connect_timeout=5))


def test_a_server_that_wants_the_shared_key_says_so_where_acks_are_read(keyed_collector):
    connection = ForwardConnection.open(SenderOptions(port=keyed_collector.port))
    try:
        connection.send_chunk(entries(1), 1)
        with pytest.raises(HandshakeError, match="MONA_SHARED_KEY"):
            acks(connection, 1)
    finally:
        connection.close()


def test_the_options_come_from_the_settings_and_keep_secrets_out_of_repr(tmp_path):
    settings = Settings(
        host="example.invalid",
        port=24225,
        blocking=True,
        max_chunk_bytes=4096,
        max_queue_bytes=0,
        shared_key="secret-key",
        tls=True,
        tls_verify=False,
    )
    options = SenderOptions.from_settings(settings)
    assert (options.host, options.port, options.blocking, options.chunk_bytes) == ("example.invalid", 24225, True, 4096)
    assert options.max_queue_bytes == 1  # brought back into range
    assert options.shared_key == "secret-key" and "secret-key" not in repr(options)
    assert options.ssl_context is not None and options.ssl_context.check_hostname is False
    assert SenderOptions.from_settings(Settings()).ssl_context is None
    plain: Any = SenderOptions(require_ack=False, max_inflight=8, password="pw")
    assert plain.max_inflight == 1 and "pw" not in repr(plain)
