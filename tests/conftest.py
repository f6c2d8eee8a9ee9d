"""Fixtures shared by the client's tests: a real Forward receiver and a client pointed at it."""

from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from receiver import ForwardReceiver  # noqa: E402

from mona_client import client  # noqa: E402


def pytest_configure(config):
    # Records that tests leave undelivered must not land in the user's own spool; subprocesses
    # started by tests inherit this too.
    import tempfile

    os.environ["MONA_SPOOL_DIR"] = tempfile.mkdtemp(prefix="mona-test-spool-")


@pytest.fixture
def receiver() -> Iterator[ForwardReceiver]:
    with ForwardReceiver() as r:
        yield r


@pytest.fixture
def mona(receiver: ForwardReceiver, tmp_path) -> Iterator[ForwardReceiver]:
    """The client started against ``receiver`` with a config file of its own; closed afterwards."""
    config = tmp_path / "mona_client_config.json"
    config.write_text('{"disable_all": false}')
    client.init_client(
        port=receiver.port, user_id="tester", config_file=str(config), print_logs=False
    )
    client.reset()
    yield receiver
    client.reset()
    client.close(timeout=5)
