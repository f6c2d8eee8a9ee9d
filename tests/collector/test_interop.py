"""Independent Forward clients against the collector: fluent-logger (Python) and @fluent-org/logger (node)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mona_client.record import TAG
from mona_collector import SQLiteStore
from tests.support.collector import stats, stored_arcs

INTEROP = Path(__file__).resolve().parent / "interop"
NODE_CACHE = Path(os.environ.get("MONA_NODE_CACHE", Path.home() / ".cache" / "mona-client" / "interop-node"))


def test_fluent_logger_message_mode(collector, db_path):
    sender = pytest.importorskip("fluent.sender")
    logger = sender.FluentSender("mona.client", host="127.0.0.1", port=collector.port, nanosecond_precision=True)
    try:
        for i in range(20):
            message = {"MONA_ARC_CLASS": "py"} if i == 0 else {"step": i}
            record = {
                "user_id": "py-user",
                "context": "fl-run" if i == 0 else f"fl-run.s{i}",
                "message": message,
                "export_timestamp": 1700000000 + i,
            }
            assert logger.emit("message", record), logger.last_error
    finally:
        logger.close()
    assert collector.wait_for_records(20)
    arc = stored_arcs(db_path, "fl-run")[0]
    assert arc["arc_class"] == "py" and len(arc["sub_arcs"]) == 19


def _node_client(script: str = "fluent_org_send.js") -> Path:
    """The npm package, installed once into a cache directory, next to the scripts of tests/interop/."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the @fluent-org/logger interop test and are not installed")
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    shutil.copy(INTEROP / "package.json", NODE_CACHE / "package.json")
    for source in INTEROP.glob("*.js"):
        shutil.copy(source, NODE_CACHE / source.name)
    if not (NODE_CACHE / "node_modules" / "@fluent-org" / "logger").is_dir():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund"], cwd=NODE_CACHE, check=True, timeout=300, capture_output=True
        )
    return NODE_CACHE / script


@pytest.mark.parametrize("mode", ["PackedForward", "CompressedPackedForward", "Message", "Forward"])
def test_fluent_org_logger_with_ack_and_event_time(collector, db_path, mode):
    script = _node_client()
    context = f"node-{mode}"
    result = subprocess.run(
        ["node", str(script), str(collector.port), "30", mode, context], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr  # 0 only when every emit was acked
    arc = stored_arcs(db_path, context)[0]
    assert arc["arc_class"] == "node-class" and arc["export_count"] == 30
    assert arc["sub_arcs"]["step29"]["fields"] == {"score": 29}
    assert stats(db_path)["tags"][TAG]["events"] == 30
    store = SQLiteStore(db_path, readonly=True)
    try:  # the EventTime nanoseconds made it through
        assert {event.nanoseconds for _, event in store.iter_raw_events(TAG)} == {123456789}
    finally:
        store.close()
