"""Run facts a context exports by itself as it exits: the exception it exits by (MONA_EXCEPTION_TYPE,
MONA_EXCEPTION_MESSAGE) and, when asked, its duration (MONA_DURATION_MS). Real receiver, real config
file edited on disk, and one ARC end to end in a real collector."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from mona_client import client
from mona_client.config import ConfigError, load_config_file
from mona_client.integrations.wsgi import MonaWSGIMiddleware
from mona_client.runtime import runtime
from tests.support.embedded import Embedded, embedded
from tests.support.receiver import ForwardReceiver

__all__ = ["embedded"]

pytestmark = pytest.mark.timeout(60)

FACTS = ("MONA_EXCEPTION_TYPE", "MONA_EXCEPTION_MESSAGE", "MONA_DURATION_MS")


def facts(receiver: ForwardReceiver, count: int) -> Dict[str, Dict[str, Any]]:
    """context -> the run facts exported for it, once ``count`` records carrying facts arrived."""
    assert client.flush(20), client.stats()

    def carrying(r: ForwardReceiver) -> List[Dict[str, Any]]:
        return [x for x in r.records if any(k in x["message"] for k in FACTS)]

    assert receiver.wait_for(lambda r: len(carrying(r)) >= count, 20), receiver.records
    out: Dict[str, Dict[str, Any]] = {}
    for record in carrying(receiver):
        assert record["context"] not in out, "run facts exported twice for one context"
        out[record["context"]] = record["message"]
    return out


def no_facts(receiver: ForwardReceiver, marker_count: int) -> None:
    """Wait until ``marker_count`` records arrived, then check none carries run facts."""
    assert client.flush(20)
    assert receiver.wait_for(lambda r: len(r.records) >= marker_count, 20)
    assert not [r for r in receiver.records if any(k in r["message"] for k in FACTS)]


class ScoringError(Exception):
    pass


def test_an_exception_leaving_a_context_is_exported_and_goes_on_unchanged(mona):
    error = ScoringError("model returned NaN")
    with pytest.raises(ScoringError) as raised, client.new_mona_context(arc_class="SCORER") as run:
        raise error
    assert raised.value is error
    assert raised.traceback[-1].name == "test_an_exception_leaving_a_context_is_exported_and_goes_on_unchanged"
    assert facts(mona, 1) == {
        run: {
            "MONA_EXCEPTION_TYPE": f"{__name__}.ScoringError",
            "MONA_EXCEPTION_MESSAGE": "model returned NaN",
        }
    }


def test_builtin_exception_names_are_bare_and_each_context_it_leaves_gets_it(mona):
    with pytest.raises(KeyError), client.new_mona_context() as root:
        with client.new_mona_sub_context(sub_context_id="inner") as inner:
            {}["missing"]
    assert facts(mona, 2) == {
        root: {"MONA_EXCEPTION_TYPE": "KeyError", "MONA_EXCEPTION_MESSAGE": "'missing'"},
        inner: {"MONA_EXCEPTION_TYPE": "KeyError", "MONA_EXCEPTION_MESSAGE": "'missing'"},
    }


def test_an_exception_handled_inside_the_block_is_not_a_fact_of_the_outer_context(mona):
    with client.new_mona_context() as root:
        try:
            with client.new_mona_sub_context(sub_context_id="retry") as inner:
                raise TimeoutError("first try")
        except TimeoutError:
            pass
        client.export({"marker": 1})
    got = facts(mona, 1)
    assert set(got) == {inner} and root not in got


def test_the_message_is_cut_to_the_limit_and_a_failing_str_is_named(mona):
    class UnprintableError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    with pytest.raises(ValueError), client.new_mona_context() as long_one:
        raise ValueError("x" * 5000)
    with pytest.raises(UnprintableError), client.new_mona_context() as unprintable:
        raise UnprintableError()
    got = facts(mona, 2)
    assert got[long_one]["MONA_EXCEPTION_MESSAGE"] == "x" * 1000
    assert got[unprintable]["MONA_EXCEPTION_MESSAGE"] == "<UnprintableError whose str() failed>"


def _start(receiver: ForwardReceiver, tmp_path: Path, config: Dict[str, Any], **kwargs: Any) -> Path:
    path = tmp_path / "mona_client_config.json"
    path.write_text(json.dumps(config))
    client.init_client(port=receiver.port, config_file=str(path), print_logs=False, **kwargs)
    return path


def test_the_message_limit_and_the_switch_are_settings(receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("MONA_EXCEPTION_MESSAGE_MAX_CHARS", "5")
    _start(receiver, tmp_path, {})
    try:
        with pytest.raises(ValueError), client.new_mona_context() as cut:
            raise ValueError("0123456789")
        assert facts(receiver, 1)[cut]["MONA_EXCEPTION_MESSAGE"] == "01234"
        monkeypatch.setenv("MONA_EXPORT_EXCEPTIONS", "false")
        _start(receiver, tmp_path, {})
        with pytest.raises(ValueError), client.new_mona_context() as off:
            client.export({"marker": 1})
            raise ValueError("not exported")
        assert client.flush(20) and receiver.wait_for(lambda r: len(r.records) >= 2, 20)
        assert [r["message"] for r in receiver.records if r["context"] == off] == [{"marker": 1}]
    finally:
        client.close(5)


def test_exits_that_are_not_errors_are_not_exported(mona):
    for leaving in (KeyboardInterrupt, SystemExit, GeneratorExit):
        with pytest.raises(leaving), client.new_mona_context():
            client.export({"marker": leaving.__name__})
            raise leaving()
    no_facts(mona, 3)


def test_with_raising_on_a_refused_fact_does_not_replace_the_users_exception(receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("MONA_MAX_RECORD_BYTES", "300")  # the message below makes the facts' record too big
    monkeypatch.setenv("MONA_EXCEPTION_MESSAGE_MAX_CHARS", "100000")
    _start(receiver, tmp_path, {}, should_raise_exceptions=True)
    try:
        with pytest.raises(ValueError, match=r"^y+$"), client.new_mona_context():
            raise ValueError("y" * 1000)
    finally:
        client.close(5)


def test_a_continued_context_and_a_wsgi_request_get_the_exception(mona):
    with pytest.raises(ZeroDivisionError), client.continue_mona_context("run-5"):
        1 / 0

    def failing_app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        raise LookupError("no such model")

    with pytest.raises(LookupError):
        MonaWSGIMiddleware(failing_app)({"PATH_INFO": "/", "HTTP_MONA_CONTEXT_ID": "run-6"}, lambda *a: None)
    got = facts(mona, 2)
    assert got["run-5"]["MONA_EXCEPTION_TYPE"] == "ZeroDivisionError"
    assert got["run-6"] == {"MONA_EXCEPTION_TYPE": "LookupError", "MONA_EXCEPTION_MESSAGE": "no such model"}


def test_an_async_task_failing_in_its_context(mona):
    import asyncio

    async def run() -> str:
        with client.new_mona_context() as context_id:
            await asyncio.sleep(0)
            raise RuntimeError("async failure")
        return context_id  # never reached

    with pytest.raises(RuntimeError):
        asyncio.run(run())
    (message,) = facts(mona, 1).values()
    assert message["MONA_EXCEPTION_MESSAGE"] == "async failure"


# --- duration -----------------------------------------------------------------------------------------


def test_measure_duration_exports_the_run_time_in_ms(mona):
    with client.new_mona_context(arc_class="A", measure_duration=True) as measured:
        time.sleep(0.05)
        with client.new_mona_sub_context(sub_context_id="s", measure_duration=True) as sub:
            time.sleep(0.02)
    with client.new_mona_context(arc_class="A") as unmeasured:
        client.export({"marker": 1})
    with client.continue_mona_context("run-9", measure_duration=True):
        pass
    got = facts(mona, 3)
    assert unmeasured not in got
    assert got[measured]["MONA_DURATION_MS"] >= 70.0  # a lower bound: sleep sleeps at least that long
    assert got[sub]["MONA_DURATION_MS"] >= 20.0
    assert got["run-9"]["MONA_DURATION_MS"] >= 0.0
    assert got[measured]["MONA_DURATION_MS"] > got[sub]["MONA_DURATION_MS"]


def test_a_failing_measured_context_exports_both_in_one_record(mona):
    with pytest.raises(ValueError), client.new_mona_context(measure_duration=True) as run:
        raise ValueError("bad")
    assert set(facts(mona, 1)[run]) == set(FACTS)


def test_duration_classes_come_from_the_config_file_and_follow_its_edits(receiver, tmp_path):
    config = _start(receiver, tmp_path, {"duration_classes": ["FRAUD_SCORER"]})
    try:
        with client.new_mona_context(arc_class="FRAUD_SCORER") as fraud:
            with client.new_mona_sub_context(arc_class="FRAUD_SCORER") as fraud_sub:
                pass
        with client.new_mona_context(arc_class="OTHER") as other:
            pass
        with client.new_mona_context(arc_class="FRAUD_SCORER", measure_duration=False) as opted_out:
            pass
        got = facts(receiver, 2)
        assert set(got) == {fraud, fraud_sub} and other not in got and opted_out not in got
        config.write_text(json.dumps({"duration_classes": ["OTHER"]}))
        deadline = time.monotonic() + 20
        while runtime.duration_classes != {"OTHER"}:
            assert time.monotonic() < deadline, "the config file edit was not seen"
            time.sleep(0.02)
        with client.new_mona_context(arc_class="OTHER") as now_measured:
            pass
        with client.new_mona_context(arc_class="FRAUD_SCORER") as no_longer:
            pass
        got = facts(receiver, 3)
        assert now_measured in got and no_longer not in got
    finally:
        client.close(5)


def test_duration_classes_must_be_a_list_of_names(tmp_path):
    path = tmp_path / "c.json"
    for bad in ('{"duration_classes": "FRAUD"}', '{"duration_classes": [1, "A"]}'):
        path.write_text(bad)
        with pytest.raises(ConfigError, match="duration_classes"):
            load_config_file(str(path))
    path.write_text('{"duration_classes": []}')
    assert load_config_file(str(path)) == {"duration_classes": []}


# --- end to end -----------------------------------------------------------------------------------------


def test_end_to_end_the_arc_document_holds_the_run_facts(embedded: Embedded):
    with pytest.raises(ScoringError), client.new_mona_context(arc_class="SCORER", measure_duration=True) as run:
        client.export({"features": 3})
        raise ScoringError("timeout talking to the feature store")
    fields = embedded.arc(run)["fields"]
    assert fields["features"] == 3
    assert fields["MONA_EXCEPTION_TYPE"] == f"{__name__}.ScoringError"
    assert fields["MONA_EXCEPTION_MESSAGE"] == "timeout talking to the feature store"
    assert isinstance(fields["MONA_DURATION_MS"], float) and fields["MONA_DURATION_MS"] >= 0.0
