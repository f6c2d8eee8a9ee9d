"""Contexts opened while the config file has the client off, and the client turned on before they end.

Such a block pushes its context without registering it anywhere; the exports its contexts owe their
ARCs (arc class, globals) are made by the first export, sub-context or exit in it once the client is
on. These tests flip ``disable_all`` in a real config file and read what a real Forward receiver got.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from mona_client import client
from tests.support.receiver import ForwardReceiver, wait_until


def _switch(on: bool) -> None:
    config = client._runtime.settings.config_file
    Path(config).write_text(json.dumps({"disable_all": not on}))
    assert wait_until(lambda: client.is_active() == on, timeout=5)


def _records(receiver: ForwardReceiver, count: int) -> List[Tuple[str, List[Tuple[str, Any]]]]:
    assert client.flush(10)
    records: List[Dict[str, Any]] = receiver.wait_records(count)
    time.sleep(0.2)  # nothing more comes
    assert len(receiver.records) == count, receiver.records
    return sorted((r["context"], sorted(r["message"].items())) for r in records)


def test_a_block_turned_on_while_open_owes_its_arc_class_even_when_it_exports_nothing(mona):
    _switch(False)
    with client.new_mona_context(arc_class="QUIET", context_id="quiet"):
        with client.new_mona_sub_context(arc_class="QUIET_STEP", sub_context_id="s"):
            _switch(True)
    assert client.get_full_context_id() == ""
    assert _records(mona, 2) == [
        ("quiet", [("MONA_ARC_CLASS", "QUIET")]),
        ("quiet.s", [("MONA_ARC_CLASS", "QUIET_STEP")]),
    ]


def test_a_block_opened_and_left_while_off_owes_nothing_when_the_client_comes_back(mona):
    _switch(False)
    with client.new_mona_context(arc_class="GONE", context_id="gone"):
        assert client.export({"x": 1}) is False
    _switch(True)
    with client.new_mona_context(context_id="later"):
        assert client.export({"kept": True})
    assert _records(mona, 1) == [("later", [("kept", True)])]


def test_export_batch_in_a_block_turned_on_while_open_lands_in_its_arc(mona):
    _switch(False)
    with client.new_mona_context(arc_class="BATCHED", context_id="batched"):
        _switch(True)
        assert client.export_batch([{"message": {"a": 1}}, {"message": {"b": 2}}])
    assert _records(mona, 3) == [
        ("batched", [("MONA_ARC_CLASS", "BATCHED")]),
        ("batched", [("a", 1)]),
        ("batched", [("b", 2)]),
    ]


def test_threads_carrying_the_same_context_make_its_owed_exports_once(mona):
    """A stack opened while off, carried by copies of the context into eight threads that all export
    at once when the client comes back: the arc class is exported once, every export lands."""
    import contextvars

    _switch(False)
    start = threading.Barrier(8)
    results: List[bool] = []

    def work() -> None:
        start.wait()
        results.append(client.export({"n": 1}))

    with client.new_mona_context(arc_class="SHARED", context_id="shared"):
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(work,)) for _ in range(8)]
        _switch(True)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == [True] * 8
    records = _records(mona, 9)
    assert records.count(("shared", [("MONA_ARC_CLASS", "SHARED")])) == 1
    assert records.count(("shared", [("n", 1)])) == 8


def test_close_sub_context_keeps_what_the_parent_opened_while_off_owes(mona):
    _switch(False)
    assert client.init(arc_class="ROOT", context_id="r") == ""
    assert client.init_sub_context(arc_class="STEP", sub_context_id="s") == ""
    assert client.close_sub_context() == ""
    _switch(True)
    assert client.get_full_context_id() == "r"
    assert client.export({"after": 1})
    client.reset()
    assert _records(mona, 2) == [("r", [("MONA_ARC_CLASS", "ROOT")]), ("r", [("after", 1)])]
