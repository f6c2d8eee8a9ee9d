"""Alerts end to end on a real collector's database: one segment's accuracy drops on one day."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Union

import pytest

from mona_collector.alerts.rules import parse_alert_config
from mona_collector.alerts.runner import check
from mona_collector.alerts.sinks import drain

from .conftest import ARCS_PER_DAY, BAD_DAY, DAY, Webhook, day_end, mona

ACCURACY_RULE = {
    "class": "FRAUD",
    "subject": "metric",
    "metric": "accuracy",
    "by": "country",
    "below": 0.7,
    "window": "1d",
    "severity": "critical",
}


def _config(webhook: Webhook, **rule: Any) -> str:
    return json.dumps(
        {"alerts": {"rules": [{**ACCURACY_RULE, **rule}], "sinks": [{"type": "webhook", "url": webhook.url}]}}
    )


def test_one_segment_drop_opens_one_alert_and_it_resolves(drop_any_db: Union[Path, str], webhook: Webhook) -> None:
    config = parse_alert_config(_config(webhook))
    opened: List[Dict[str, Any]] = []
    states = {}
    for day in range(1, 10):
        events, rows = check(drop_any_db, config, day_end(day))
        assert drain(drop_any_db, config, deadline=1e18) == 0
        opened += [event for event in events if event["event"] == "open"]
        states[day] = {row.subject: row.state for row in rows if row.state != "ok"}
    assert [(event["arc_class"], event["subject"]) for event in opened] == [("FRAUD", "country=BR")]
    assert states[BAD_DAY - 1] == {}
    assert states[BAD_DAY] == {"country=BR": "open"}
    assert states[BAD_DAY + 1] == {"country=BR": "open"}  # one clean evaluation is not enough
    assert states[BAD_DAY + 2] == {"country=BR": "resolved"}  # two are
    assert [(body["event"], body["subject"]) for body in webhook.received] == [
        ("open", "country=BR"),
        ("resolve", "country=BR"),
    ]
    fired = webhook.received[0]
    assert fired["value"] < 0.7 and fired["threshold"] == 0.7 and fired["severity"] == "critical"
    assert fired["first_seen"] == fired["opened_at"] == day_end(BAD_DAY)
    assert webhook.received[1]["resolved_at"] == day_end(BAD_DAY + 2)


def test_open_after_waits_for_consecutive_evaluations(drop_db: Path, webhook: Webhook) -> None:
    config = parse_alert_config(_config(webhook, open_after=2))
    for day in range(BAD_DAY - 1, BAD_DAY + 3):
        _, rows = check(drop_db, config, day_end(day))
    assert all(row.state in ("ok", "pending") for row in rows)
    _, rows = check(drop_db, config, day_end(BAD_DAY))
    _, rows = check(drop_db, config, day_end(BAD_DAY))  # the same bad day twice: two firing evaluations
    assert {row.subject: row.state for row in rows if row.state != "ok"} == {"country=BR": "open"}


def test_the_check_command_exits_1_while_open_and_lists(drop_db: Path, webhook: Webhook, tmp_path: Path) -> None:
    path = tmp_path / "monitoring.json"
    path.write_text(_config(webhook))
    status, out, err = mona("alerts", "check", "--db", str(drop_db), "--config", str(path), "--at", "2d")
    assert (status, err) == (0, ""), out
    iso = datetime.fromtimestamp(day_end(BAD_DAY), timezone.utc).isoformat()
    status, out, err = mona("alerts", "check", "--db", str(drop_db), "--config", str(path), "--at", iso, "--json")
    assert status == 1, (out, err)
    document = json.loads(out)
    assert document["open"] == 1 and [row["subject"] for row in document["alerts"]] == ["country=BR"]
    assert document["undelivered"] == 0 and webhook.wait_for(1)
    status, out, err = mona("alerts", "list", "--db", str(drop_db), "--open")
    assert status == 0 and "country=BR" in out and "open" in out, err
    status, out, _ = mona("alerts", "list", "--db", str(drop_db), "--json")
    assert [row["state"] for row in json.loads(out)] == ["open"]


def test_default_rules_watch_every_kapi(drop_db: Path) -> None:
    status, out, err = mona("alerts", "check", "--db", str(drop_db), "--json")
    assert status in (0, 1), err
    document = json.loads(out)
    assert document["default_rules"] is True and document["rules"][0]["subject"] == "drift"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"alerts": {"rules": [{"subject": "metric", "metric": "accuracy", "below": 0.7,}]}}', "line 1 column"),
        (
            '{"alerts": {"rules": [{"subject": "volume", "below": 1}, {"subject": "volume", "belwo": 5}]}}',
            "alerts.rules[1].belwo: unknown key",
        ),
        (
            '{"alerts": {"rules": [{"subject": "exceptions", "above": "high"}]}}',
            "alerts.rules[0].above: expected a number",
        ),
        ('{"alerts": {"rules": [{"subject": "metric", "metric": "acuracy", "below": 1}]}}', "unknown metric 'acuracy'"),
        ('{"alerts": {"sinks": [{"type": "webhook", "url": "ftp://x"}]}}', "alerts.sinks[0].url"),
    ],
)
def test_a_bad_rule_file_is_one_line_and_status_2(drop_db: Path, tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    status, out, err = mona("alerts", "check", "--db", str(drop_db), "--config", str(path))
    assert status == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert words in err and str(path) in err, err


def test_subjects_volume_silence_and_exceptions(tmp_path: Path, drop_db: Path) -> None:
    rules = [
        {"name": "busy", "class": "FRAUD", "subject": "volume", "above": 300, "window": "1d"},
        {"name": "quiet", "class": "FRAUD", "subject": "silence", "minutes": 60},
        {"name": "errors", "class": "FRAUD", "subject": "exceptions", "above": 0.0},
    ]
    config = parse_alert_config(json.dumps({"alerts": {"rules": rules}}))
    _, rows = check(drop_db, config, day_end(3))
    assert {row.rule: row.state for row in rows} == {"busy": "open", "quiet": "ok", "errors": "ok"}
    _, rows = check(drop_db, config, day_end(9) + 2 * 3600)  # two hours after the last ARC
    states = {row.rule: row for row in rows}
    assert states["quiet"].state == "open" and states["quiet"].value == pytest.approx(120 + DAY / ARCS_PER_DAY / 2 / 60)
