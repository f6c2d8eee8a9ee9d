"""Where contexts go across threads, executor workers and asyncio tasks.

Everything here runs on real threads, real asyncio tasks and a real Forward receiver on loopback:
the tests look at the full context id each record arrived with.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from mona_client import client
from mona_client import context as ctx
from mona_client.logs import rate_limited
from mona_client.mona_thread import MonaThread as LegacyMonaThread
from mona_client.threads import (
    MonaThread,
    MonaThreadPoolExecutor,
    carry_context,
    in_new_mona_context,
)

REPO = Path(__file__).resolve().parents[2]
JOIN = 10.0

pytestmark = pytest.mark.timeout(30)


# --- helpers ---------------------------------------------------------------------------------------


def delivered(receiver: Any, count: int) -> List[Dict[str, Any]]:
    """Flush the client and return the user records (no MONA_* keys) once ``count`` of them arrived."""
    assert client.flush(10), client.stats()
    receiver.wait_for(lambda r: len(user_records(r)) >= count, 10)
    return user_records(receiver)


def user_records(receiver: Any) -> List[Dict[str, Any]]:
    return [r for r in receiver.records if not any(k.startswith("MONA_") for k in r["message"])]


def arc_classes(receiver: Any) -> Dict[str, str]:
    """Full context id -> the MONA_ARC_CLASS exported for it."""
    return {r["context"]: r["message"]["MONA_ARC_CLASS"] for r in receiver.records if "MONA_ARC_CLASS" in r["message"]}


def contexts_of(records: List[Dict[str, Any]], key: str) -> Dict[Any, str]:
    """message[key] -> the context that record landed in (each value must be unique)."""
    out: Dict[Any, str] = {}
    for r in records:
        if key in r["message"]:
            value = r["message"][key]
            assert value not in out, f"{key}={value!r} delivered twice"
            out[value] = r["context"]
    return out


def run_thread(target: Any, cls: type = threading.Thread) -> None:
    """Start ``target`` on a thread of ``cls`` and join it; re-raise what it raised."""
    errors: List[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    t = cls(target=guarded)
    t.start()
    t.join(JOIN)
    assert not t.is_alive(), "thread did not finish"
    if errors:
        raise errors[0]


@pytest.fixture(autouse=True)
def _client(mona: Any) -> Any:
    """Every test runs with the client started against a real receiver (and no context open)."""
    assert client.get_full_context_id() == ""
    return mona


@pytest.fixture
def refusals(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """caplog for mona-logger errors, with the rate limit off so that every refusal is logged."""
    monkeypatch.setattr(rate_limited, "interval", 0.0)
    caplog.set_level(logging.INFO, logger="mona-logger")
    return caplog


def error_lines(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mona-logger" and r.levelno >= logging.ERROR]


# --- plain threads ---------------------------------------------------------------------------------


def test_a_plain_thread_starts_with_no_context_and_its_exports_are_refused(mona, refusals):
    seen: Dict[str, Any] = {}

    def body() -> None:
        seen["id"] = client.get_full_context_id()
        seen["stack"] = ctx.current_stack()
        seen["export"] = client.export({"plain_thread": 1})

    with client.new_mona_context(arc_class="outer") as cid:
        assert cid
        run_thread(body)
        # The refused export in the thread did not disturb this one.
        assert client.export({"plain_thread": 2})

    assert seen == {"id": "", "stack": (), "export": False}
    lines = error_lines(refusals)
    assert any("outside any mona context" in line for line in lines), lines
    records = delivered(mona, 1)
    assert contexts_of(records, "plain_thread") == {2: cid}


def test_mona_thread_exports_land_in_the_creators_arc(mona):
    seen: Dict[str, Any] = {}

    def body() -> None:
        seen["id"] = client.get_full_context_id()
        seen["export"] = client.export({"threaded": "yes"})

    with client.new_mona_context(arc_class="threaded_algorithm_name") as cid:
        run_thread(body, MonaThread)
        assert client.get_full_context_id() == cid

    assert seen == {"id": cid, "export": True}
    records = delivered(mona, 1)
    assert contexts_of(records, "threaded") == {"yes": cid}
    # The thread carries the ARC; it does not open a new one (one arc class record, the creator's).
    assert arc_classes(mona) == {cid: "threaded_algorithm_name"}


def test_the_legacy_import_path_is_the_same_class():
    assert LegacyMonaThread is MonaThread


def test_readme_snippet_prints_true(receiver, tmp_path):
    config = tmp_path / "mona_client_config.json"
    config.write_text('{"disable_all": false}')
    script = textwrap.dedent(
        """
        from mona_client import client
        from mona_client.mona_thread import MonaThread

        with client.new_mona_context(arc_class="threaded_algorithm_name"):
            main_context = client.get_full_context_id()
            MonaThread(target=lambda: print(client.get_full_context_id() == main_context)).start()
        """
    )
    env = dict(
        os.environ,
        MONA_PORT=str(receiver.port),
        MONA_CLIENT_CONFIG_FILE=str(config),
        MONA_PRINT_LOGS="false",
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=20
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True", (proc.stdout, proc.stderr)


def test_a_subclass_that_overrides_run_still_carries_the_context(mona):
    seen: Dict[str, Any] = {}

    class Worker(MonaThread):
        def run(self) -> None:
            seen["id"] = client.get_full_context_id()
            seen["export"] = client.export({"subclass_run": 1})

    with client.new_mona_context() as cid:
        worker = Worker()
    worker.start()
    worker.join(JOIN)

    assert seen == {"id": cid, "export": True}
    assert contexts_of(delivered(mona, 1), "subclass_run") == {1: cid}


def test_a_mona_thread_carries_the_stack_as_it_was_when_created():
    """Created inside the block, started after the block ended: the thread still runs in the ARC."""
    with client.new_mona_context("created") as cid:
        thread_ids: List[str] = []
        t = MonaThread(target=lambda: thread_ids.append(client.get_full_context_id()))
    assert client.get_full_context_id() == ""
    t.start()
    t.join(JOIN)
    assert thread_ids == [cid]


def test_sub_contexts_in_the_thread_and_the_parent_leaving_do_not_touch_each_other(mona):
    in_sub = threading.Event()
    parent_left = threading.Event()
    seen: Dict[str, Any] = {}

    def body() -> None:
        with client.new_mona_sub_context(arc_class="in_thread", sub_context_id="t") as sub:
            seen["sub"] = sub
            in_sub.set()
            assert parent_left.wait(JOIN)
            # The parent has left its ARC meanwhile: the thread's stack is untouched.
            seen["after_parent_left"] = client.get_full_context_id()
            seen["stack_depth"] = len(ctx.current_stack())
            client.export({"where": "thread-sub"})
        seen["after_sub"] = client.get_full_context_id()
        client.export({"where": "thread-root"})

    with client.new_mona_context(arc_class="parent") as cid:
        parent_stack = ctx.current_stack()
        t = MonaThread(target=body)
        t.start()
        assert in_sub.wait(JOIN)
        # The thread is inside its sub-context now: the parent does not see it.
        assert client.get_full_context_id() == cid
        assert ctx.current_stack() == parent_stack
        client.export({"where": "parent"})
    assert client.get_full_context_id() == ""
    parent_left.set()
    t.join(JOIN)
    assert not t.is_alive()

    assert seen == {
        "sub": f"{cid}.t",
        "after_parent_left": f"{cid}.t",
        "stack_depth": 2,
        "after_sub": cid,
    }
    assert contexts_of(delivered(mona, 3), "where") == {
        "parent": cid,
        "thread-sub": f"{cid}.t",
        "thread-root": cid,
    }
    assert arc_classes(mona) == {cid: "parent", f"{cid}.t": "in_thread"}


# --- executors ----------------------------------------------------------------------------------


def test_pool_submit_carries_the_submitters_context(mona):
    with MonaThreadPoolExecutor(max_workers=2) as pool:
        with client.new_mona_context(arc_class="pool_a") as a:
            fa = pool.submit(lambda n: (client.get_full_context_id(), client.export({"task": n})), "a")
        with client.new_mona_context(arc_class="pool_b") as b:
            # keyword arguments go through too
            fb = pool.submit(lambda *, n: (client.get_full_context_id(), client.export({"task": n})), n="b")
        assert fa.result(JOIN) == (a, True)
        assert fb.result(JOIN) == (b, True)
    assert contexts_of(delivered(mona, 2), "task") == {"a": a, "b": b}


def test_a_reused_worker_does_not_leak_a_context_from_one_task_to_the_next(mona):
    def task(label: str) -> Tuple[str, str, Optional[int]]:
        before = client.get_full_context_id()
        client.export({"leak_task": label}) if before else None
        # Leave a context open on purpose (the non-with API): the next task must not see it.
        client.init_sub_context(sub_context_id=f"left-open-{label}") if before else client.init("stray")
        return label, before, threading.get_ident()

    with MonaThreadPoolExecutor(max_workers=1) as pool:
        with client.new_mona_context(arc_class="first") as first:
            r1 = pool.submit(task, "first").result(JOIN)
        with client.new_mona_context(arc_class="second") as second:
            r2 = pool.submit(task, "second").result(JOIN)
        r3 = pool.submit(task, "outside").result(JOIN)
        r4 = pool.submit(task, "outside-again").result(JOIN)

    assert r1[1] == first
    assert r2[1] == second
    assert r3[1] == ""
    assert r4[1] == ""
    assert len({r1[2], r2[2], r3[2], r4[2]}) == 1, "the pool was meant to reuse its one worker"
    assert contexts_of(delivered(mona, 2), "leak_task") == {"first": first, "second": second}


def test_a_plain_thread_pool_does_not_carry_the_context():
    """The default, documented: concurrent.futures runs tasks in the worker's own (empty) context."""
    with ThreadPoolExecutor(max_workers=1) as pool, client.new_mona_context() as cid:
        assert cid
        assert pool.submit(client.get_full_context_id).result(JOIN) == ""


def test_pool_map_carries_the_context_to_every_item(mona):
    with MonaThreadPoolExecutor(max_workers=3) as pool, client.new_mona_context(arc_class="mapped") as cid:
        results = list(pool.map(lambda n: (client.get_full_context_id(), client.export({"item": n})), range(12)))
    assert results == [(cid, True)] * 12
    assert contexts_of(delivered(mona, 12), "item") == {n: cid for n in range(12)}


def test_run_in_executor_with_a_mona_pool_carries_the_tasks_context():
    async def main() -> Tuple[str, str]:
        loop = asyncio.get_running_loop()
        with MonaThreadPoolExecutor(max_workers=1) as pool, client.new_mona_context() as cid:
            return cid, await loop.run_in_executor(pool, client.get_full_context_id)

    cid, seen = asyncio.run(main())
    assert seen == cid != ""


# --- carry_context ------------------------------------------------------------------------------


def test_carry_context_runs_later_in_the_snapshot(mona):
    with client.new_mona_context(arc_class="carried") as cid:
        carried = carry_context(lambda tag: (client.get_full_context_id(), client.export({"carried": tag})))
        # A change after the snapshot is not part of it.
        with client.new_mona_sub_context(sub_context_id="later"):
            pass
    out: List[Any] = []
    run_thread(lambda: out.append(carried("from-thread")))
    out.append(carried("from-here"))  # outside any context here, still the snapshot
    assert out == [(cid, True), (cid, True)]
    assert client.get_full_context_id() == ""
    assert contexts_of(delivered(mona, 2), "carried") == {"from-thread": cid, "from-here": cid}


def test_carry_context_can_run_in_two_threads_at_once():
    barrier = threading.Barrier(2, timeout=JOIN)

    def inside(label: str) -> Tuple[str, str, str]:
        before = client.get_full_context_id()
        with client.new_mona_sub_context(sub_context_id=label) as sub:
            barrier.wait()  # both calls are inside the same snapshot now
            during = client.get_full_context_id()
            barrier.wait()
        return before, sub, during

    with client.new_mona_context() as cid:
        carried = carry_context(inside)

    results: Dict[str, Any] = {}
    threads = [
        threading.Thread(target=lambda label=label: results.__setitem__(label, carried(label))) for label in ("x", "y")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN)
    assert results == {
        "x": (cid, f"{cid}.x", f"{cid}.x"),
        "y": (cid, f"{cid}.y", f"{cid}.y"),
    }


# --- asyncio ------------------------------------------------------------------------------------


def test_a_task_starts_from_its_creators_stack_and_is_isolated_from_it_afterwards():
    async def child(started: asyncio.Event, go_on: asyncio.Event) -> Tuple[ctx.Stack, ctx.Stack]:
        first = ctx.current_stack()
        started.set()
        await go_on.wait()
        return first, ctx.current_stack()

    async def main() -> None:
        started, go_on = asyncio.Event(), asyncio.Event()
        with client.new_mona_context("creator") as cid:
            with client.new_mona_sub_context(sub_context_id="s"):
                creator_stack = ctx.current_stack()
                task = asyncio.create_task(child(started, go_on))
            await started.wait()
        # The creator has left both blocks; the task keeps the stack it started with.
        assert ctx.current_stack() == ()
        go_on.set()
        first, later = await task
        assert first == later == creator_stack
        assert [frame[0] for frame in first] == [cid, f"{cid}.s"]

    asyncio.run(main())


def test_sub_contexts_of_concurrent_tasks_never_see_each_other(mona):
    async def worker(n: int) -> None:
        with client.new_mona_sub_context(arc_class="task", sub_context_id=f"w{n}") as sub:
            for step in range(20):
                assert client.get_full_context_id() == sub
                client.export({"task_step": f"{n}-{step}"})
                await asyncio.sleep(0)
                with client.new_mona_sub_context(sub_context_id=f"s{step}") as inner:
                    await asyncio.sleep(0)
                    assert client.get_full_context_id() == inner == f"{sub}.s{step}"
                assert client.get_full_context_id() == sub

    async def main() -> str:
        with client.new_mona_context(arc_class="async_root") as cid:
            await asyncio.gather(*(worker(n) for n in range(4)))
            assert client.get_full_context_id() == cid
        return cid

    cid = asyncio.run(main())
    landed = contexts_of(delivered(mona, 80), "task_step")
    assert landed == {f"{n}-{s}": f"{cid}.w{n}" for n in range(4) for s in range(20)}


def test_the_decorator_on_async_def_gives_each_concurrent_call_its_own_arc(mona):
    @in_new_mona_context("async_decorated")
    async def handle(n: int) -> str:
        mine = client.get_full_context_id()
        for step in range(5):
            client.export({"call_step": f"{n}-{step}"})
            await asyncio.sleep(0)
            assert client.get_full_context_id() == mine
        return mine

    async def main() -> Tuple[str, List[str], str]:
        with client.new_mona_context("outer_async") as outer:
            ids = await asyncio.gather(*(handle(n) for n in range(3)))
            # Awaited directly in this task, it still restores the outer ARC afterwards.
            direct = await handle(3)
            assert client.get_full_context_id() == outer
        return outer, [*list(ids), direct], client.get_full_context_id()

    outer, ids, after = asyncio.run(main())
    assert after == ""
    assert handle.__name__ == "handle"
    assert asyncio.iscoroutinefunction(handle)
    assert len(set(ids)) == 4 and outer not in ids and "" not in ids
    assert all("." not in i for i in ids), "each call is a root ARC, not a sub-context"
    landed = contexts_of(delivered(mona, 20), "call_step")
    assert landed == {f"{n}-{s}": ids[n] for n in range(4) for s in range(5)}
    classes = arc_classes(mona)
    assert {i: classes.get(i) for i in ids} == {i: "async_decorated" for i in ids}


def test_the_decorator_on_a_plain_function(mona):
    @in_new_mona_context(ARC_class="plain_decorated")
    def run(n: int) -> str:
        client.export({"plain_call": n})
        return client.get_full_context_id()

    first, second = run(1), run(2)
    with client.new_mona_context("outer_plain") as outer:
        third = run(3)
        assert client.get_full_context_id() == outer
    assert len({first, second, third, outer}) == 4 and "" not in (first, second, third)
    assert contexts_of(delivered(mona, 3), "plain_call") == {1: first, 2: second, 3: third}
    classes = arc_classes(mona)
    assert [classes.get(i) for i in (first, second, third)] == ["plain_decorated"] * 3


def test_the_decorator_restores_the_outer_context_when_the_function_raises():
    @in_new_mona_context("raising")
    def boom() -> None:
        raise KeyError("boom")

    @in_new_mona_context("raising_async")
    async def aboom() -> None:
        await asyncio.sleep(0)
        raise KeyError("aboom")

    with client.new_mona_context("outer") as outer:
        before = ctx.current_stack()
        with pytest.raises(KeyError):
            boom()
        assert ctx.current_stack() == before

        async def main() -> ctx.Stack:
            with pytest.raises(KeyError):
                await aboom()
            return ctx.current_stack()

        assert asyncio.run(main()) == before
        assert client.get_full_context_id() == outer


def test_asyncio_to_thread_carries_the_context(mona):
    async def main() -> Tuple[str, Tuple[str, bool]]:
        with client.new_mona_context("to_thread") as cid:
            return cid, await asyncio.to_thread(lambda: (client.get_full_context_id(), client.export({"to_thread": 1})))

    cid, seen = asyncio.run(main())
    assert seen == (cid, True)
    assert contexts_of(delivered(mona, 1), "to_thread") == {1: cid}


# --- exceptions -------------------------------------------------------------------------------------


def nested_blocks_restore_exactly() -> Dict[str, Any]:
    """Raise from several depths of nested blocks and record the stack after each unwinding."""
    out: Dict[str, Any] = {"start": ctx.current_stack()}
    with client.new_mona_context("exc_root") as root:
        root_stack = ctx.current_stack()
        try:
            with client.new_mona_sub_context(sub_context_id="a"):
                a_stack = ctx.current_stack()
                try:
                    with client.new_mona_sub_context(sub_context_id="b"):
                        with client.new_mona_sub_context(sub_context_id="c"):
                            raise ValueError("deep")
                except ValueError:
                    out["after_deep"] = ctx.current_stack() == a_stack
                with client.new_mona_context("independent_root"):
                    raise RuntimeError("through a nested root")
        except RuntimeError:
            out["after_root"] = ctx.current_stack() == root_stack
        out["root"] = root
        out["depth_ok"] = [f[0] for f in a_stack] == [root, f"{root}.a"]
    out["end"] = ctx.current_stack()
    return out


def check_restored(out: Dict[str, Any], start: ctx.Stack) -> None:
    assert out["start"] == start
    assert out["after_deep"] is True
    assert out["after_root"] is True
    assert out["depth_ok"] is True
    assert out["end"] == start


def test_exceptions_in_nested_blocks_restore_the_stack_in_threads():
    results: List[Dict[str, Any]] = []
    run_thread(lambda: results.append(nested_blocks_restore_exactly()))
    check_restored(results[0], ())

    with client.new_mona_context("thread_parent"):
        parent = ctx.current_stack()
        run_thread(lambda: results.append(nested_blocks_restore_exactly()), MonaThread)
        assert ctx.current_stack() == parent
    check_restored(results[1], parent)


def test_many_threads_nesting_and_raising_at_once_stay_separate():
    barrier = threading.Barrier(6, timeout=JOIN)
    results: Dict[int, Dict[str, Any]] = {}
    failures: List[BaseException] = []

    def body(n: int) -> None:
        try:
            barrier.wait()
            for _ in range(50):
                results[n] = nested_blocks_restore_exactly()
                check_restored(results[n], ())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=body, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN)
    assert not failures, failures
    assert sorted(results) == list(range(6))
    assert len({r["root"] for r in results.values()}) == 6
