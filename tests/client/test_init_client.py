"""init_client() with the original client's argument names: each maps to today's setting or is
accepted with one deprecation line where it no longer applies."""

from __future__ import annotations

import logging
import warnings

import pytest

from mona_client import client
from tests.support.receiver import free_port


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "mona_client_config.json"
    path.write_text('{"disable_all": false}')
    return str(path)


@pytest.fixture(autouse=True)
def _closed_after():
    yield
    client.reset()
    client.close(5)


def deprecations(caught):
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]


def test_the_original_call_works_unchanged_and_delivers(receiver, config_file, caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="mona-logger"):
        warnings.simplefilter("always")
        client.init_client(
            mona_host="127.0.0.1",
            mona_port=receiver.port,
            user_id="legacy-user",
            mona_use_ssl=False,
            queue_maxsize=1000,
            queue_circular=True,
            blocking=False,
            config_file=config_file,
            print_logs=False,
        )
    settings = client._runtime.settings
    assert (settings.host, settings.port, settings.user_id, settings.tls, settings.blocking) == (
        "127.0.0.1",
        receiver.port,
        "legacy-user",
        False,
        False,
    )
    warned = deprecations(caught)
    assert len(warned) == 2 and "queue_maxsize" in warned[0] and "queue_circular" in warned[1]
    assert all("no longer applies" in text and "spool" in text for text in warned)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(logged) == 2 and "queue_maxsize" in logged[0] and "queue_circular" in logged[1]
    with client.new_mona_context(arc_class="LEGACY", context_id="legacy-run"):
        assert client.export({"ok": 1})
    assert client.flush(10)
    records = receiver.wait_records(2)
    assert [(r["user_id"], r["context"], r["message"]) for r in records] == [
        ("legacy-user", "legacy-run", {"MONA_ARC_CLASS": "LEGACY"}),
        ("legacy-user", "legacy-run", {"ok": 1}),
    ]


def test_mona_use_ssl_turns_tls_on(config_file):
    client.init_client(
        mona_host="127.0.0.1", mona_port=free_port(), mona_use_ssl=True, config_file=config_file, print_logs=False
    )
    assert client._runtime.settings.tls is True


@pytest.mark.parametrize("name, value", [("queue_maxsize", 10), ("queue_circular", False)])
def test_each_argument_that_no_longer_applies_warns_once(receiver, config_file, name, value):
    with pytest.warns(DeprecationWarning, match=f"{name}=.*no longer applies") as caught:
        client.init_client(port=receiver.port, config_file=config_file, print_logs=False, **{name: value})
    assert len(deprecations(caught)) == 1


def test_the_new_name_wins_over_the_old_one_with_a_line(receiver, config_file, caplog):
    with caplog.at_level(logging.WARNING, logger="mona-logger"):
        client.init_client(
            host="127.0.0.1",
            mona_host="192.0.2.1",
            port=receiver.port,
            mona_port=receiver.port,
            config_file=config_file,
            print_logs=False,
        )
    assert client._runtime.settings.host == "127.0.0.1"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "init_client(): both host='127.0.0.1' and mona_host='192.0.2.1' given; using host"
    ]
