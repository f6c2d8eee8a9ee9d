"""A real PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` in a temporary folder.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user (``runuser``),
in a folder under ``/tmp`` that user owns, listening on a free TCP port of 127.0.0.1 only (the unix
socket goes into the same folder). Each test gets a database of its own (see
``tests/collector/conftest.py``); the server lives for the whole session.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import pytest

#: Where Debian's ``postgresql`` package installs the server's programs.
PG_BIN_DIRS = [Path(f"/usr/lib/postgresql/{version}/bin") for version in (17, 16, 15, 14, 13)]


def find_bin_dir() -> Optional[Path]:
    """The folder holding ``initdb`` and ``pg_ctl`` (``$MONA_TEST_PG_BIN`` first), or None."""
    explicit = os.environ.get("MONA_TEST_PG_BIN")
    candidates = [Path(explicit)] if explicit else []
    candidates += PG_BIN_DIRS
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, started with :meth:`start`, removed by :meth:`destroy`.

    ``fsync`` False (the tests' default) keeps commits cheap; a restart with ``pg_ctl restart`` (a
    clean shutdown) loses nothing either way. The bench passes True for honest figures.
    """

    def __init__(self, bin_dir: Path, fsync: bool = False) -> None:
        self.bin_dir = bin_dir
        self.fsync = fsync
        self.user: Optional[pwd.struct_passwd] = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.base = Path(tempfile.mkdtemp(prefix="mona-pg-", dir="/tmp"))
        self.data = self.base / "data"
        self.port = _free_port()
        if self.user is not None:
            os.chown(self.base, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        command: List[str] = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user.pw_name, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True, cwd=self.base)

    def start(self) -> None:
        """Create the cluster (first time) and start it; waits until it accepts connections."""
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self._pg_ctl("start")

    def _pg_ctl(self, *action: str) -> None:
        durable = "on" if self.fsync else "off"
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c max_connections=200"
            f" -c fsync={durable} -c full_page_writes={durable}"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-o", options, "-w", *action)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """``pg_ctl restart``: every connection is cut, the server comes back on the same port."""
        self._pg_ctl("-m", "fast", "restart")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"mona_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop()
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; the tests that need it are skipped where it is not installed."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'mona-client[postgres]')")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Union[Path, str]:
    """``--db`` of each store in turn: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "collector.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


def build_any_database(db: Union[Path, str], records: Iterable[Dict[str, Any]], timeout: float = 600.0) -> None:
    """``records`` appended to the raw log of ``db`` (an SQLite file or a PostgreSQL URL) as received
    messages and merged by a real collector, as ``bench.report_data.build_database`` does for SQLite."""
    import msgpack

    from bench.report_data import CHUNK_EVENTS, build_database
    from mona_client.record import TAG
    from mona_collector.databases import migrate, open_raw_log
    from mona_collector.service import Collector
    from mona_collector.store import RawChunk
    from tests.support.collector import wait_merged

    if isinstance(db, Path):
        build_database(db, records)
        return
    migrate(db)
    raw = open_raw_log(db)
    packer = msgpack.Packer(use_bin_type=True)
    batch: List[Tuple[bytes, float]] = []
    try:
        for item in records:
            batch.append((packer.pack([int(item["export_timestamp"]), item]), item["export_timestamp"]))
            if len(batch) >= CHUNK_EVENTS:
                raw.append([_chunk(RawChunk, TAG, batch)])
                batch = []
        if batch:
            raw.append([_chunk(RawChunk, TAG, batch)])
    finally:
        raw.close()
    with Collector(port=0, db_path=db):
        wait_merged(db, timeout)


def _chunk(chunk_type: Any, tag: str, batch: List[Tuple[bytes, float]]) -> Any:
    times = [when for _, when in batch]
    return chunk_type(tag, time.time(), len(batch), min(times), max(times), b"".join(entry for entry, _ in batch))
