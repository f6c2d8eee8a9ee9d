"""The sender's batching and spill policy on its own: no socket, no thread, a real spool on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional

import pytest

from mona_client.batching import MAX_REFUSALS, Batcher, Chunk
from mona_client.export import encode_entry
from mona_client.sender_options import SenderOptions
from mona_client.spool import DEAD_LETTER_DIR, Spool


def entry(i: int, pad: int = 0) -> bytes:
    return encode_entry(1_700_000_000, "u", "ctx", {"i": i, "pad": "x" * pad}, f"batching:{i}")


class Wakes:
    """Counts the slow puts the batcher reports (the worker would wake its thread there)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def batcher(spool: Optional[Spool] = None, **options: Any) -> Batcher:
    return Batcher(SenderOptions(**options), spool, Wakes())


def wakes(b: Batcher) -> int:
    hook = b._after_slow_put
    assert isinstance(hook, Wakes)
    return hook.count


def spool_at(tmp_path: Path) -> Spool:
    return Spool(str(tmp_path / "spool"), 1 << 30)


def chunk_indexes(chunk: Chunk, entries: List[bytes]) -> List[int]:
    """Which of ``entries`` the chunk holds, in order (entries are unique byte strings)."""
    found, rest = [], chunk.entries
    while rest:
        index = next(i for i, e in enumerate(entries) if rest.startswith(e))
        found.append(index)
        rest = rest[len(entries[index]) :]
    return found


def test_every_put_reports_itself_until_the_fast_path_opens_then_once_per_chunk():
    b = batcher(chunk_records=10)
    for i in range(3):
        assert b.put(entry(i))
    assert wakes(b) == 3  # nothing runs yet: each put must say so
    b.open_fast_path()
    for i in range(3, 10):
        assert b.put(entry(i))
    assert wakes(b) == 3  # below a chunk's worth: the append alone
    assert b.put(entry(10))
    assert wakes(b) == 4  # a chunk's worth queued: the worker is woken
    assert len(b.queue) == 11 and b.queued_bytes == sum(len(entry(i)) for i in range(11))
    b.close_fast_path()
    b.put(entry(11))
    assert wakes(b) == 5


def cut(b: Batcher, entries: List[bytes]) -> List[List[int]]:
    chunks = []
    while (chunk := b.take_from_queue()) is not None:
        assert chunk.count == len(chunk_indexes(chunk, entries))
        chunks.append(chunk_indexes(chunk, entries))
    assert b.queued_bytes == 0 and not b.queue
    return chunks


def test_chunks_hold_chunk_records_entries_and_more_when_the_queue_is_long():
    entries = [entry(i) for i in range(10)]
    b = batcher(chunk_records=4, max_inflight=10)
    for e in entries:
        b.put(e)
    assert cut(b, entries) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    many = [entry(i) for i in range(100)]
    b = batcher(chunk_records=4, max_inflight=4)
    for e in many:
        b.put(e)
    first = b.take_from_queue()
    assert first is not None and first.count == 25  # a quarter of the queue: the window's worth


def test_chunks_stay_below_chunk_bytes_and_a_bigger_record_travels_alone():
    entries = [entry(i, pad=100) for i in range(7)] + [entry(7, pad=5000)] + [entry(8, pad=100)]
    b = batcher(chunk_records=100, chunk_bytes=3 * len(entries[0]) + 10)
    for e in entries:
        b.put(e)
    assert cut(b, entries) == [[0, 1, 2], [3, 4, 5], [6], [7], [8]]


def test_a_full_queue_without_spool_drops_and_counts(caplog):
    b = batcher(max_queue=5)
    results = [b.put(entry(i)) for i in range(8)]
    assert results == [True] * 5 + [False] * 3
    assert b.dropped_records == 3
    assert "queue is full" in caplog.text


def test_a_full_queue_by_bytes_drops_what_would_pass_the_bound():
    one = len(entry(0, pad=1000))
    b = batcher(max_queue_bytes=3 * one + 1)
    results = [b.put(entry(i, pad=1000)) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert b.queued_bytes <= 3 * one + 1


def test_a_full_queue_with_a_spool_moves_its_oldest_chunk_there_instead_of_dropping(tmp_path):
    spool = spool_at(tmp_path)
    b = batcher(spool, max_queue=10, chunk_records=4)
    assert all(b.put(entry(i)) for i in range(25))
    assert b.dropped_records == 0
    assert len(b.queue) + spool.pending_records() == 25
    # Replayed oldest first, before anything newer still queued.
    replayed = b.next_to_send()
    assert replayed is not None and replayed.spooled is not None
    assert replayed.entries.startswith(entry(0))


def test_past_half_the_queue_the_excess_goes_to_the_spool(tmp_path):
    spool = spool_at(tmp_path)
    b = batcher(spool, max_queue=100, chunk_records=10)
    for i in range(80):
        b.put(entry(i))
    assert b.lagging()
    b.spill_excess()
    # Whole chunks go, so a little more than the excess may.
    assert 40 <= len(b.queue) <= 50 and len(b.queue) + spool.pending_records() == 80
    assert not b.lagging()
    # What stays queued is the newest.
    assert list(b.queue) == [entry(i) for i in range(80 - len(b.queue), 80)]


def test_the_window_takes_resends_then_the_spool_then_the_queue(tmp_path):
    spool = spool_at(tmp_path)
    spool.write(entry(100), 1)
    b = batcher(spool, max_inflight=3)
    b.put(entry(0))
    b.retry.append(Chunk(entry(200), 1))
    first, second, third = b.next_to_send(), b.next_to_send(), b.next_to_send()
    assert first is not None and first.entries == entry(200)
    assert second is not None and second.spooled is not None and second.entries == entry(100)
    assert third is not None and third.entries == entry(0)
    assert b.next_to_send() is None and len(b.inflight) == 3  # the window is full


def test_acks_empty_the_window_in_any_order_and_done_spool_files_go(tmp_path):
    spool = spool_at(tmp_path)
    spool.write(entry(1), 1)
    b = batcher(spool)
    b.put(entry(2))
    replayed, queued = b.next_to_send(), b.next_to_send()
    assert replayed is not None and queued is not None
    replayed.chunk_id, queued.chunk_id = "a", "b"
    assert b.ack("b") and b.ack("a")
    assert not b.ack("unknown")
    assert not b.inflight and b.acked_records == 2
    assert spool.pending_records() == 0 and not b.has_work()


def refuse(b: Batcher, times: int) -> Optional[Chunk]:
    """The peer closes the connection ``times`` times on the oldest chunk in flight."""
    held = None
    for _ in range(times):
        if not b.inflight:
            assert b.next_to_send() is not None
        held = b.note_refusal()
        b.requeue_inflight()
    return held


def test_a_refused_chunk_travels_alone_then_waits_aside_and_is_set_aside_when_another_is_acked(tmp_path):
    spool = spool_at(tmp_path)
    b = batcher(spool, chunk_records=1)
    b.put(entry(0, pad=50))
    b.put(entry(1))
    assert refuse(b, 1) is None
    lone = b.next_to_send()
    assert lone is not None and lone.refusals == 1
    assert b.next_to_send() is None  # a chunk refused once goes alone
    b.requeue_inflight()
    held = refuse(b, MAX_REFUSALS - 1)
    assert held is not None and held.refusals == MAX_REFUSALS
    b.hold_suspect(held)
    assert b.suspect is held and b.in_memory() == 2
    other = b.next_to_send()
    assert other is not None and other.entries == entry(1)
    other.chunk_id = "ok"
    assert b.ack("ok")  # the peer takes another chunk: the refused one is at fault
    assert b.suspect is None and b.dead_lettered_records == 1
    assert len(os.listdir(tmp_path / "spool" / DEAD_LETTER_DIR)) == 1
    assert not b.has_work()


def test_a_second_chunk_refused_as_often_clears_both_counts_the_peer_is_to_blame():
    b = batcher(chunk_records=1)
    b.put(entry(0))
    b.put(entry(1))
    first = refuse(b, MAX_REFUSALS)
    assert first is not None
    b.hold_suspect(first)
    second = refuse(b, MAX_REFUSALS)
    assert second is not None
    b.hold_suspect(second)
    assert b.suspect is None and b.dead_lettered_records == 0
    assert [c.entries for c in b.retry] == [entry(0), entry(1)]
    assert all(c.refusals == 0 for c in b.retry)


def test_spilling_everything_moves_resends_the_suspect_and_the_queue_and_gives_back_claimed_files(tmp_path):
    spool = spool_at(tmp_path)
    spool.write(entry(0), 1)
    b = batcher(spool, chunk_records=1)
    for i in range(1, 4):
        b.put(entry(i))
    claimed = b.next_to_send()
    assert claimed is not None and claimed.spooled is not None
    b.requeue_inflight()
    b.suspect = Chunk(entry(9), 1)
    b.spill(everything=True)
    assert b.in_memory() == 0 and b.queued_bytes == 0
    assert spool.pending_records() == 5  # the file given back, the suspect and three queued records


def test_while_connected_resends_stay_in_memory_and_refused_ones_always_do(tmp_path):
    spool = spool_at(tmp_path)
    b = batcher(spool)
    b.retry.append(Chunk(entry(0), 1))
    b.spill(connected=True)
    assert len(b.retry) == 1 and spool.pending_records() == 0
    refused = Chunk(entry(1), 1)
    refused.refusals = 1
    b.retry.append(refused)
    b.spill()
    assert list(b.retry) == [refused]  # its count of refusals must not be lost
    assert spool.pending_records() == 1


@pytest.mark.parametrize("require_ack, inflight", [(True, 4), (False, 1)])
def test_without_acks_one_chunk_at_a_time(require_ack, inflight):
    b = batcher(require_ack=require_ack)
    for i in range(10_000):
        b.put(entry(i))
    taken = [b.next_to_send() for _ in range(6)]
    assert sum(c is not None for c in taken) == inflight
