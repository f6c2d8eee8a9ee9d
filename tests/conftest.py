"""Settings every test shares: records left undelivered never reach the user's own spool."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Subprocesses started by tests inherit this too.
    os.environ["MONA_SPOOL_DIR"] = tempfile.mkdtemp(prefix="mona-test-spool-")


from tests.support.fixtures import receiver  # noqa: E402 - a fixture, registered by its name here

__all__ = ["receiver"]
