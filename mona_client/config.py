"""Settings from the environment, and the JSON config file that can change while a program runs.

Two sources configure mona-client:

* environment variables, read once into a frozen :class:`Settings` by :func:`settings_from_env`;
* a small JSON file (``disable_all`` and friends) that operators may edit at run time, watched by
  :class:`ConfigWatcher` so that, for example, monitoring can be switched off without a restart.

A monitoring library must not break the program it monitors, so a bad value never raises here:
environment values that do not parse log an error naming the variable and fall back to the
default, and a watched file that is missing or broken keeps the last good configuration.

Importing this module starts no thread and imports neither watchdog nor gevent; the watcher
imports watchdog when it starts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Set, Tuple, cast

from mona_client.logs import logger

if TYPE_CHECKING:
    from watchdog.events import FileSystemEventHandler

DEFAULT_CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mona_client_config.json")
"""The config file shipped inside the package, used when ``MONA_CLIENT_CONFIG_FILE`` is unset."""

DEFAULT_FILE_CONFIG: Mapping[str, Any] = {"disable_all": False}
"""What the file-based configuration is before any file could be read."""

POLL_INTERVAL = 0.2
"""Seconds between two looks at the config file when the watcher polls instead of using inotify."""

BACKSTOP_POLL_INTERVAL = 1.0
"""Seconds between two looks at what the config file's path resolves to, alongside inotify.

inotify watches inodes, not paths: once the directory holding the file is renamed away and made
again, or a symlink on the path points elsewhere, the watches no longer see the file the path names.
Two ``stat`` calls a second see every such change within a second, whatever moved."""

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_KNOWN_FILE_KEYS: Mapping[str, type] = {
    "disable_all": bool,
    "duration_classes": list,
    "sample_rate": float,  # checked by _check_rates (an int is a rate too)
    "sample_rates": dict,
}
_SIZE_UNITS: Mapping[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$", re.ASCII)
_INT_RE = re.compile(r"^[+-]?\d+$", re.ASCII)


# ---------------------------------------------------------------------------------------------
# Parsing of single environment values


def _blank(raw: Optional[str]) -> bool:
    """An unset or empty variable means "use the default" (``MONA_PORT=`` in a compose file)."""
    return raw is None or not raw.strip()


def _invalid(name: str, raw: str, expected: str, default: object) -> None:
    logger.error("%s=%r is not valid (expected %s); using the default %r", name, raw, expected, default)


def parse_bool(name: str, raw: Optional[str], default: bool) -> bool:
    """Parse a boolean variable strictly: true/false, 1/0 or yes/no, any case, spaces around allowed.

    Strict on purpose: ``MONA_DISABLE_ALL=ture`` must not silently mean "false". Anything else is
    logged as an error naming the variable and the value, and ``default`` is returned.
    """
    if _blank(raw):
        return default
    assert raw is not None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    _invalid(name, raw, "one of true/false/1/0/yes/no", default)
    return default


def parse_int(
    name: str, raw: Optional[str], default: int, minimum: Optional[int] = None, maximum: Optional[int] = None
) -> int:
    """Parse a decimal integer within ``[minimum, maximum]``; log an error and return ``default`` otherwise."""
    if _blank(raw):
        return default
    assert raw is not None
    value = int(raw.strip()) if _INT_RE.match(raw.strip()) else None
    if value is None or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "" if minimum is None else f" >= {minimum}"
        high = "" if maximum is None else f" <= {maximum}"
        _invalid(name, raw, "an integer" + low + (" and" if low and high else "") + high, default)
        return default
    return value


def parse_float(name: str, raw: Optional[str], default: float, minimum: float = 0.0) -> float:
    """Parse a finite number ``>= minimum``; log an error and return ``default`` otherwise."""
    if _blank(raw):
        return default
    assert raw is not None
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        _invalid(name, raw, f"a finite number >= {minimum}", default)
        return default
    return value


def parse_size(name: str, raw: Optional[str], default: int) -> int:
    """Parse a byte count: a plain integer or a number with a unit (``64MiB``, ``1GB``, ``1.5 GiB``).

    Units are case-insensitive; KB/MB/GB/TB are powers of 1000 and KiB/MiB/GiB/TiB powers of 1024.
    Bare ``K``/``M``/``G`` are refused because people disagree on what they mean.
    """
    if _blank(raw):
        return default
    assert raw is not None
    match = _SIZE_RE.match(raw.strip().lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        _invalid(name, raw, "a byte count such as 268435456, 256MiB or 1GB", default)
        return default
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def parse_log_level(name: str, raw: Optional[str], default: str) -> str:
    """Parse a :mod:`logging` level name (``DEBUG``, ``info``...), returned in upper case."""
    if _blank(raw):
        return default
    assert raw is not None
    value = raw.strip().upper()
    if not isinstance(logging.getLevelName(value), int):
        _invalid(name, raw, "a logging level such as DEBUG, INFO, WARNING or ERROR", default)
        return default
    return value


def _path(raw: Optional[str]) -> Optional[str]:
    return None if _blank(raw) else os.path.expanduser(str(raw).strip())


def default_spool_dir(environ: Mapping[str, str] = os.environ) -> str:
    """Per-user spool directory: ``$XDG_STATE_HOME/mona/spool``, else ``~/.local/state/mona/spool``.

    A relative ``XDG_STATE_HOME`` is ignored, as the XDG base directory specification says.
    """
    state = environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):
        home = environ.get("HOME") or os.path.expanduser("~")
        state = os.path.join(home, ".local", "state")
    return os.path.join(state, "mona", "spool")


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Settings:
    """Everything mona-client reads from the environment, parsed once; see docs/configuration.md."""

    host: str = "127.0.0.1"
    port: int = 24224
    user_id: str = ""
    config_file: str = DEFAULT_CONFIG_FILE
    disable_all: bool = False
    should_raise_exceptions: bool = False
    logging_level: str = "INFO"
    print_logs: bool = True
    spool_dir: str = field(default_factory=default_spool_dir)
    spool_max_bytes: int = 256 * 2**20
    flush_timeout: float = 5.0
    blocking: bool = False
    shared_key: Optional[str] = field(default=None, repr=False)  # a secret: kept out of repr and logs
    tls: bool = False
    tls_ca_file: Optional[str] = None
    tls_cert_file: Optional[str] = None
    tls_key_file: Optional[str] = None
    tls_verify: bool = True
    handle_sigterm: bool = True
    max_chunk_bytes: int = 2**20
    max_queue_bytes: int = 64 * 2**20
    max_record_bytes: int = 2**20
    max_context_depth: int = 64
    max_context_id_chars: int = 256
    export_exceptions: bool = True
    exception_message_max_chars: int = 1000


def settings_from_env(environ: Mapping[str, str] = os.environ) -> Settings:
    """Build :class:`Settings` from ``environ``; a bad value logs an error and keeps the default."""
    d = Settings(spool_dir=default_spool_dir(environ))
    get = environ.get
    return Settings(
        host=get("MONA_HOST", "").strip() or d.host,
        port=parse_int("MONA_PORT", get("MONA_PORT"), d.port, 1, 65535),
        user_id=get("MONA_USER_ID", d.user_id),
        config_file=_path(get("MONA_CLIENT_CONFIG_FILE")) or d.config_file,
        disable_all=parse_bool("MONA_DISABLE_ALL", get("MONA_DISABLE_ALL"), d.disable_all),
        should_raise_exceptions=parse_bool(
            "MONA_SHOULD_RAISE_EXCEPTIONS", get("MONA_SHOULD_RAISE_EXCEPTIONS"), d.should_raise_exceptions
        ),
        logging_level=parse_log_level("MONA_LOGGING_LEVEL", get("MONA_LOGGING_LEVEL"), d.logging_level),
        print_logs=parse_bool("MONA_PRINT_LOGS", get("MONA_PRINT_LOGS"), d.print_logs),
        spool_dir=_path(get("MONA_SPOOL_DIR")) or d.spool_dir,
        spool_max_bytes=parse_size("MONA_SPOOL_MAX_BYTES", get("MONA_SPOOL_MAX_BYTES"), d.spool_max_bytes),
        flush_timeout=parse_float("MONA_FLUSH_TIMEOUT", get("MONA_FLUSH_TIMEOUT"), d.flush_timeout),
        blocking=parse_bool("MONA_BLOCKING", get("MONA_BLOCKING"), d.blocking),
        shared_key=get("MONA_SHARED_KEY") or None,
        tls=parse_bool("MONA_TLS", get("MONA_TLS"), d.tls),
        tls_ca_file=_path(get("MONA_TLS_CA_FILE")),
        tls_cert_file=_path(get("MONA_TLS_CERT_FILE")),
        tls_key_file=_path(get("MONA_TLS_KEY_FILE")),
        tls_verify=parse_bool("MONA_TLS_VERIFY", get("MONA_TLS_VERIFY"), d.tls_verify),
        handle_sigterm=parse_bool("MONA_HANDLE_SIGTERM", get("MONA_HANDLE_SIGTERM"), d.handle_sigterm),
        max_chunk_bytes=parse_size("MONA_MAX_CHUNK_BYTES", get("MONA_MAX_CHUNK_BYTES"), d.max_chunk_bytes),
        max_queue_bytes=parse_size("MONA_MAX_QUEUE_BYTES", get("MONA_MAX_QUEUE_BYTES"), d.max_queue_bytes),
        max_record_bytes=parse_size("MONA_MAX_RECORD_BYTES", get("MONA_MAX_RECORD_BYTES"), d.max_record_bytes),
        max_context_depth=parse_int("MONA_MAX_CONTEXT_DEPTH", get("MONA_MAX_CONTEXT_DEPTH"), d.max_context_depth, 1),
        max_context_id_chars=parse_int(
            "MONA_MAX_CONTEXT_ID_CHARS", get("MONA_MAX_CONTEXT_ID_CHARS"), d.max_context_id_chars, 1
        ),
        export_exceptions=parse_bool("MONA_EXPORT_EXCEPTIONS", get("MONA_EXPORT_EXCEPTIONS"), d.export_exceptions),
        exception_message_max_chars=parse_int(
            "MONA_EXCEPTION_MESSAGE_MAX_CHARS",
            get("MONA_EXCEPTION_MESSAGE_MAX_CHARS"),
            d.exception_message_max_chars,
            0,
        ),
    )


def is_disabled(settings: Settings, file_config: Mapping[str, Any]) -> bool:
    """Whether monitoring is off: ``MONA_DISABLE_ALL=true`` forces it off, otherwise the file decides."""
    return settings.disable_all or bool(file_config.get("disable_all", False))


# ---------------------------------------------------------------------------------------------
# The JSON config file


class ConfigError(Exception):
    """The config file is missing, unreadable, not JSON, not an object, or has a value of the wrong type."""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None


def _parse(data: bytes, path: str) -> Dict[str, Any]:
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8: {e.reason} at byte {e.start}") from None
    except ValueError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must hold a JSON object, not {type(config).__name__}")
    for key, expected in _KNOWN_FILE_KEYS.items():
        if key != "sample_rate" and key in config and not isinstance(config[key], expected):
            raise ConfigError(f"config file {path}: {key!r} must be a JSON {expected.__name__}, got {config[key]!r}")
    _check_names(config, "duration_classes", path)
    _check_rates(config, path)
    unknown = sorted(set(config) - set(_KNOWN_FILE_KEYS))
    if unknown:
        logger.warning("config file %s has unknown keys %s (kept as they are)", path, ", ".join(unknown))
    return config


def _check_names(config: Mapping[str, Any], key: str, path: str) -> None:
    """A list of arc class names must hold strings only: a number there is a typo, not a class."""
    names = config.get(key, ())
    if not all(isinstance(name, str) for name in names):
        raise ConfigError(f"config file {path}: {key!r} must be a JSON list of strings, got {names!r}")


def _is_rate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _check_rates(config: Mapping[str, Any], path: str) -> None:
    """``sample_rate`` a number in [0, 1]; ``sample_rates`` an object of class name to such a number."""
    if "sample_rate" in config and not _is_rate(config["sample_rate"]):
        raise ConfigError(
            f"config file {path}: 'sample_rate' must be a number from 0 to 1, got {config['sample_rate']!r}"
        )
    rates = config.get("sample_rates", {})
    if not isinstance(rates, dict) or not all(_is_rate(rate) for rate in rates.values()):
        raise ConfigError(
            f"config file {path}: 'sample_rates' must map arc classes to numbers from 0 to 1, got {rates!r}"
        )


def load_config_file(path: str) -> Dict[str, Any]:
    """Read and validate the JSON config file; raise :class:`ConfigError` saying what is wrong.

    Unknown keys are kept (other versions of mona-client may know them) with one warning per call.
    """
    return _parse(_read(path), path)


# ---------------------------------------------------------------------------------------------
# Watching the file


def gevent_monkey_patched() -> bool:
    """Whether gevent has monkey-patched this process, found without importing gevent.

    In a patched process threads are greenlets: watchdog's inotify observer would block the hub in a
    plain ``os.read``, so the watcher uses its own cooperative poller instead.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False
    try:
        return bool(monkey.is_module_patched("threading") or monkey.is_anything_patched())
    except Exception:  # an unexpected gevent version: polling is the safe answer
        return True


_CONTENT_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})
_NAME_EVENTS = frozenset({"created", "moved", "deleted"})


class _Handler:
    """Forwards watchdog events that may change what the config file's path reads to the watcher.

    Writes to the config file count; writes to other files of its directory do not. Any name created,
    moved or deleted in a watched directory counts, whatever the name: the path may resolve through a
    symlink that was just swapped (a Kubernetes ConfigMap renames a ``..data`` symlink over the old one).
    A reload that finds the same bytes reports nothing, so an unrelated name costs one read. Opening
    and reading events are ignored: the watcher reads the file itself and must not wake itself up.
    """

    def __init__(self, targets: FrozenSet[str], changed: Callable[[], None]) -> None:
        self._targets = targets
        self._changed = changed

    def dispatch(self, event: Any) -> None:
        try:
            if event.event_type not in _CONTENT_EVENTS:
                return
            if event.event_type in _NAME_EVENTS:
                self._changed()
                return
            paths = (event.src_path, getattr(event, "dest_path", "") or "")
            if any(p and os.path.abspath(os.fsdecode(p)) in self._targets for p in paths):
                self._changed()
        except Exception:  # never let an error end the observer thread
            logger.exception("mona-client config watcher failed while handling %r", event)


class _Poller:
    """Looks at the config file every ``interval`` seconds and says when its identity, size or times change.

    Used under gevent, where a watchdog observer cannot work: its inotify thread blocks the hub in
    ``os.read``, and its queue breaks on gevent's patched ``queue.Queue``. ``threading`` is looked up
    when the poller starts, so in a patched process it runs as a greenlet sleeping cooperatively.
    """

    def __init__(self, paths: List[str], changed: Callable[[], None], interval: float) -> None:
        self._paths = paths
        self._changed = changed
        self._interval = interval
        self._stopped = threading.Event()
        self._last: Tuple[Optional[Tuple[int, ...]], ...] = ()
        self.thread = threading.Thread(target=self._run, name="mona-config-poller", daemon=True)

    def start(self) -> None:
        self._last = self._signature()  # taken now: a change right after start() must not be missed
        self.thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def join(self, timeout: Optional[float] = None) -> None:
        if self.thread is not threading.current_thread():  # stopped from its own change handler
            self.thread.join(timeout)

    def _signature(self) -> Tuple[Optional[Tuple[int, ...]], ...]:
        signature: List[Optional[Tuple[int, ...]]] = []
        for path in self._paths:
            for stat in (os.stat, os.lstat):
                try:
                    st = stat(path)
                    signature.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
                except OSError:
                    signature.append(None)
        return tuple(signature)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            current = self._signature()
            if current != self._last:
                self._last = current
                self._changed()


class _NativeWatches:
    """A watchdog observer on the file's directories, and a once-a-second poll of what the path resolves
    to (see :data:`BACKSTOP_POLL_INTERVAL`): stopped and joined together."""

    def __init__(self, observer: Any, backstop: _Poller) -> None:
        self.observer = observer
        self.backstop = backstop

    def stop(self) -> None:
        self.backstop.stop()
        self.observer.stop()

    def join(self, timeout: Optional[float] = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
        for thread in (self.observer, self.backstop.thread):
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


class ConfigWatcher:
    """Keeps a JSON config file's content current and reports every real change to ``on_change``.

    ``on_change`` receives a fresh dict: once from :meth:`start` with the initial configuration,
    then whenever the parsed content differs from the last good one. A missing, half-written or
    invalid file keeps the last good configuration and logs why, once per distinct problem.

    The file's directory is watched rather than the file, so replacing the file atomically
    (editors, ``os.replace``) or deleting and recreating it is seen, and so is every update of a
    Kubernetes ConfigMap volume (a ``..data`` symlink swapped to a new directory). Alongside the
    native watches, what the path resolves to is looked at once every :data:`BACKSTOP_POLL_INTERVAL`
    seconds, which sees the cases inotify cannot (the directory renamed away and made again). In a
    process monkey-patched by
    gevent, with ``polling=True`` (a network file system that inotify cannot see), or when native
    watching cannot be set up (no directory yet, inotify limits), the file is polled every
    :data:`POLL_INTERVAL` seconds instead. Errors are logged, never raised. ``on_change`` runs on
    the watcher's thread, one call at a time: it should return quickly.
    """

    RETRY_DELAY = 0.05
    """After an event, a file that does not parse is read once more this much later before the
    problem is logged: a writer between truncating and finishing its write is not an error."""

    def __init__(
        self, path: str, on_change: Callable[[Dict[str, Any]], None], *, polling: Optional[bool] = None
    ) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self._on_change = on_change
        self._polling = polling
        self._lock = threading.RLock()
        self._config: Optional[Dict[str, Any]] = None
        self._last_data: Optional[bytes] = None
        self._logged: Set[str] = set()
        self._observer: Any = None

    @property
    def config(self) -> Dict[str, Any]:
        """A copy of the current configuration (the defaults until a file was read)."""
        current = self._config
        return dict(current if current is not None else DEFAULT_FILE_CONFIG)

    def start(self) -> None:
        """Load the file, report it to ``on_change``, then watch for changes. Calling it again does nothing."""
        with self._lock:
            if self._observer is not None:
                return
            logger.info("mona-client config file: %s", self.path)
            try:
                self._observer = self._start_observer()
            except Exception:
                logger.exception("cannot watch %s; changes to it will not be seen", self.path)
            # Loaded after the observer is armed, so that no change slips between the two.
            self.reload()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching and wait up to ``timeout`` seconds for the observer threads to end."""
        with self._lock:
            observer, self._observer = self._observer, None
        if observer is None:
            return
        try:
            observer.stop()
            observer.join(timeout)
        except Exception:
            logger.exception("error while stopping the watcher of %s", self.path)

    def reload(self) -> Dict[str, Any]:
        """Read the file now, report a change to ``on_change``, and return the current configuration."""
        self._load(retry_delay=0.0)
        return self.config

    # -- internals ----------------------------------------------------------------------------

    def _start_observer(self) -> Any:
        # Watch where the name lives and, for a symlink, where its content lives.
        targets = frozenset({self.path, os.path.realpath(self.path)})
        changed = lambda: self._load(retry_delay=self.RETRY_DELAY)  # noqa: E731 - a callback, read where it is passed
        if not (gevent_monkey_patched() if self._polling is None else self._polling):
            try:
                observer = self._native_observer(targets, changed)
            except Exception as e:  # no directory yet, inotify limits reached...
                logger.warning("cannot watch %s natively (%s); polling it every %ss", self.path, e, POLL_INTERVAL)
            else:
                backstop = _Poller([self.path], changed, BACKSTOP_POLL_INTERVAL)
                backstop.start()
                return _NativeWatches(observer, backstop)
        poller = _Poller(sorted(targets), changed, POLL_INTERVAL)
        poller.start()
        return poller

    @staticmethod
    def _native_observer(targets: FrozenSet[str], changed: Callable[[], None]) -> Any:
        """A started watchdog observer (inotify on Linux) on the directories of ``targets``."""
        from watchdog.observers import Observer

        directories = sorted({os.path.dirname(t) for t in targets})
        for d in directories:
            if not os.path.isdir(d):
                raise ConfigError(f"directory {d} does not exist")
        observer = Observer()
        try:
            handler = _Handler(targets, changed)
            for d in directories:
                # watchdog only calls dispatch(); subclassing its handler would import watchdog with
                # this module, which the module promises not to do (see the docstring above).
                observer.schedule(cast("FileSystemEventHandler", handler), d, recursive=False)
            observer.start()
        except BaseException:
            observer.stop()  # an inotify observer runs a reader thread from its creation on
            raise
        return observer

    def _load(self, retry_delay: float) -> None:
        try:
            with self._lock:
                try:
                    new = self._read_changed(retry_delay)
                except ConfigError as e:
                    self._problem(str(e))
                    if self._config is not None:
                        return
                    new = dict(DEFAULT_FILE_CONFIG)
                if new is None or new == self._config:
                    return
                self._config = new
                try:
                    self._on_change(dict(new))
                except Exception:
                    logger.exception("mona-client config change handler failed")
        except Exception:
            logger.exception("mona-client config reload of %s failed", self.path)

    def _read_changed(self, retry_delay: float) -> Optional[Dict[str, Any]]:
        """The parsed file, or None when its bytes are the ones already seen."""
        try:
            data = _read(self.path)
        except ConfigError:
            self._last_data = None
            raise
        if data == self._last_data:
            return None
        try:
            config = _parse(data, self.path)
        except ConfigError:
            if retry_delay <= 0:
                self._last_data = data
                raise
            time.sleep(retry_delay)
            return self._read_changed(0.0)
        self._last_data = data
        self._logged.clear()
        return config

    def _problem(self, message: str) -> None:
        if message in self._logged:
            return
        self._logged.add(message)
        if self._config is None:
            logger.error("%s; using the defaults %s", message, dict(DEFAULT_FILE_CONFIG))
        else:
            logger.error("%s; keeping the last good configuration", message)
