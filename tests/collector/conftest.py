"""Fixtures of the collector's tests: a database and a collector running on it; the client's for end-to-end fuzzing."""

from tests.client.conftest import mona
from tests.support.collector import collector, db_path

__all__ = ["collector", "db_path", "mona"]
