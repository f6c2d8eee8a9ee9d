"""The disable_all kill switch, flipped in a real config file on disk while threads export."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

from mona_client import client
from tests.support.receiver import wait_until


def write_config(path, **config):
    # Written in place, as a person with an editor would; the watcher must cope with partial writes.
    with open(path, "w") as f:
        json.dump(config, f)


def test_disable_all_flips_while_eight_threads_export(mona, tmp_path):
    config = client._runtime.settings.config_file
    stop = threading.Event()
    results = {n: [] for n in range(8)}

    def work(n):
        with client.new_mona_context(context_id=f"w{n}"):
            while not stop.is_set():
                results[n].append((time.monotonic(), client.export({"n": n})))
                time.sleep(0.001)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: all(results[n] for n in results))
        write_config(config, disable_all=True)
        flipped_at = time.monotonic()
        assert wait_until(lambda: not client.is_active(), timeout=5)
        seen_off = time.monotonic()
        time.sleep(0.3)
        refused_from = {n: [t for t, ok in results[n] if t > seen_off] for n in results}
        assert all(refused_from[n] for n in results)  # the threads kept calling...
        assert not any(ok for n in results for t, ok in results[n] if t > seen_off)  # ...and were refused
        write_config(config, disable_all=False)
        assert wait_until(lambda: client.is_active(), timeout=5)
        back_on = time.monotonic()
        assert wait_until(lambda: all(any(ok for t, ok in results[n] if t > back_on) for n in results))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert client.flush(20)
    accepted = sum(ok for n in results for _, ok in results[n])
    assert len(mona.wait_records(accepted)) == accepted
    # How long the flip took is reported, not asserted (a shared machine is noisy).
    print(f"disable_all took effect within {seen_off - flipped_at:.3f}s")


def test_disabled_contexts_yield_empty_ids_and_export_nothing(mona, tmp_path):
    config = client._runtime.settings.config_file
    write_config(config, disable_all=True)
    assert wait_until(lambda: not client.is_active(), timeout=5)
    with client.new_mona_context(arc_class="OFF") as cid, client.new_mona_sub_context(arc_class="OFF_SUB") as sub:
        assert (cid, sub) == ("", "")
        assert client.get_full_context_id() == ""
        assert client.export({"dropped": True}) is False
    assert client.init(arc_class="OFF") == ""
    client.reset()  # left open, the init() context would carry on in its ARC once the client is on
    write_config(config, disable_all=False)
    assert wait_until(lambda: client.is_active(), timeout=5)
    with client.new_mona_context(context_id="on"):
        assert client.export({"kept": True})
    client.flush(10)
    assert [r["message"] for r in mona.wait_records(1)] == [{"kept": True}]


def test_a_broken_config_file_keeps_the_last_good_one(mona, caplog):
    config = client._runtime.settings.config_file
    with open(config, "w") as f:
        f.write('{"disable_all": tr')  # half written
    time.sleep(0.5)
    assert client.is_active()
    with client.new_mona_context(context_id="still-on"):
        assert client.export({"ok": 1})
    os.remove(config)
    time.sleep(0.5)
    assert client.is_active()
    write_config(config, disable_all=True)
    assert wait_until(lambda: not client.is_active(), timeout=5)


def test_env_var_disables_everything(receiver, tmp_path):
    script = textwrap.dedent(
        """
        from mona_client import client
        with client.new_mona_context(arc_class="X") as cid:
            assert cid == "", cid
            assert client.export({"a": 1}) is False
        print("disabled ok")
        """
    )
    env = dict(os.environ, MONA_PORT=str(receiver.port), MONA_DISABLE_ALL="yes", MONA_PRINT_LOGS="0")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "disabled ok" in out.stdout
    assert receiver.records == []


def test_an_invalid_boolean_env_var_is_an_error_line_and_the_default(receiver):
    script = textwrap.dedent(
        """
        from mona_client import client
        with client.new_mona_context(arc_class="X") as cid:
            assert cid
            assert client.export({"a": 1})
        client.flush(10)
        """
    )
    env = dict(os.environ, MONA_PORT=str(receiver.port), MONA_DISABLE_ALL="maybe")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "MONA_DISABLE_ALL" in out.stderr and "maybe" in out.stderr
    assert len(receiver.wait_records(2)) == 2


def test_a_block_open_when_the_client_is_turned_on_again_carries_on_in_its_arc(mona, caplog):
    config = client._runtime.settings.config_file
    # Raising on: a call that found itself "outside any mona context" would fail the test loudly.
    client.init_client(
        port=mona.port, user_id="tester", config_file=config, should_raise_exceptions=True, print_logs=False
    )
    write_config(config, disable_all=True)
    assert wait_until(lambda: not client.is_active(), timeout=5)
    with caplog.at_level(logging.ERROR, logger="mona-logger"):
        with client.new_mona_context(arc_class="LONG", context_id="long-run") as cid:
            assert cid == "" and client.get_full_context_id() == ""
            assert client.export({"while_off": 1}) is False
            with client.new_mona_sub_context(arc_class="STEP", sub_context_id="off-step") as off_step:
                assert off_step == ""
            write_config(config, disable_all=False)
            assert wait_until(lambda: client.is_active(), timeout=5)
            assert client.get_full_context_id() == "long-run"
            assert client.export({"after_on": 1}) is True
            with client.new_mona_sub_context(arc_class="STEP", sub_context_id="on-step") as on_step:
                assert on_step == "long-run.on-step"
                assert client.export({"in_step": 2}) is True
        assert client.get_full_context_id() == ""
    assert not [r for r in caplog.records if r.name == "mona-logger" and r.levelno >= logging.ERROR]
    assert client.flush(10)
    records = mona.wait_records(4)
    time.sleep(0.2)  # nothing more comes: the sub-context opened and closed while off made no ARC
    assert sorted((r["context"], sorted(r["message"].items())) for r in mona.records) == [
        ("long-run", [("MONA_ARC_CLASS", "LONG")]),
        ("long-run", [("after_on", 1)]),
        ("long-run.on-step", [("MONA_ARC_CLASS", "STEP")]),
        ("long-run.on-step", [("in_step", 2)]),
    ]
    assert len(records) == 4


def test_sub_contexts_opened_while_off_inside_an_open_arc_carry_on_too(mona):
    config = client._runtime.settings.config_file
    with client.new_mona_context(context_id="run"):
        write_config(config, disable_all=True)
        assert wait_until(lambda: not client.is_active(), timeout=5)
        with client.new_mona_sub_context(arc_class="STEP", sub_context_id="s"):
            write_config(config, disable_all=False)
            assert wait_until(lambda: client.is_active(), timeout=5)
            assert client.export({"in_step": 1}) is True
    assert client.flush(10)
    assert sorted((r["context"], sorted(r["message"].items())) for r in mona.wait_records(2)) == [
        ("run.s", [("MONA_ARC_CLASS", "STEP")]),
        ("run.s", [("in_step", 1)]),
    ]
