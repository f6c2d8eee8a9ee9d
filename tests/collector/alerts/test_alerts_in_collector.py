"""Alerts evaluated inside a running collector: a webhook that is down, then answers 500, then
recovers gets every notification while the collector keeps ingesting; a config edited into an invalid
one keeps the previous rules running; a command sink gets the alert on standard input."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from mona_collector import Collector
from mona_collector.alerts.state import connect, read_alerts
from tests.support.collector import TAG, RawClient, bin32, entry, packed_message, record, time_fixext8, wait_merged
from tests.support.waiting import wait_until

from .conftest import Webhook

VOLUME_RULE = {"name": "any", "class": "SCORER", "subject": "volume", "above": 0, "window": "30d"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _send(port: int, start: int, count: int) -> None:
    client = RawClient(port)
    try:
        now = int(time.time())
        records = [
            record(f"c-{i}", {"MONA_ARC_CLASS": "SCORER", "x": float(i)}, ts=now) for i in range(start, start + count)
        ]
        blob = b"".join(entry(time_fixext8(now, 0), rec) for rec in records)
        client.send(packed_message(TAG, bin32(blob), {"chunk": f"k{start}"}))
        assert client.answer() == {"ack": f"k{start}"}
    finally:
        client.close()


def _alerts(db_path: Path) -> Dict[str, Any]:
    db = connect(db_path)
    try:
        return {row.rule: row for row in read_alerts(db)}
    finally:
        db.close()


def _arcs(db_path: Path) -> int:
    from mona_collector.store import SQLiteStore

    wait_merged(db_path)
    store = SQLiteStore(db_path, readonly=True)
    try:
        return int(store.stats()["arcs"])
    finally:
        store.close()


def test_a_webhook_down_then_failing_then_back_gets_everything(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there yet: the webhook is down
    config = tmp_path / "monitoring.json"
    sinks = [{"type": "webhook", "url": f"http://127.0.0.1:{port}/hook", "timeout": 2}]
    config.write_text(json.dumps({"alerts": {"rules": [VOLUME_RULE], "sinks": sinks, "max_backoff": 0.3}}))
    db_path = tmp_path / "arcs.db"
    with Collector(port=0, db_path=db_path, synchronous="NORMAL", evaluate_every=0.2, alerts_config=str(config)) as c:
        _send(c.port, 0, 50)
        assert wait_until(lambda: _alerts(db_path).get("any") is not None and _alerts(db_path)["any"].state == "open")
        _send(c.port, 50, 50)  # ingest goes on while the sink fails
        config.write_text(
            json.dumps({"alerts": {"rules": [{**VOLUME_RULE, "above": 1e9}], "sinks": sinks, "max_backoff": 0.3}})
        )
        assert wait_until(lambda: _alerts(db_path)["any"].state == "resolved")
        _send(c.port, 100, 50)
        webhook = Webhook(port, answers=[500, 500, 500])  # back, but failing three times first
        try:
            assert webhook.wait_for(2), webhook.received
            assert [body["event"] for body in webhook.received] == ["open", "resolve"]
            assert webhook.attempts >= 5
        finally:
            webhook.close()
        assert _arcs(db_path) == 150


def test_an_invalid_edit_keeps_the_previous_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "monitoring.json"
    config.write_text(json.dumps({"alerts": {"rules": [VOLUME_RULE]}}))
    db_path = tmp_path / "arcs.db"
    with Collector(port=0, db_path=db_path, synchronous="NORMAL", evaluate_every=0.1, alerts_config=str(config)) as c:
        loop = c.alerts
        assert loop is not None
        _send(c.port, 0, 10)
        assert wait_until(lambda: "any" in _alerts(db_path) and _alerts(db_path)["any"].state == "open")
        with caplog.at_level(logging.ERROR, logger="mona_collector.alerts"):
            config.write_text('{"alerts": {"rules": [{"subject": "volume", "abov": 1}]}}')
            seen = loop.evaluations
            assert wait_until(lambda: loop.evaluations >= seen + 5)
        errors = [r.getMessage() for r in caplog.records if "previous rules keep running" in r.getMessage()]
        assert len(errors) == 1 and "alerts.rules[0].abov: unknown key" in errors[0]
        assert [rule.name for rule in loop.config.rules] == ["any"]
        assert _alerts(db_path)["any"].state == "open"


def test_a_command_sink_gets_the_alert_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "got.jsonl"
    script = f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + '\\n')"
    sinks = [{"type": "command", "command": [sys.executable, "-c", script], "timeout": 20}]
    config = tmp_path / "monitoring.json"
    config.write_text(json.dumps({"alerts": {"rules": [VOLUME_RULE], "sinks": sinks}}))
    db_path = tmp_path / "arcs.db"
    with Collector(port=0, db_path=db_path, synchronous="NORMAL", evaluate_every=0.1, alerts_config=str(config)) as c:
        _send(c.port, 0, 10)
        assert wait_until(lambda: out.exists() and out.read_text().strip() != "")
    lines: List[Dict[str, Any]] = [json.loads(line) for line in out.read_text().splitlines() if line]
    assert [(body["event"], body["rule"], body["arc_class"]) for body in lines] == [("open", "any", "SCORER")]


def test_the_share_of_arcs_with_an_exception(tmp_path: Path) -> None:
    from mona_collector.alerts.rules import parse_alert_config
    from mona_collector.alerts.runner import check

    db_path = tmp_path / "arcs.db"
    with Collector(port=0, db_path=db_path, synchronous="NORMAL") as c:
        client = RawClient(c.port)
        now = int(time.time())
        records = [
            record(
                f"e-{i}", {"MONA_ARC_CLASS": "SCORER", **({"MONA_EXCEPTION_TYPE": "KeyError"} if i < 3 else {})}, now
            )
            for i in range(10)
        ]
        client.send(
            packed_message(TAG, bin32(b"".join(entry(time_fixext8(now, 0), r) for r in records)), {"chunk": "e"})
        )
        assert client.answer() == {"ack": "e"}
        client.close()
        wait_merged(db_path)
    rule = {"name": "errors", "class": "SCORER", "subject": "exceptions", "above": 0.2, "window": "1h"}
    _, rows = check(db_path, parse_alert_config(json.dumps({"alerts": {"rules": [rule]}})))
    (row,) = rows
    assert (row.state, row.value, row.threshold) == ("open", pytest.approx(0.3), 0.2)
