"""Contexts under gevent: greenlets in this (unpatched) process, and a monkey-patched client in a
subprocess that delivers to a real receiver here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest

gevent = pytest.importorskip("gevent")

from mona_client import client  # noqa: E402
from mona_client import context as ctx  # noqa: E402
from mona_client.threads import spawn_greenlet  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def user_records(receiver: Any) -> List[Dict[str, Any]]:
    return [r for r in receiver.records if not any(k.startswith("MONA_") for k in r["message"])]


def delivered(receiver: Any, count: int) -> List[Dict[str, Any]]:
    assert client.flush(10), client.stats()
    receiver.wait_for(lambda r: len(user_records(r)) >= count, 10)
    return user_records(receiver)


def landed(records: List[Dict[str, Any]], key: str) -> Dict[Any, str]:
    out: Dict[Any, str] = {}
    for r in records:
        if key in r["message"]:
            assert r["message"][key] not in out, f"{key}={r['message'][key]!r} delivered twice"
            out[r["message"][key]] = r["context"]
    return out


@pytest.fixture(autouse=True)
def _client(mona: Any) -> Any:
    assert client.get_full_context_id() == ""
    return mona


# --- gevent without monkey patching -----------------------------------------------------------------


def test_a_plain_spawn_starts_with_no_context():
    with client.new_mona_context("spawner") as cid:
        assert cid
        g = gevent.spawn(lambda: (client.get_full_context_id(), client.export({"plain_spawn": 1})))
        g.join(5)
        assert client.get_full_context_id() == cid
    assert g.successful()
    assert g.value == ("", False)


def test_spawn_greenlet_carries_the_spawners_context(mona):
    with client.new_mona_context("greenlet_spawner") as cid:
        g = spawn_greenlet(
            lambda tag, *, n: (client.get_full_context_id(), client.export({"carried_greenlet": f"{tag}{n}"})),
            "g",
            n=1,
        )
        # The greenlet runs only when this one yields; by then the block has ended.
    assert client.get_full_context_id() == ""
    g.join(5)
    assert g.successful(), g.exception
    assert g.value == (cid, True)
    assert landed(delivered(mona, 1), "carried_greenlet") == {"g1": cid}


def test_a_sub_context_in_a_carried_greenlet_does_not_reach_the_spawner():
    with client.new_mona_context("parent") as cid:
        parent_stack = ctx.current_stack()

        def child() -> List[str]:
            seen = []
            with client.new_mona_sub_context(sub_context_id="child"):
                seen.append(client.get_full_context_id())
                gevent.sleep(0.01)  # the spawner runs meanwhile
                seen.append(client.get_full_context_id())
            seen.append(client.get_full_context_id())
            return seen

        g = spawn_greenlet(child)
        gevent.sleep(0)  # the child enters its sub-context
        assert ctx.current_stack() == parent_stack
    g.join(5)
    assert g.value == [f"{cid}.child", f"{cid}.child", cid]


def test_many_greenlets_interleaving_never_see_each_others_stack(mona):
    def worker(n: int) -> str:
        with client.new_mona_context(arc_class="greenlet_worker") as root:
            for step in range(10):
                assert client.get_full_context_id() == root
                client.export({"greenlet_step": f"{n}-{step}"})
                gevent.sleep(0)
                with client.new_mona_sub_context(sub_context_id=f"s{step}") as sub:
                    gevent.sleep(0)
                    assert ctx.current_stack() == ((root, "greenlet_worker"), (sub, None))
                    client.export({"greenlet_sub": f"{n}-{step}"})
                    gevent.sleep(0)
                assert client.get_full_context_id() == root
        assert client.get_full_context_id() == ""
        return root

    greenlets = [gevent.spawn(worker, n) for n in range(20)]
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    roots = [g.value for g in greenlets]
    assert len(set(roots)) == 20 and "" not in roots
    records = delivered(mona, 400)
    assert landed(records, "greenlet_step") == {f"{n}-{s}": roots[n] for n in range(20) for s in range(10)}
    assert landed(records, "greenlet_sub") == {f"{n}-{s}": f"{roots[n]}.s{s}" for n in range(20) for s in range(10)}
    assert client.get_full_context_id() == ""


def test_exceptions_in_nested_blocks_restore_the_stack_in_greenlets():
    def nested(label: str) -> List[Any]:
        start = ctx.current_stack()
        out: List[Any] = []
        with client.new_mona_context(label) as root:
            root_stack = ctx.current_stack()
            try:
                with client.new_mona_sub_context(sub_context_id="a"):
                    gevent.sleep(0)
                    with client.new_mona_sub_context(sub_context_id="b"):
                        gevent.sleep(0)
                        raise ValueError(label)
            except ValueError:
                out.append(ctx.current_stack() == root_stack)
            try:
                with client.new_mona_context("inner_root"):
                    gevent.sleep(0)
                    raise KeyError(label)
            except KeyError:
                out.append(ctx.current_stack() == root_stack)
            out.append(root)
        out.append(ctx.current_stack() == start)
        return out

    with client.new_mona_context("spawner"):
        spawner_stack = ctx.current_stack()
        greenlets = [spawn_greenlet(nested, f"c{n}") for n in range(5)]
        greenlets += [gevent.spawn(nested, f"p{n}") for n in range(5)]
        gevent.joinall(greenlets, timeout=10, raise_error=True)
        assert ctx.current_stack() == spawner_stack
    for g in greenlets:
        assert g.value[:2] == [True, True] and g.value[3] is True, g.value
    assert len({g.value[2] for g in greenlets}) == 10


# --- a monkey-patched process -----------------------------------------------------------------------

PATCHED_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json
    import os
    import sys
    import time

    import gevent

    ticks = []


    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)


    background = gevent.spawn(ticker)

    from mona_client import client
    from mona_client.threads import MonaThread, spawn_greenlet

    started = time.monotonic()
    client.init_client(port=int(os.environ["MONA_PORT"]), print_logs=False)


    def worker(n):
        with client.new_mona_context(arc_class="patched_worker") as root:
            for step in range(5):
                assert client.export({"patched": f"{n}-{step}"})
                gevent.sleep(0)
                assert client.get_full_context_id() == root, (n, step)
            with client.new_mona_sub_context(sub_context_id="sub"):
                gevent.sleep(0)
                assert client.export({"patched_sub": n})
            # A thread is a greenlet here: a MonaThread still carries the ARC.
            thread = MonaThread(target=lambda: client.export({"patched_thread": n}))
            thread.start()
            thread.join()
            carried = spawn_greenlet(lambda: client.export({"patched_carried": n}))
            carried.join()
            plain = gevent.spawn(client.get_full_context_id)
            plain.join()
            assert plain.value == "", plain.value
        return root


    greenlets = [gevent.spawn(worker, n) for n in range(8)]
    gevent.joinall(greenlets, timeout=15, raise_error=True)
    flushed = client.flush(10)
    # Keep the client running (sender and config watcher alive) a while: the hub must keep serving.
    gevent.sleep(0.6)
    window = [t for t in ticks if t >= started]
    gaps = [b - a for a, b in zip(window, window[1:])]
    background.kill()
    print(
        json.dumps(
            {
                "roots": [g.value for g in greenlets],
                "flushed": flushed,
                "ticks": len(window),
                "max_gap": max(gaps) if gaps else None,
                "elapsed": time.monotonic() - started,
            }
        )
    )
    sys.stdout.flush()
    """
)


def test_a_monkey_patched_process_delivers_to_the_right_contexts_and_keeps_the_hub_running(receiver, tmp_path):
    script = tmp_path / "patched_client.py"
    script.write_text(PATCHED_SCRIPT)
    config = tmp_path / "mona_client_config.json"
    config.write_text('{"disable_all": false}')
    env = dict(
        os.environ,
        MONA_PORT=str(receiver.port),
        MONA_CLIENT_CONFIG_FILE=str(config),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the monkey-patched client hung; stderr so far: {exc.stderr!r}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    assert report["flushed"] is True
    roots = report["roots"]
    assert len(set(roots)) == 8 and all(roots)
    # The background greenlet ticked all along: neither the sender nor the config watcher starved it.
    # It asks for a tick every 10 ms; a quarter of that is plenty on a loaded machine.
    assert report["ticks"] >= 0.25 * report["elapsed"] / 0.01, report
    assert report["max_gap"] < 0.5, report

    receiver.wait_for(lambda r: len(user_records(r)) >= 8 * 8, 10)
    records = user_records(receiver)
    assert landed(records, "patched") == {f"{n}-{s}": roots[n] for n in range(8) for s in range(5)}
    assert landed(records, "patched_sub") == {n: f"{roots[n]}.sub" for n in range(8)}
    assert landed(records, "patched_thread") == {n: roots[n] for n in range(8)}
    assert landed(records, "patched_carried") == {n: roots[n] for n in range(8)}
    classes = {
        r["context"]: r["message"]["MONA_ARC_CLASS"] for r in receiver.records if "MONA_ARC_CLASS" in r["message"]
    }
    assert all(classes.get(root) == "patched_worker" for root in roots), classes
