"""The dashboard's JSON API, pages and token over real HTTP: answers, the cache, and bad input (a clear
4xx, never a 500 or a traceback)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from mona_collector.alerts import state as alert_state
from mona_collector.store import SQLiteStore
from mona_collector.web import DashboardSettings, load_server
from mona_collector.web.alerts_source import list_alerts
from mona_collector.web.filters import FilterError, parse_filter
from mona_collector.web.server import DashboardServer

from .conftest import get, get_json


def test_the_overview_lists_every_class_with_its_window_counts(
    any_dashboard: DashboardServer, generated_at: float
) -> None:
    # the window of the generated data, however long ago it was generated
    since, until = (
        datetime.fromtimestamp(moment, timezone.utc).isoformat() for moment in (generated_at - 86400, generated_at)
    )
    status, data = get_json(any_dashboard.url + "api/classes?" + urlencode({"since": since, "until": until}))
    assert status == 200
    rows = {row["arc_class"]: row for row in data["classes"]}
    assert set(rows) == {"FRAUD_SCORER", "CHECKOUT"}
    assert rows["FRAUD_SCORER"]["arcs_window"] == 600
    assert rows["FRAUD_SCORER"]["arcs_baseline"] == 1200
    assert sum(rows["FRAUD_SCORER"]["arcs_per_bucket"]) == 600
    assert rows["FRAUD_SCORER"]["worst_drift"]["kapi"] == "latency_ms"
    assert rows["FRAUD_SCORER"]["worst_drift"]["status"] == "alert"


def test_a_class_report_is_served_from_the_cache_until_the_watermark_moves(demo_db: Path) -> None:
    with load_server()(demo_db, DashboardSettings(port=0)) as server:
        url = server.url + "api/classes/FRAUD_SCORER/report?since=24h&baseline=7d"
        first = get(url)
        second = get(url)
        assert (first[0], second[0]) == (200, 200)
        assert (first[1]["X-Mona-Cache"], second[1]["X-Mona-Cache"]) == ("miss", "hit")
        db = sqlite3.connect(demo_db)
        try:
            (old,) = db.execute("SELECT value FROM meta WHERE key = 'merged_up_to'").fetchone()
            db.execute("UPDATE meta SET value = ? WHERE key = 'merged_up_to'", (str(int(old) + 1),))
            db.commit()
            assert get(url)[1]["X-Mona-Cache"] == "miss"
        finally:
            db.execute("UPDATE meta SET value = ? WHERE key = 'merged_up_to'", (old,))
            db.commit()
            db.close()


def test_a_filter_narrows_the_arc_list(any_dashboard: DashboardServer) -> None:
    base = any_dashboard.url + "api/arcs?arc_class=FRAUD_SCORER&since=30d&limit=500"
    _, everything = get_json(base)
    _, brazil = get_json(base + "&filter=" + quote("country = BR"))
    _, low = get_json(base + "&filter=" + quote("country = BR") + "&filter=" + quote("MODEL.fraud_score < 0.3"))
    assert len(everything["arcs"]) == 500 and everything["next_cursor"]
    assert brazil["arcs"] and all(arc["fields"]["country"] == "BR" for arc in brazil["arcs"])
    assert len(low["arcs"]) < len(brazil["arcs"])
    assert all(arc["fields"]["MODEL.fraud_score"] < 0.3 for arc in low["arcs"])


def test_the_api_answers_the_same_json_on_both_stores(
    dashboard: DashboardServer, postgres_dashboard: DashboardServer, generated_at: float
) -> None:
    since, until = (
        datetime.fromtimestamp(moment, timezone.utc).isoformat() for moment in (generated_at - 86400, generated_at)
    )
    periods = urlencode({"since": since, "until": until})
    for path in (
        f"api/classes?{periods}",
        f"api/classes/FRAUD_SCORER/report?{periods}&by=country",
        "api/arcs?arc_class=FRAUD_SCORER&since=30d&limit=100&filter=" + quote("country = BR"),
        "api/arcs/demo-1",
        "api/alerts?state=all",
    ):
        answers = []
        for server in (dashboard, postgres_dashboard):
            status, data = get_json(server.url + path)
            assert status == 200, (path, data)
            data.pop("generated_at", None)
            if data.get("next_cursor"):  # the position of the last ARC: SQLite's rowid, PostgreSQL's seq
                data["next_cursor"] = data["next_cursor"].partition(":")[0]
            answers.append(data)
        assert answers[0] == answers[1], path


def test_pages_follow_the_cursor_without_repeating_an_arc(dashboard: DashboardServer) -> None:
    url = dashboard.url + "api/arcs?arc_class=FRAUD_SCORER&since=30d&limit=200"
    seen = []
    cursor = ""
    while True:
        _, page = get_json(url + (f"&cursor={quote(cursor)}" if cursor else ""))
        seen += [arc["context_id"] for arc in page["arcs"]]
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 1800


def test_an_arc_shows_its_fields_globals_and_sub_arc_tree(dashboard: DashboardServer) -> None:
    status, data = get_json(dashboard.url + "api/arcs/demo-1")
    assert status == 200
    (arc,) = data["arcs"]
    assert arc["globals"] == {"service": "payments"}
    model = arc["sub_arcs"]["model"]
    assert model["fields"]["fraud_score"] == 0.42
    assert model["sub_arcs"]["calibration"]["fields"]["bias"] == 0.01


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("api/classes/NO_SUCH_CLASS/report", 404, "no ARC of class"),
        ("api/arcs/no-such-arc", 404, "no ARC with id"),
        ("api/arcs?filter=" + quote("score < high"), 400, "needs a number"),
        ("api/arcs?filter=" + quote("= DE"), 400, "is not a filter"),
        ("api/arcs?filter=" + quote("x" * 300 + " = 1"), 400, "at most"),
        ("api/arcs?" + "&".join(["filter=a%3D1"] * 11), 400, "at most 10 filters"),
        ("api/arcs?limit=100000000000000000000", 400, "limit"),
        ("api/arcs?limit=-1", 400, "limit"),
        ("api/arcs?limit=ten", 400, "not a whole number"),
        ("api/arcs?cursor=garbage", 400, "not a page cursor"),
        ("api/classes?since=yesterday-ish", 400, "--since"),
        ("api/classes?since=1h&until=2h", 400, "start before it ends"),
        ("api/classes/FRAUD_SCORER/report?baseline=nonsense", 400, "--baseline"),
        ("api/classes/FRAUD_SCORER/report?by=no_such_dimension", 400, "not a dimension"),
        ("api/alerts?state=maybe", 400, "open, resolved or all"),
        ("api/no/such/endpoint", 404, "no API endpoint"),
    ],
)
def test_bad_api_input_is_a_clear_4xx(dashboard: DashboardServer, path: str, status: int, says: str) -> None:
    answer, headers, body = get(dashboard.url + path)
    assert answer == status, body
    assert headers["Content-Type"] == "application/json"
    assert says in body.decode()
    assert b"Traceback" not in body


@pytest.mark.parametrize(
    "path",
    [
        "static/../../../etc/passwd",
        "static/%2e%2e/%2e%2e/app.py",
        "static/..%2f..%2fapp.py",
        "static/vendor/../../app.py",
        "static/%00",
        "class/NO_SUCH_CLASS",
        "arc/no-such-arc",
        "arc/" + "x" * 2000,
        "nowhere",
    ],
)
def test_bad_page_and_asset_urls_are_a_clear_404(dashboard: DashboardServer, path: str) -> None:
    status, _, body = get(dashboard.url + path)
    assert status in (400, 404), body
    assert b"Traceback" not in body and b"root:" not in body and b"import" not in body


def test_pages_and_assets_are_served_from_the_package(dashboard: DashboardServer) -> None:
    for path in ["", "class/FRAUD_SCORER", "arcs", "arc/demo-1", "alerts"]:
        status, headers, body = get(dashboard.url + path)
        assert status == 200 and b'<main id="main">' in body
        assert "default-src 'self'" in headers["Content-Security-Policy"]
    for asset in [
        "static/app.js",
        "static/app.css",
        "static/vendor/uplot/uPlot.iife.min.js",
        "static/vendor/uplot/LICENSE",
    ]:
        assert get(dashboard.url + asset)[0] == 200


def test_a_token_guards_pages_api_and_metrics(demo_db: Path) -> None:
    with load_server()(demo_db, DashboardSettings(port=0, token="s3cret")) as server:
        for path in ["", "api/classes", "metrics", "static/app.js"]:
            assert get(server.url + path)[0] == 401
            assert get(server.url + path, {"Authorization": "Bearer wrong"})[0] == 401
        assert get(server.url + "api/health", {"Authorization": "Bearer s3cret"})[0] == 200
        basic = base64.b64encode(b"anyone:s3cret").decode()
        assert get(server.url + "metrics", {"Authorization": f"Basic {basic}"})[0] == 200
        assert get(server.url + "?token=wrong")[0] == 401
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", "/alerts?token=s3cret&state=all")
        answer = connection.getresponse()
        connection.close()
        # sent to the same page without the token, which now travels in an HttpOnly cookie
        assert (answer.status, answer.getheader("Location")) == (303, "/alerts?state=all")
        assert "mona_token=s3cret" in answer.getheader("Set-Cookie", "")
        assert "HttpOnly" in answer.getheader("Set-Cookie", "")
        assert get(server.url + "api/classes", {"Cookie": "mona_token=s3cret"})[0] == 200


def test_a_non_loopback_address_needs_a_token() -> None:
    with pytest.raises(ValueError, match="not loopback"):
        DashboardSettings(port=0, bind="0.0.0.0")
    assert DashboardSettings(port=0, bind="0.0.0.0", token="t").token == "t"
    assert DashboardSettings(port=0, bind="::1").token is None


def test_mona_ui_refuses_a_public_address_without_a_token(demo_db: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mona_collector.cli", "ui", "--db", str(demo_db), "--bind", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "not loopback" in done.stderr and "--token-file" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_mona_without_the_ui_extra_says_how_to_install_it(demo_db: Path, tmp_path: Path) -> None:
    # A folder that shadows flask with a module that cannot be imported, as if it were not installed.
    (tmp_path / "flask").mkdir()
    (tmp_path / "flask" / "__init__.py").write_text("raise ImportError('No module named flask', name='flask')\n")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from mona_collector.cli import main; "
            f"sys.exit(main(['ui', '--db', {str(demo_db)!r}, '--port', '0']))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert 'pip install "mona-client[ui]"' in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_filters_compare_numbers_as_numbers_and_text_as_text() -> None:
    assert parse_filter("score < 0.5").matches({"score": 0.25})
    assert not parse_filter("score < 0.5").matches({"score": "0.25"})
    assert parse_filter("n = 3").matches({"n": 3.0})
    assert parse_filter("flag = true").matches({"flag": True})
    assert parse_filter("country != DE").matches({})
    assert not parse_filter("country = DE").matches({})
    with pytest.raises(FilterError):
        parse_filter("score <")


def test_alerts_come_from_the_alert_state_when_rules_were_evaluated(tmp_path: Path) -> None:
    path = tmp_path / "alerts.db"
    SQLiteStore(path).close()  # a collector's database
    assert list_alerts(path, open_only=True) == []  # no rule ever evaluated
    with contextlib.closing(alert_state.connect(path)) as db:
        db.executemany(
            "INSERT INTO mona_alerts (rule, arc_class, subject, severity, state, opened_at, resolved_at, message)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("psi", "A", "k", "warning", "open", 2.0, None, "psi above 0.25"),
                ("psi", "A", "j", "warning", "resolved", 1.0, 3.0, "resolved one"),
                ("psi", "A", "m", "warning", "pending", None, None, "firing once, not open yet"),
            ],
        )
    assert [alert["message"] for alert in list_alerts(path, open_only=True)] == ["psi above 0.25"]
    assert [alert["subject"] for alert in list_alerts(path, open_only=False)] == ["k", "j"]
