"""Sampling by the config file: a deterministic function of the root context id, the same in every
process. Real receiver, real config files edited on disk, real subprocesses and a real collector."""

from __future__ import annotations

import binascii
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest

from mona_client import client
from mona_client.config import ConfigError, load_config_file
from mona_client.propagation import HEADER, carry_to_process, inject
from mona_client.runtime import runtime
from mona_client.sampling import keep, root_of
from mona_collector import SQLiteStore
from tests.support.embedded import ROOT, Embedded, embedded
from tests.support.receiver import ForwardReceiver

__all__ = ["embedded"]

pytestmark = pytest.mark.timeout(90)


def documented_keep(root_id: str, rate: float) -> bool:
    """The function as docs/configuration.md states it, computed independently."""
    return binascii.crc32(root_id.encode("utf-8")) / 2**32 < rate


def start(receiver: ForwardReceiver, tmp_path: Path, config: Dict[str, Any]) -> Path:
    path = tmp_path / "mona_client_config.json"
    path.write_text(json.dumps(config))
    client.init_client(port=receiver.port, config_file=str(path), print_logs=False)
    client.reset()
    return path


@pytest.fixture
def stop_client() -> Any:
    yield
    client.reset()
    client.close(5)


def exported_ids(receiver: ForwardReceiver, key: str, count: int) -> Set[Any]:
    assert client.flush(20), client.stats()
    assert receiver.wait_for(lambda r: sum(key in x["message"] for x in r.records) >= count, 20), receiver.records
    time.sleep(0.2)  # nothing more may come: a record of a sampled-out ARC would show up here
    assert client.flush(20)
    return {r["message"][key] for r in receiver.records if key in r["message"]}


def test_the_decision_is_the_documented_function_and_keeps_about_the_rate():
    ids = [f"{i:016x}-{i}" for i in range(20_000)]
    for rate in (0.0, 0.01, 0.3, 0.5, 0.999, 1.0):
        kept = [i for i in ids if keep(i, rate)]
        assert kept == [i for i in ids if documented_keep(i, rate)]
        assert abs(len(kept) / len(ids) - rate) < 0.02  # 20,000 fixed ids: a fixed outcome, not a chance
    lower = {i for i in ids if keep(i, 0.1)}
    assert lower <= {i for i in ids if keep(i, 0.4)}  # a lower rate keeps a subset
    assert root_of("abc.def.ghi") == "abc"


def test_a_sampled_out_arc_exports_nothing_and_is_counted(receiver, tmp_path, stop_client):
    start(receiver, tmp_path, {"sample_rate": 0.5})
    sampled_out_before = client.stats()["sampled_out"]  # the count is the process's, since it started
    opened: List[str] = []
    for _ in range(200):
        with client.new_mona_context(arc_class="RUN") as context_id:
            opened.append(context_id)
            assert client.get_full_context_id() == context_id  # the id is there, to propagate
            assert client.export({"run": context_id}) is True
            with client.new_mona_sub_context(arc_class="STEP", sub_context_id="s") as sub:
                assert sub == f"{context_id}.s"
                client.export({"sub": context_id})
            assert client.export_batch([{"message": {"batch": context_id}}]) is True
            try:
                with client.new_mona_context(context_id=context_id, measure_duration=True):
                    raise ValueError("failed run")
            except ValueError:
                pass
    kept = {c for c in opened if documented_keep(c, 0.5)}
    assert 0 < len(kept) < 200
    assert exported_ids(receiver, "run", len(kept)) == kept
    assert exported_ids(receiver, "sub", len(kept)) == kept
    assert exported_ids(receiver, "batch", len(kept)) == kept
    roots = {root_of(r["context"]) for r in receiver.records}
    assert roots == kept  # no class, no run fact, nothing else of a sampled-out ARC
    # each id was opened twice
    assert client.stats()["sampled_out"] - sampled_out_before == 2 * (200 - len(kept))


def test_per_class_rates_and_edits_of_the_file(receiver, tmp_path, stop_client):
    path = start(receiver, tmp_path, {"sample_rates": {"NOISY": 0.0, "RARE": 1.0}, "sample_rate": 1.0})
    for i in range(20):
        for arc_class in ("NOISY", "RARE", "OTHER"):
            with client.new_mona_context(arc_class=arc_class):
                client.export({"cls": arc_class, "i": i})
    assert client.flush(20)
    receiver.wait_for(lambda r: sum("cls" in x["message"] for x in r.records) >= 40, 20)
    got = [r["message"]["cls"] for r in receiver.records if "cls" in r["message"]]
    assert sorted(set(got)) == ["OTHER", "RARE"] and len(got) == 40
    path.write_text(json.dumps({"sample_rate": 0.0}))
    deadline = time.monotonic() + 20
    while runtime.sample_rate != 0.0:
        assert time.monotonic() < deadline, "the edit of the config file was not seen"
        time.sleep(0.02)
    before = client.stats()["sampled_out"]
    with client.new_mona_context(arc_class="RARE"):
        client.export({"after_edit": 1})
    assert client.stats()["sampled_out"] == before + 1


def test_continuing_and_carrying_follow_the_same_decision(receiver, tmp_path, stop_client):
    start(receiver, tmp_path, {"sample_rate": 0.5})
    ids = [f"job-{i}" for i in range(40)]
    for context_id in ids:
        with client.continue_mona_context(context_id) as got:
            assert got == context_id
            assert inject({}) == {HEADER: context_id}  # the id propagates, kept or not
            client.export({"continued": context_id})
    kept = {i for i in ids if documented_keep(i, 0.5)}
    assert exported_ids(receiver, "continued", len(kept)) == kept
    dropped = sorted(set(ids) - kept)[0]
    with client.continue_mona_context(dropped):
        process = multiprocessing.get_context("fork").Process(target=carry_to_process(_export_in_child))
        process.start()
    process.join(30)
    assert process.exitcode == 0
    assert client.flush(10)
    time.sleep(0.3)
    assert not [r for r in receiver.records if r["message"].get("child")]


def _export_in_child() -> None:
    client.export({"child": True})
    client.flush(5)


CHILD = textwrap.dedent(
    """
    import sys
    from mona_client import client
    for context_id in sys.argv[1:]:
        with client.new_mona_context(arc_class="CLS", context_id=context_id):
            client.export({"pid_run": context_id})
    assert client.flush(20)
    """
)


def test_two_processes_keep_the_same_ids(receiver, tmp_path):
    config = tmp_path / "sampling.json"
    config.write_text(json.dumps({"sample_rates": {"CLS": 0.3}}))
    ids = [os.urandom(8).hex() + f"-{i}" for i in range(300)]
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        MONA_PORT=str(receiver.port),
        MONA_CLIENT_CONFIG_FILE=str(config),
        MONA_PRINT_LOGS="false",
    )
    for _ in ("first", "second"):
        subprocess.run([sys.executable, "-c", CHILD, *ids], env=env, check=True, timeout=60)
    kept = {i for i in ids if documented_keep(i, 0.3)}
    assert receiver.wait_for(lambda r: sum("pid_run" in x["message"] for x in r.records) >= 2 * len(kept), 30)
    time.sleep(0.3)
    runs = [r["message"]["pid_run"] for r in receiver.records if "pid_run" in r["message"]]
    assert sorted(runs) == sorted([*kept, *kept])  # each process kept exactly the documented ids


@pytest.mark.parametrize(
    "bad",
    [
        {"sample_rate": 1.5},
        {"sample_rate": -0.1},
        {"sample_rate": "0.5"},
        {"sample_rate": True},
        {"sample_rates": {"A": 2}},
        {"sample_rates": ["A"]},
        {"sample_rates": {"A": None}},
    ],
)
def test_bad_rates_make_the_file_invalid(tmp_path, bad):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="sample_rate"):
        load_config_file(str(path))


def test_end_to_end_only_kept_arcs_reach_the_collector(embedded: Embedded, tmp_path):
    config = tmp_path / "mona_client_config.json"  # the fixture's file, edited while the client runs
    config.write_text(json.dumps({"sample_rate": 0.5}))
    deadline = time.monotonic() + 20
    while not runtime.sampling:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    opened = []
    for i in range(30):
        with client.new_mona_context(arc_class="E2E") as context_id:
            client.export({"i": i})
            opened.append(context_id)
    kept = [c for c in opened if documented_keep(c, 0.5)]
    dropped = [c for c in opened if c not in kept]
    assert kept and dropped
    assert embedded.arc(kept[0])["fields"] == {"i": opened.index(kept[0])}
    store = SQLiteStore(embedded.db_path, readonly=True)
    try:
        assert sorted(d["context_id"] for d in store.iter_arcs("E2E")) == sorted(kept)
    finally:
        store.close()
