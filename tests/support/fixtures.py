"""A fixture for tests that need a Forward peer: a real receiver on loopback."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.receiver import ForwardReceiver


@pytest.fixture
def receiver() -> Iterator[ForwardReceiver]:
    with ForwardReceiver() as r:
        yield r
