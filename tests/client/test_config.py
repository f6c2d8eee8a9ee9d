"""Tests of mona_client.config against real files on disk, real watchdog observers and real gevent."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from mona_client import config as cfg
from mona_client.config import (
    DEFAULT_CONFIG_FILE,
    ConfigError,
    ConfigWatcher,
    Settings,
    load_config_file,
    parse_bool,
    parse_float,
    parse_int,
    parse_size,
    settings_from_env,
)

REPO = Path(__file__).resolve().parents[2]
WAIT = 5.0


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return condition()
        time.sleep(0.01)
    return True


def errors(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name == "mona-logger"]


def write(path: Path, content: Any) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mona-logger")


# --- environment values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("true", True),
        ("TRUE", True),
        (" yes\n", True),
        ("1", True),
        ("Yes", True),
        ("false", False),
        ("False", False),
        ("no", False),
        ("0", False),
        ("  NO ", False),
    ],
)
def test_parse_bool_valid(raw: str, expected: bool, caplog: pytest.LogCaptureFixture) -> None:
    assert parse_bool("MONA_X", raw, not expected) is expected
    assert errors(caplog) == []


@pytest.mark.parametrize("raw", ["ture", "on", "off", "2", "-1", "y", "n", "t", "true!", "yes please", "0.0"])
@pytest.mark.parametrize("default", [True, False])
def test_parse_bool_invalid_logs_and_defaults(raw: str, default: bool, caplog: pytest.LogCaptureFixture) -> None:
    assert parse_bool("MONA_DISABLE_ALL", raw, default) is default
    (line,) = errors(caplog)
    assert "MONA_DISABLE_ALL" in line and repr(raw) in line


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_parse_bool_unset_or_empty_is_default_without_log(raw: Any, caplog: pytest.LogCaptureFixture) -> None:
    assert parse_bool("MONA_X", raw, True) is True
    assert errors(caplog) == []


@pytest.mark.parametrize(
    "raw, expected, logged",
    [
        ("8080", 8080, False),
        (" 1 ", 1, False),
        ("65535", 65535, False),
        ("0", 24224, True),
        ("65536", 24224, True),
        ("-5", 24224, True),
        ("80a", 24224, True),
        ("8.0", 24224, True),
        ("1_000", 24224, True),
        ("", 24224, False),
    ],
)
def test_parse_int(raw: str, expected: int, logged: bool, caplog: pytest.LogCaptureFixture) -> None:
    assert parse_int("MONA_PORT", raw, 24224, 1, 65535) == expected
    assert bool(errors(caplog)) is logged
    if logged:
        assert "MONA_PORT" in errors(caplog)[0] and repr(raw) in errors(caplog)[0]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1048576", 2**20),
        ("64MiB", 64 * 2**20),
        ("64mib", 64 * 2**20),
        ("1GB", 10**9),
        ("1 GiB", 2**30),
        ("1.5KiB", 1536),
        ("10kb", 10_000),
        ("0", 0),
        ("7B", 7),
    ],
)
def test_parse_size_valid(raw: str, expected: int, caplog: pytest.LogCaptureFixture) -> None:
    assert parse_size("MONA_SPOOL_MAX_BYTES", raw, 1) == expected
    assert errors(caplog) == []


@pytest.mark.parametrize("raw", ["64M", "1G", "-1", "lots", "1.2.3MiB", "MiB", "1e9"])
def test_parse_size_invalid(raw: str, caplog: pytest.LogCaptureFixture) -> None:
    assert parse_size("MONA_SPOOL_MAX_BYTES", raw, 123) == 123
    assert "MONA_SPOOL_MAX_BYTES" in errors(caplog)[0]


@pytest.mark.parametrize(
    "raw, expected", [("2.5", 2.5), ("0", 0.0), ("-1", 5.0), ("nan", 5.0), ("inf", 5.0), ("soon", 5.0)]
)
def test_parse_float(raw: str, expected: float, caplog: pytest.LogCaptureFixture) -> None:
    assert parse_float("MONA_FLUSH_TIMEOUT", raw, 5.0) == expected
    assert bool(errors(caplog)) is (expected == 5.0)


def test_settings_defaults(tmp_path: Path) -> None:
    s = settings_from_env({"HOME": str(tmp_path)})
    assert s == Settings(spool_dir=str(tmp_path / ".local" / "state" / "mona" / "spool"))
    assert (s.host, s.port, s.user_id, s.config_file) == ("127.0.0.1", 24224, "", DEFAULT_CONFIG_FILE)
    assert (s.disable_all, s.should_raise_exceptions, s.logging_level, s.print_logs) == (False, False, "INFO", True)
    assert (s.spool_max_bytes, s.flush_timeout, s.blocking) == (256 * 2**20, 5.0, False)
    assert (s.shared_key, s.tls, s.tls_ca_file) == (None, False, None)
    assert os.path.isfile(DEFAULT_CONFIG_FILE) and load_config_file(DEFAULT_CONFIG_FILE) == {"disable_all": False}


def test_settings_from_env_values(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "HOME": "/home/h",
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "MONA_HOST": "collector",
        "MONA_PORT": "9999",
        "MONA_USER_ID": " ops@example.com",
        "MONA_CLIENT_CONFIG_FILE": "~/mona.json",
        "MONA_DISABLE_ALL": "yes",
        "MONA_SHOULD_RAISE_EXCEPTIONS": "1",
        "MONA_LOGGING_LEVEL": "debug",
        "MONA_PRINT_LOGS": "false",
        "MONA_SPOOL_MAX_BYTES": "64MiB",
        "MONA_FLUSH_TIMEOUT": "0.5",
        "MONA_BLOCKING": "TRUE",
        "MONA_SHARED_KEY": "s3cret",
        "MONA_TLS": "true",
        "MONA_TLS_CA_FILE": "/ca.pem",
    }
    s = settings_from_env(env)
    assert s.host == "collector" and s.port == 9999 and s.user_id == " ops@example.com"
    assert s.config_file == os.path.expanduser("~/mona.json")
    assert s.disable_all and s.should_raise_exceptions and s.blocking and s.tls and not s.print_logs
    assert s.logging_level == "DEBUG" and s.spool_max_bytes == 64 * 2**20 and s.flush_timeout == 0.5
    assert s.spool_dir == str(tmp_path / "state" / "mona" / "spool")
    assert s.shared_key == "s3cret" and "s3cret" not in repr(s)
    assert s.tls_ca_file == "/ca.pem"
    assert errors(caplog) == []


def test_settings_bad_values_log_and_default(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "HOME": "/h",
        "XDG_STATE_HOME": "relative/ignored",
        "MONA_PORT": "http",
        "MONA_DISABLE_ALL": "ture",
        "MONA_LOGGING_LEVEL": "LOUD",
        "MONA_SPOOL_MAX_BYTES": "big",
        "MONA_FLUSH_TIMEOUT": "-3",
    }
    s = settings_from_env(env)
    assert (s.port, s.disable_all, s.logging_level, s.spool_max_bytes, s.flush_timeout) == (
        24224,
        False,
        "INFO",
        256 * 2**20,
        5.0,
    )
    assert s.spool_dir == "/h/.local/state/mona/spool"
    logged = " ".join(errors(caplog))
    for name in ("MONA_PORT", "MONA_DISABLE_ALL", "MONA_LOGGING_LEVEL", "MONA_SPOOL_MAX_BYTES", "MONA_FLUSH_TIMEOUT"):
        assert name in logged


def test_env_disable_all_forces_off_but_never_on() -> None:
    on, off = Settings(disable_all=True, spool_dir="/s"), Settings(spool_dir="/s")
    assert cfg.is_disabled(on, {"disable_all": False})
    assert cfg.is_disabled(off, {"disable_all": True})
    assert not cfg.is_disabled(off, {"disable_all": False})


# --- the config file ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1]", "JSON object"),
        ('"x"', "JSON object"),
        ('{"disable_all": "false"}', "'disable_all' must be"),
        ('{"disable_all": 0}', "'disable_all' must be"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_load_errors(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "c.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        write(path, content)
    with pytest.raises(ConfigError, match=message) as info:
        load_config_file(str(path))
    assert str(path) in str(info.value)


def test_load_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config_file(str(tmp_path))


def test_unknown_keys_kept_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.json"
    write(path, {"disable_all": True, "retention_days": 5, "zeta": [1]})
    assert load_config_file(str(path)) == {"disable_all": True, "retention_days": 5, "zeta": [1]}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retention_days" in warnings[0] and "zeta" in warnings[0]


# --- the watcher ----------------------------------------------------------------------------


class Recorder:
    """Collects what the watcher reports, safely across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: List[Dict[str, Any]] = []

    def __call__(self, config: Dict[str, Any]) -> None:
        with self.lock:
            self.seen.append(config)

    @property
    def last(self) -> Dict[str, Any]:
        with self.lock:
            return self.seen[-1] if self.seen else {}


@pytest.fixture(params=["native", "polling"])
def watched(request: pytest.FixtureRequest, tmp_path: Path):
    path = tmp_path / "mona_client_config.json"
    write(path, {"disable_all": False})
    rec = Recorder()
    watcher = ConfigWatcher(str(path), rec, polling=request.param == "polling")
    watcher.start()
    yield path, watcher, rec
    watcher.stop()


def test_start_reports_initial_config_and_logs_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.json"
    write(path, {"disable_all": True})
    rec = Recorder()
    watcher = ConfigWatcher(str(path), rec)
    try:
        watcher.start()
        watcher.start()  # a second start neither reloads nor starts a second observer
        assert rec.seen == [{"disable_all": True}] and watcher.config == {"disable_all": True}
        assert f"mona-client config file: {path}" in caplog.messages
    finally:
        watcher.stop()
    watcher.stop()


@pytest.mark.parametrize("content", [None, "{not json", '{"disable_all": "yes"}'])
def test_start_with_bad_file_uses_defaults_and_says_why(
    tmp_path: Path, content: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.json"
    if content is not None:
        write(path, content)
    rec = Recorder()
    watcher = ConfigWatcher(str(path), rec)
    try:
        watcher.start()
        assert rec.seen == [{"disable_all": False}]
        assert len(errors(caplog)) == 1 and str(path) in errors(caplog)[0]
        write(path, {"disable_all": True})  # fixing the file later is picked up
        assert wait_for(lambda: rec.last == {"disable_all": True})
    finally:
        watcher.stop()


def test_rewrite_in_place(watched) -> None:
    path, watcher, rec = watched
    write(path, {"disable_all": True})
    assert wait_for(lambda: rec.last == {"disable_all": True})
    assert watcher.config == {"disable_all": True}
    write(path, {"disable_all": False, "extra": 1})
    assert wait_for(lambda: rec.last == {"disable_all": False, "extra": 1})


def test_atomic_replace(watched) -> None:
    path, _watcher, rec = watched
    tmp = path.with_name(path.name + ".tmp")
    write(tmp, {"disable_all": True})
    os.replace(tmp, path)
    assert wait_for(lambda: rec.last == {"disable_all": True})


def test_delete_keeps_last_good_then_recreate(watched, caplog: pytest.LogCaptureFixture) -> None:
    path, watcher, rec = watched
    write(path, {"disable_all": True})
    assert wait_for(lambda: rec.last == {"disable_all": True})
    path.unlink()
    assert wait_for(lambda: any("does not exist" in m for m in errors(caplog)))
    assert watcher.config == {"disable_all": True} and watcher.reload() == {"disable_all": True}
    write(path, {"disable_all": False, "again": True})
    assert wait_for(lambda: rec.last == {"disable_all": False, "again": True})
    assert sum("does not exist" in m for m in errors(caplog)) == 1


def test_half_written_keeps_last_good_and_logs(watched, caplog: pytest.LogCaptureFixture) -> None:
    path, watcher, rec = watched
    write(path, '{"disable_all": tr')
    assert wait_for(lambda: any("not valid JSON" in m for m in errors(caplog)))
    assert watcher.config == {"disable_all": False} and rec.seen == [{"disable_all": False}]
    write(path, '{"disable_all": true}')
    assert wait_for(lambda: rec.last == {"disable_all": True})


def test_same_content_is_not_a_change(watched) -> None:
    path, _watcher, rec = watched
    write(path, '{ "disable_all" :  false }\n')
    write(path, {"disable_all": True})  # a marker, to know the first write has been seen
    assert wait_for(lambda: rec.last == {"disable_all": True})
    assert rec.seen == [{"disable_all": False}, {"disable_all": True}]


def test_broken_rewrites_under_concurrent_reads_keep_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.json"
    good = {"disable_all": True, "level": 3}
    write(path, good)
    rec = Recorder()
    watcher = ConfigWatcher(str(path), rec)
    watcher.start()
    bad_reads: List[Dict[str, Any]] = []
    reads = [0]
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            current = watcher.config
            reads[0] += 1
            if current != good:
                bad_reads.append(current)
            time.sleep(0)  # let the writer and the observer have the GIL too

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    broken = ["{", "", "[]", '{"disable_all": "on"}', '{"disable_all": tru', "null"]
    try:
        for i in range(300):
            write(path, broken[i % len(broken)])
            if i % 50 == 0:
                watcher.reload()
        time.sleep(0.3)
    finally:
        done.set()
        for t in threads:
            t.join()
    try:
        assert reads[0] > 100 and bad_reads == []
        assert rec.seen == [good] and watcher.config == good
        problems = errors(caplog)
        assert 1 <= len(problems) <= len(broken) and len(set(problems)) == len(problems)
        write(path, {"disable_all": False})  # the watcher is still alive after all that
        assert wait_for(lambda: rec.last == {"disable_all": False})
    finally:
        watcher.stop()


def test_callback_errors_are_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.json"
    write(path, {"disable_all": False})
    calls: List[Dict[str, Any]] = []

    def explode(config: Dict[str, Any]) -> None:
        calls.append(config)
        raise RuntimeError("boom")

    watcher = ConfigWatcher(str(path), explode)
    try:
        watcher.start()
        write(path, {"disable_all": True})
        assert wait_for(lambda: len(calls) == 2)
        write(path, {"disable_all": False})  # the observer thread survived the exception
        assert wait_for(lambda: len(calls) == 3)
        assert sum("handler failed" in m for m in errors(caplog)) >= 2
    finally:
        watcher.stop()


def test_symlinked_config_follows_target_edits(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "c.json"
    write(target, {"disable_all": False})
    link = tmp_path / "link.json"
    link.symlink_to(target)
    rec = Recorder()
    watcher = ConfigWatcher(str(link), rec)
    try:
        watcher.start()
        write(target, {"disable_all": True})
        assert wait_for(lambda: rec.last == {"disable_all": True})
    finally:
        watcher.stop()


def test_missing_directory_falls_back_to_polling(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "later" / "c.json"
    rec = Recorder()
    watcher = ConfigWatcher(str(path), rec)
    try:
        watcher.start()
        assert rec.seen == [{"disable_all": False}]
        assert any("polling" in r.getMessage() for r in caplog.records)
        path.parent.mkdir()
        write(path, {"disable_all": True})
        assert wait_for(lambda: rec.last == {"disable_all": True})
    finally:
        watcher.stop()


def test_stop_joins_observer_threads(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    write(path, {"disable_all": False})
    before = set(threading.enumerate())
    watcher = ConfigWatcher(str(path), Recorder())
    watcher.start()
    started = set(threading.enumerate()) - before
    assert started and all(t.daemon for t in started)
    watcher.stop()
    assert wait_for(lambda: not any(t.is_alive() for t in started), timeout=3)


# --- processes: import side effects, exit, gevent -------------------------------------------


def run_python(code: str, *args: str, timeout: float = 20, **popen: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE,
        **popen,
    )


def test_import_starts_no_thread_and_imports_neither_watchdog_nor_gevent() -> None:
    proc = run_python(
        """
        import sys, threading
        before = threading.active_count()
        import mona_client.config
        assert threading.active_count() == before, threading.enumerate()
        assert not [m for m in sys.modules if m.split(".")[0] in ("watchdog", "gevent")]
        assert not mona_client.config.gevent_monkey_patched()
        print("ok")
        """
    )
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and out.strip() == "ok", err


def test_program_exits_while_watcher_runs(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    write(path, {"disable_all": False})
    proc = run_python(
        """
        import sys
        from mona_client.config import ConfigWatcher
        ConfigWatcher(sys.argv[1], print).start()  # never stopped: must not keep the program alive
        """,
        str(path),
    )
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.strip() == "{'disable_all': False}"


GEVENT_CHILD = """
from gevent import monkey
monkey.patch_all()
import json, sys, time
import gevent
from mona_client.config import ConfigWatcher, gevent_monkey_patched

path = sys.argv[1]
seen = []
ticks = [0]

def ticker():
    while True:
        ticks[0] += 1
        gevent.sleep(0.01)

gevent.spawn(ticker)
watcher = ConfigWatcher(path, seen.append)
watcher.start()
print("ready", json.dumps(seen), flush=True)
ticks_at_ready = ticks[0]
deadline = time.monotonic() + 10
while time.monotonic() < deadline and not (seen and seen[-1].get("disable_all") is True):
    gevent.sleep(0.02)
ticks_while_waiting = ticks[0] - ticks_at_ready
watcher.stop()
print(json.dumps({"seen": seen, "ticks": ticks_while_waiting, "patched": gevent_monkey_patched(),
                  "observer": type(watcher).__name__}), flush=True)
"""


def test_gevent_patched_process_sees_change_without_starving_hub(tmp_path: Path) -> None:
    pytest.importorskip("gevent")
    path = tmp_path / "c.json"
    write(path, {"disable_all": False})
    proc = run_python(GEVENT_CHILD, str(path))
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("ready"), ready + proc.stderr.read() if proc.stderr else ""
        assert json.loads(ready.split(" ", 1)[1]) == [{"disable_all": False}]
        time.sleep(0.3)  # the child's hub keeps running meanwhile; then edit the file
        tmp = path.with_name("c.json.tmp")
        write(tmp, {"disable_all": True, "via": "replace"})
        os.replace(tmp, path)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["patched"] is True
    assert result["seen"] == [{"disable_all": False}, {"disable_all": True, "via": "replace"}]
    # The ticker runs every 10 ms; at least 0.3 s passed before the edit, so a live hub ticked many times.
    assert result["ticks"] >= 10
    assert "Traceback" not in err


# --- a Kubernetes ConfigMap volume, and a directory replaced --------------------------------


class ConfigMapVolume:
    """A directory laid out and updated as the kubelet updates a mounted ConfigMap.

    The file is a symlink ``config.json -> ..data/config.json``; ``..data`` is a symlink to a timestamped
    directory. An update writes a new timestamped directory, points ``..data_tmp`` at it, renames
    ``..data_tmp`` over ``..data`` (the atomic swap) and removes the old directory.
    """

    def __init__(self, root: Path, content: Dict[str, Any]) -> None:
        self.root = root
        self.updates = 0
        self.current = self._new_version(content)
        (root / "..data").symlink_to(self.current.name)
        (root / "config.json").symlink_to(Path("..data") / "config.json")

    @property
    def path(self) -> Path:
        return self.root / "config.json"

    def _new_version(self, content: Dict[str, Any]) -> Path:
        self.updates += 1
        version = self.root / f"..2026_01_02_03_04_{self.updates:02d}.{os.getpid()}"
        version.mkdir()
        write(version / "config.json", content)
        return version

    def update(self, content: Dict[str, Any]) -> None:
        old, self.current = self.current, self._new_version(content)
        (self.root / "..data_tmp").symlink_to(self.current.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")
        (old / "config.json").unlink()
        old.rmdir()


@pytest.mark.parametrize("polling", [False, True], ids=["native", "polling"])
def test_every_configmap_update_is_seen(tmp_path: Path, polling: bool) -> None:
    volume = ConfigMapVolume(tmp_path, {"disable_all": False, "version": 0})
    rec = Recorder()
    watcher = ConfigWatcher(str(volume.path), rec, polling=polling)
    try:
        watcher.start()
        assert rec.last == {"disable_all": False, "version": 0}
        for version in range(1, 6):
            expected = {"disable_all": version % 2 == 1, "version": version}
            volume.update(expected)
            assert wait_for(lambda expected=expected: rec.last == expected), (
                f"update {version} was not seen: {rec.last}"
            )
    finally:
        watcher.stop()
    assert [c["version"] for c in rec.seen] == list(range(6))


@pytest.mark.parametrize("polling", [False, True], ids=["native", "polling"])
def test_a_config_directory_renamed_away_and_recreated_is_seen(tmp_path: Path, polling: bool) -> None:
    directory = tmp_path / "conf"
    directory.mkdir()
    path = directory / "c.json"
    write(path, {"disable_all": False, "round": 0})
    rec = Recorder()
    watcher = ConfigWatcher(str(path), rec, polling=polling)
    try:
        watcher.start()
        for round_ in range(1, 4):
            directory.rename(tmp_path / f"conf_old{round_}")
            directory.mkdir()
            write(path, {"disable_all": True, "round": round_})
            assert wait_for(lambda round_=round_: rec.last == {"disable_all": True, "round": round_}), rec.last
            # ...and later edits in the new directory too.
            write(path, {"disable_all": False, "round": round_})
            assert wait_for(lambda round_=round_: rec.last == {"disable_all": False, "round": round_}), rec.last
    finally:
        watcher.stop()


def test_the_example_config_at_the_top_of_the_tree_is_the_packaged_default() -> None:
    example = json.loads((REPO / "mona_client_config.json").read_text(encoding="utf-8"))
    with open(DEFAULT_CONFIG_FILE, encoding="utf-8") as packaged:
        assert example == json.load(packaged)
    assert not (REPO / "mona_client_config.json").is_symlink()
    assert load_config_file(str(REPO / "mona_client_config.json")) == {"disable_all": False}
