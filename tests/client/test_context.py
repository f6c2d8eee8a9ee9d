"""Context semantics: ids, nesting, restoring the stack, and the non-``with`` API."""

from __future__ import annotations

import logging

import pytest

from mona_client import client
from mona_client.record import ARC_CLASS_KEY, GLOBALS_KEY


def contexts_of(records, key=None):
    return [r["context"] for r in records if key is None or key in r["message"]]


def test_readme_snippet_exports_into_root_and_sub_context(mona):
    with client.new_mona_context(arc_class="MY_COOL_ALGORITHM_NAME") as root_id:
        client.export({"foo": "bar"})
        with client.new_mona_sub_context(arc_class="MY_COOL_SUB_COMPONENT_NAME") as sub_id:
            client.export({"score": 0.93, "segment": "eu"})
    assert client.flush(10)
    records = mona.wait_records(4)
    assert sub_id.startswith(root_id + ".") and sub_id.count(".") == 1
    assert [(r["context"], r["message"]) for r in records] == [
        (root_id, {ARC_CLASS_KEY: "MY_COOL_ALGORITHM_NAME"}),
        (root_id, {"foo": "bar"}),
        (sub_id, {ARC_CLASS_KEY: "MY_COOL_SUB_COMPONENT_NAME"}),
        (sub_id, {"score": 0.93, "segment": "eu"}),
    ]
    assert {r["user_id"] for r in records} == {"tester"}
    assert all(type(r["export_timestamp"]) is int for r in records)


def test_fresh_ids_are_unique_and_the_stack_is_restored(mona):
    seen = set()
    for _ in range(1000):
        with client.new_mona_context() as cid:
            seen.add(cid)
    assert len(seen) == 1000
    assert client.get_full_context_id() == ""


def test_legacy_ARC_class_keyword_is_an_alias(mona):
    with client.new_mona_context(ARC_class="LEGACY") as cid:
        with client.new_mona_sub_context(ARC_class="LEGACY_SUB") as sub:
            pass
    client.flush(10)
    records = mona.wait_records(2)
    assert [(r["context"], r["message"][ARC_CLASS_KEY]) for r in records] == [
        (cid, "LEGACY"),
        (sub, "LEGACY_SUB"),
    ]


def test_given_ids_join_with_dots_and_repeat_freely(mona):
    with client.new_mona_context(context_id="run") as root:
        with client.new_mona_sub_context(sub_context_id="a") as a:
            with client.new_mona_sub_context(sub_context_id="a") as aa:
                assert client.get_full_context_id() == "run.a.a"
            assert client.get_full_context_id() == "run.a"
        with client.new_mona_sub_context(sub_context_id="a") as a_again:
            pass
    assert (root, a, aa, a_again) == ("run", "run.a", "run.a.a", "run.a")
    assert client.get_full_context_id() == ""


def test_continuing_an_existing_arc_by_full_dotted_id(mona):
    with client.new_mona_context(context_id="request-17.ranker") as cid:
        client.export({"ground_truth": 1})
        with client.new_mona_sub_context(sub_context_id="late") as sub:
            pass
    client.flush(10)
    records = mona.wait_records(1)
    assert cid == "request-17.ranker" and sub == "request-17.ranker.late"
    assert records[0]["context"] == "request-17.ranker"


def test_exceptions_inside_blocks_restore_the_stack_exactly(mona):
    with client.new_mona_context(context_id="outer"):
        for depth in range(1, 6):
            with pytest.raises(ZeroDivisionError), client.new_mona_sub_context(sub_context_id="x"):
                with client.new_mona_sub_context(sub_context_id="y"):
                    if depth > 2:
                        with client.new_mona_context(context_id="inner"):
                            1 / 0
                    1 / 0
            assert client.get_full_context_id() == "outer"
    assert client.get_full_context_id() == ""


def test_root_inside_root_is_independent_and_restores_the_outer(mona):
    with client.new_mona_context(context_id="outer"), client.new_mona_sub_context(sub_context_id="s"):
        with client.new_mona_context(context_id="inner") as inner:
            assert inner == "inner"
            client.export({"k": 1})
        assert client.get_full_context_id() == "outer.s"
    client.flush(10)
    assert [r["context"] for r in mona.wait_records(1)] == ["inner"]


def test_the_same_block_object_can_be_entered_twice(mona):
    block = client.new_mona_sub_context(sub_context_id="again")
    with client.new_mona_context(context_id="r"):
        with block:
            with block:
                assert client.get_full_context_id() == "r.again.again"
            assert client.get_full_context_id() == "r.again"
        assert client.get_full_context_id() == "r"


def test_sub_context_outside_any_context_is_an_error_line_not_a_crash(mona, caplog):
    with caplog.at_level(logging.ERROR, logger="mona-logger"):
        with client.new_mona_sub_context(arc_class="ORPHAN") as sub:
            assert sub == ""
            assert client.get_full_context_id() == ""
    assert "outside any mona context" in caplog.text


def test_sub_context_outside_any_context_raises_when_asked(mona):
    client.init_client(port=mona.port, should_raise_exceptions=True, print_logs=False)
    with pytest.raises(client.MonaExportException), client.new_mona_sub_context():
        pass


def test_non_with_api(mona, caplog):
    root = client.init(arc_class="HANDLER")
    assert client.get_full_context_id() == root
    sub = client.init_sub_context(arc_class="STEP", sub_context_id="step")
    assert sub == f"{root}.step" == client.get_full_context_id()
    client.export({"in_step": True})
    assert client.close_sub_context() == root
    client.export({"in_root": True})
    with caplog.at_level(logging.ERROR, logger="mona-logger"):
        assert client.close_sub_context() == root  # nothing to close at the root
    assert "no sub-context open" in caplog.text
    client.reset()
    assert client.get_full_context_id() == ""
    client.flush(10)
    records = mona.wait_records(4)
    assert [(r["context"], r["message"]) for r in records] == [
        (root, {ARC_CLASS_KEY: "HANDLER"}),
        (sub, {ARC_CLASS_KEY: "STEP"}),
        (sub, {"in_step": True}),
        (root, {"in_root": True}),
    ]


def test_global_init_message_goes_with_each_new_root_only(mona):
    assert client.set_global_init_message({"model_version": "v7", "region": "eu"})
    with client.new_mona_context(arc_class="A") as first, client.new_mona_sub_context(arc_class="B"):
        pass
    with client.new_mona_context() as second:
        pass
    client.set_global_init_message(None)
    with client.new_mona_context() as third:
        client.export({"x": 1})
    client.flush(10)
    records = mona.wait_records(4)
    with_globals = [(r["context"], r["message"][GLOBALS_KEY]) for r in records if GLOBALS_KEY in r["message"]]
    assert with_globals == [
        (first, {"model_version": "v7", "region": "eu"}),
        (second, {"model_version": "v7", "region": "eu"}),
    ]
    first_record = next(r for r in records if r["context"] == first)
    assert first_record["message"][ARC_CLASS_KEY] == "A"
    assert third not in contexts_of(records, GLOBALS_KEY)


def test_context_export_timestamp_dates_the_context_exports(mona):
    with client.new_mona_context(arc_class="A", export_timestamp=1_700_000_000.9):
        pass
    client.flush(10)
    (record,) = mona.wait_records(1)
    assert record["export_timestamp"] == 1_700_000_000


def test_one_block_object_shared_by_threads_restores_each_threads_stack(mona):
    import threading

    shared = client.new_mona_sub_context(sub_context_id="shared")
    inside = threading.Barrier(2)
    results = {}

    def work(name):
        with client.new_mona_context(context_id=name):
            with shared:
                inside.wait()  # both threads are in the shared block at once
                if name == "second":
                    inside.wait()  # the first leaves first
            results[name] = client.get_full_context_id()
            if name == "first":
                inside.wait()

    threads = [threading.Thread(target=work, args=(n,)) for n in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {"first": "first", "second": "second"}


# --- the global init message is checked when set -------------------------------------------


def test_a_global_init_message_that_export_refuses_is_refused_when_set(mona, caplog):
    assert client.set_global_init_message({"model": "v1"}) is True
    with caplog.at_level(logging.ERROR, logger="mona-logger"):
        assert client.set_global_init_message({"config": object()}) is False
        assert client.set_global_init_message({"nested": {(1, 2): "tuple key"}}) is False
    lines = [r.getMessage() for r in caplog.records if r.name == "mona-logger" and r.levelno >= logging.ERROR]
    assert len(lines) == 2 and all("set_global_init_message() refused" in line for line in lines)
    assert "JSON-able" in lines[0] and "keys of nested maps" in lines[1]
    # The refused messages changed nothing: ARCs keep their class and the last good globals.
    with client.new_mona_context(arc_class="A") as cid:
        pass
    client.set_global_init_message(None)
    client.flush(10)
    (record,) = mona.wait_records(1)
    assert (record["context"], record["message"]) == (cid, {ARC_CLASS_KEY: "A", GLOBALS_KEY: {"model": "v1"}})


def test_a_refused_global_init_message_raises_when_raising_is_on(mona):
    client.init_client(port=mona.port, should_raise_exceptions=True, print_logs=False)
    with pytest.raises(client.MonaExportException, match="JSON-able"):
        client.set_global_init_message({"config": object()})


# --- the depth of nested contexts -----------------------------------------------------------


def test_sub_contexts_deeper_than_the_limit_run_in_the_deepest_allowed(mona, caplog, monkeypatch):
    monkeypatch.setenv("MONA_MAX_CONTEXT_DEPTH", "3")
    client.init_client(port=mona.port, user_id="tester", print_logs=False)
    with caplog.at_level(logging.ERROR, logger="mona-logger"), client.new_mona_context(context_id="r"):
        with client.new_mona_sub_context(sub_context_id="a"):
            with client.new_mona_sub_context(arc_class="B", sub_context_id="b") as b:
                assert b == "r.a.b"
                with client.new_mona_sub_context(arc_class="C", sub_context_id="c") as c:
                    assert c == b == client.get_full_context_id()
                    assert client.export({"deep": 1})
                    with client.new_mona_sub_context(sub_context_id="d") as d:
                        assert d == b
                        assert client.export({"deeper": 2})
                assert client.get_full_context_id() == b
                assert client.export({"back": 3})
            assert client.get_full_context_id() == "r.a"
    lines = [r.getMessage() for r in caplog.records if r.name == "mona-logger" and r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "MONA_MAX_CONTEXT_DEPTH = 3" in lines[0]
    client.flush(10)
    records = mona.wait_records(4)
    assert [(r["context"], r["message"]) for r in records] == [
        ("r.a.b", {ARC_CLASS_KEY: "B"}),
        ("r.a.b", {"deep": 1}),
        ("r.a.b", {"deeper": 2}),
        ("r.a.b", {"back": 3}),
    ]


def test_the_default_depth_limit_is_64_ids_and_dotted_ids_count(mona, caplog):
    import contextlib

    assert client._runtime.settings.max_context_depth == 64
    with caplog.at_level(logging.ERROR, logger="mona-logger"):
        with client.new_mona_context(context_id="root.continued"), contextlib.ExitStack() as blocks:
            for level in range(100):
                blocks.enter_context(client.new_mona_sub_context(sub_context_id=str(level)))
            deepest = client.get_full_context_id()
            client.export({"at": "bottom"})
    assert deepest.count(".") + 1 == 64 and deepest.startswith("root.continued.0.1.")
    assert sum("MONA_MAX_CONTEXT_DEPTH = 64" in r.getMessage() for r in caplog.records) == 1
    client.flush(10)
    assert [r["context"] for r in mona.wait_records(1)] == [deepest]


def test_a_too_deep_sub_context_raises_when_raising_is_on(mona, monkeypatch):
    monkeypatch.setenv("MONA_MAX_CONTEXT_DEPTH", "2")
    client.init_client(port=mona.port, should_raise_exceptions=True, print_logs=False)
    too_deep = client.new_mona_sub_context(sub_context_id="b")
    with client.new_mona_context(context_id="r"):
        with client.new_mona_sub_context(sub_context_id="a"):
            with pytest.raises(client.MonaExportException, match="MONA_MAX_CONTEXT_DEPTH = 2"), too_deep:
                pass
            assert client.get_full_context_id() == "r.a"
            assert too_deep._entries == []  # no entry left behind by an __enter__ that raised
        # The refused block object kept nothing: used at an allowed depth, it pushes and pops as usual.
        with too_deep as b:
            assert b == client.get_full_context_id() == "r.b"
        assert client.get_full_context_id() == "r"
