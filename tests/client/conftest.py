"""Fixtures of the client's tests: the client started against a real Forward receiver."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from mona_client import client
from tests.support.receiver import ForwardReceiver


@pytest.fixture
def mona(receiver: ForwardReceiver, tmp_path: Path) -> Iterator[ForwardReceiver]:
    """The client started against ``receiver`` with a config file of its own; closed afterwards."""
    config = tmp_path / "mona_client_config.json"
    config.write_text('{"disable_all": false}')
    client.init_client(port=receiver.port, user_id="tester", config_file=str(config), print_logs=False)
    client.reset()
    yield receiver
    client.reset()
    client.close(timeout=5)
