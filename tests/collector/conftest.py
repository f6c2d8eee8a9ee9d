"""Fixtures of the collector's tests: a database and a collector running on it; the client's for end-to-end fuzzing;
a PostgreSQL server for the tests that run against both stores."""

from tests.client.conftest import mona
from tests.support.collector import any_collector, collector, db_path
from tests.support.postgres import any_db, postgres_server, postgres_url

__all__ = ["any_collector", "any_db", "collector", "db_path", "mona", "postgres_server", "postgres_url"]
