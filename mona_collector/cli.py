"""The ``mona`` command: run the collector and query what it stored.

    mona collect [--bind 127.0.0.1] [--port 24224] [--db PATH]
                 [--shared-key-file PATH [--users-file PATH]]
                 [--tls-cert PATH --tls-key PATH [--tls-client-ca PATH]]
                 [--max-connections N] [--idle-timeout S] [--max-buffered-bytes N] ...
    mona arcs list [--arc-class C] [--since 2h] [--limit N] [--json]
    mona arcs show CONTEXT_ID
    mona arcs export --format jsonl|csv [--arc-class C] [--out FILE]
    mona stats [--json]
    mona report [--arc-class C] [--since 24h] [--baseline 7d | A..B] [--by A,B] [--json] [--html FILE]
                [--config FILE]
    mona alerts check [--config FILE] [--json] [--at TIME]
    mona alerts list [--open] [--json]
    mona ui [--port 8080] [--bind 127.0.0.1] [--token-file F] [--config FILE]
    mona db migrate [--db PATH|URL]
    mona prune --older-than 30d [--db PATH|URL]

Every command takes ``--db`` (default: ``$MONA_COLLECTOR_DB``, else the per-user data directory): an
SQLite file, or a ``postgresql://user@host/dbname`` URL that several collectors share.
The query commands only read the database, so they can run while the collector is writing.
``mona collect`` takes the shared key from ``--shared-key-file`` or ``$MONA_COLLECTOR_SHARED_KEY``.

No command prints a traceback: a wrong argument is one line and exit status 2, a failure one line
and exit status 1. Text from the database is printed with control characters and bytes that are not
UTF-8 escaped (``\\x1b``, ``\\n``, ``\\xff``), so a stored string cannot drive the terminal. JSON output
writes NaN and infinities as ``null`` (JSON has no such numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import logging
import math
import os
import re
import signal
import ssl
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Match, Optional, Sequence, TextIO, Tuple

from mona_client.forward import DEFAULT_MAX_FRAME_BYTES, DEFAULT_PORT

from .databases import Database, describe, open_store, resolve_db
from .merging.documents import DEFAULT_CACHE_BYTES, DEFAULT_MAX_DEPTH, MAX_DEPTH_LIMIT
from .server import ServerSettings
from .service import Collector
from .store import ArcStore, StoreError, default_db_path, dump_json, raw_log_path
from .timeparse import format_time, parse_since
from .web.command import UiCommandError, add_http_options, add_ui_parser, collect_dashboard, run_ui

log = logging.getLogger("mona_collector")

#: SQLite's LIMIT is a signed 64-bit integer.
_MAX_LIMIT = 2**63 - 1
#: How often ``mona collect`` checks that its database files are still the ones it opened.
_DB_CHECK_INTERVAL = 1.0
_DEFAULTS = ServerSettings(hostname="-")


class CliError(Exception):
    """A failure to report in one line, with the exit status (2: a wrong argument, 1: a failure)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# --- argument types (a wrong value is an argparse error: usage, one line, exit status 2) ----------


def _whole_number(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text[:40]} is out of range ({low} to {high})")
        return value

    parse.__name__ = "whole number"
    return parse


def _seconds(text: str) -> float:
    """A number of seconds above 0 (not NaN, not infinite)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of seconds") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text[:40]} must be a number of seconds above 0")
    return value


def _since(text: str) -> float:
    try:
        return parse_since(text)
    except (ValueError, OverflowError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_port = _whole_number(0, 65535)
_count = _whole_number(1, _MAX_LIMIT)


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", help=f"database file or postgresql://user@host/dbname URL (default: {default_db_path()})"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mona", description="The mona embedded collector and its queries.")
    commands = parser.add_subparsers(dest="command", required=True)

    collect = commands.add_parser("collect", help="run the Forward collector in the foreground")
    collect.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: loopback)")
    collect.add_argument("--port", type=_port, default=DEFAULT_PORT, help="TCP (and UDP heartbeat) port, 0 to 65535")
    _add_db(collect)
    collect.add_argument(
        "--max-frame-bytes",
        type=_count,
        default=DEFAULT_MAX_FRAME_BYTES,
        help=f"largest message in bytes (default: {DEFAULT_MAX_FRAME_BYTES})",
    )
    collect.add_argument(
        "--stall-timeout",
        type=_seconds,
        default=_DEFAULTS.stall_timeout,
        help="seconds a message may take from its first byte to its last (default: %(default)g)",
    )
    collect.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=_DEFAULTS.idle_timeout,
        help="close a connection that completes no message for this many seconds (default: %(default)g)",
    )
    collect.add_argument(
        "--max-connections",
        type=_count,
        default=_DEFAULTS.max_connections,
        help="connections open at once; beyond it new ones are closed at once (default: %(default)d)",
    )
    collect.add_argument(
        "--max-buffered-bytes",
        type=_count,
        default=_DEFAULTS.max_buffered_bytes,
        help="bytes of incomplete messages held across connections; beyond it the connection "
        "holding the most is closed (default: %(default)d)",
    )
    collect.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"], help="SQLite durability")
    collect.add_argument("--quiet", action="store_true", help="log warnings only")
    collect.add_argument(
        "--shared-key-file",
        help="require the Forward shared-key handshake with the key in this file "
        "(default: $MONA_COLLECTOR_SHARED_KEY, if set)",
    )
    collect.add_argument(
        "--users-file", help="also require a user name and password: lines user:password (needs a shared key)"
    )
    collect.add_argument("--hostname", help="the collector's name in the handshake (default: mona-collector.HOST)")
    collect.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM); needs --tls-key")
    collect.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    collect.add_argument("--tls-client-ca", help="require client certificates signed by this CA (PEM)")
    collect.add_argument(
        "--max-depth",
        type=int,
        default=DEFAULT_MAX_DEPTH,
        help=f"refuse records of sub-contexts nested deeper below their root (0-{MAX_DEPTH_LIMIT})",
    )
    collect.add_argument(
        "--merge-cache-bytes",
        type=int,
        default=DEFAULT_CACHE_BYTES,
        help="memory, in bytes, for the ARC documents the merger keeps (estimated from their stored size; "
        "default: %(default)d)",
    )
    collect.add_argument(
        "--merger-max-backoff",
        type=float,
        default=30.0,
        help="longest wait, in seconds, before restarting a merger that died",
    )

    arcs = commands.add_parser("arcs", help="query ARC documents").add_subparsers(dest="arcs_command", required=True)
    listing = arcs.add_parser("list", help="ARCs, most recently exported first")
    _add_db(listing)
    listing.add_argument("--arc-class")
    listing.add_argument("--since", type=_since, help="a duration back from now (15m, 2h, 7d) or an ISO time")
    listing.add_argument("--limit", type=_count, default=50, help="at most this many ARCs (default: %(default)d)")
    listing.add_argument("--json", action="store_true", help="one JSON document per line")
    show = arcs.add_parser("show", help="one ARC document as JSON (root.sub shows root)")
    show.add_argument("context_id")
    _add_db(show)
    export = arcs.add_parser("export", help="every ARC as JSON lines or CSV")
    _add_db(export)
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("--arc-class")
    export.add_argument("--out", help="file to write, replaced only once complete (default: standard output)")

    stats = commands.add_parser("stats", help="what the database holds")
    _add_db(stats)
    stats.add_argument("--json", action="store_true")
    _add_report_parser(commands)
    _add_alerts_parser(commands, collect)
    add_http_options(collect)
    add_ui_parser(commands)
    _add_maintenance_parsers(commands)
    return parser


def _add_maintenance_parsers(commands: Any) -> None:
    """``mona db migrate`` and ``mona prune`` (see docs/deployment.md)."""
    db = commands.add_parser("db", help="the database schema").add_subparsers(dest="db_command", required=True)
    migrate = db.add_parser("migrate", help="create or upgrade the collector's schema (idempotent)")
    _add_db(migrate)
    prune = commands.add_parser("prune", help="delete merged raw events and ARCs older than a duration")
    _add_db(prune)
    prune.add_argument(
        "--older-than", type=_duration, required=True, help="e.g. 30d: raw events and ARCs last exported before then"
    )


def _migrate(args: argparse.Namespace) -> int:
    from .databases import migrate

    db = resolve_db(args.db)
    if isinstance(db, Path):
        _prepare_db_path(db)  # migrate creates the file: the same checks as `mona collect`
    before, after = migrate(db)
    where = _printable(describe(db))
    if before == after:
        print(f"{where}: schema version {after}, up to date")
    elif before == 0:
        print(f"{where}: schema version {after} created")
    else:
        print(f"{where}: schema migrated from version {before} to {after}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from .databases import prune

    db = resolve_db(args.db)
    raw, arcs = prune(db, args.older_than)
    where = _printable(describe(db))
    print(f"{where}: deleted {raw} merged raw row(s) and {arcs} ARC(s) older than {args.older_than:g} s")
    return 0


def _duration(text: str) -> float:
    from .alerts.rules import parse_duration  # imported here: it loads the report package (numpy)

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_alerts_parser(commands: Any, collect: argparse.ArgumentParser) -> None:
    """``mona alerts`` and the alert options of ``mona collect`` (see docs/alerts.md)."""
    collect.add_argument(
        "--evaluate-every", type=_duration, help="evaluate the alert rules this often, e.g. 5m (default: never)"
    )
    collect.add_argument("--alerts-config", metavar="FILE", help="the monitoring config with the alert rules")
    alerts = commands.add_parser("alerts", help="alert rules and their states").add_subparsers(
        dest="alerts_command", required=True
    )
    check = alerts.add_parser("check", help="evaluate every rule now; exit status 1 while an alert is open")
    _add_db(check)
    check.add_argument("--config", metavar="FILE", help="a JSON monitoring config with an alerts section")
    check.add_argument("--json", action="store_true", help="one JSON object")
    check.add_argument("--at", help="evaluate as of this time: a duration back from now or an ISO time")
    listing = alerts.add_parser("list", help="the stored alerts")
    _add_db(listing)
    listing.add_argument("--open", action="store_true", help="only the open ones")
    listing.add_argument("--json", action="store_true", help="one JSON list")


def _alerts(args: argparse.Namespace) -> int:
    from .alerts.command import AlertsError, run_check, run_list

    db_path = resolve_db(args.db)
    try:
        if args.alerts_command == "check":
            return run_check(db_path, args.config, args.at, args.json, sys.stdout)
        return run_list(db_path, args.open, args.json, sys.stdout)
    except AlertsError as exc:
        raise CliError(str(exc), exc.status) from None


def _add_report_parser(commands: Any) -> None:
    """``mona report``: statistics, drift and segment insights (see docs/report.md)."""
    report = commands.add_parser("report", help="statistics, drift and segment insights of a class (or every class)")
    _add_db(report)
    report.add_argument("--arc-class", help="the class to report on (default: an overview of every class)")
    report.add_argument("--since", help="start of the window: a duration back from now or an ISO time (default: 24h)")
    report.add_argument("--until", help="end of the window, as --since (default: now)")
    report.add_argument(
        "--baseline", help="a duration right before the window (default: 7d) or A..B, two durations or ISO times"
    )
    report.add_argument("--by", default="", help="dimensions to segment by, comma separated; two or more add pairs")
    report.add_argument("--json", action="store_true", help="one JSON object (see docs/report-json.md)")
    report.add_argument("--html", metavar="FILE", help="write one self-contained HTML file")
    report.add_argument("--config", metavar="FILE", help="a JSON monitoring config (see docs/report.md)")


def _report(args: argparse.Namespace) -> int:
    # Imported here: numpy loads only for this command.
    from .report.command import ReportError, ReportOptions, run_report

    options = ReportOptions(
        arc_class=args.arc_class,
        since=args.since,
        baseline=args.baseline,
        until=args.until,
        by=[name.strip() for name in args.by.split(",") if name.strip()],
        json=args.json,
        html=args.html,
        config=args.config,
    )
    from .databases import open_reader

    reader = open_reader(resolve_db(args.db))
    try:
        return run_report(reader, options, sys.stdout)
    except ReportError as exc:
        raise CliError(str(exc), exc.status) from None
    finally:
        reader.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; every failure is one line on standard error and an exit status, never a traceback."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "collect":
            return _collect(args)
        if args.command == "report":
            return _report(args)
        if args.command == "alerts":
            return _alerts(args)
        if args.command == "ui":
            return run_ui(args, resolve_db(args.db))
        if args.command == "db":
            return _migrate(args)
        if args.command == "prune":
            return _prune(args)
        return _query(args)
    except (CliError, UiCommandError) as exc:
        print(f"mona: {exc}", file=sys.stderr)
        return exc.status
    except (StoreError, ValueError) as exc:
        print(f"mona: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into head: stop quietly, and do not fail again at exit
        _discard_stdout()
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the promise above: one line, never a traceback
        print(f"mona: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _query(args: argparse.Namespace) -> int:
    store = open_store(resolve_db(args.db), readonly=True)
    try:
        if args.command == "stats":
            return _stats(store, args)
        commands: Dict[str, Callable[[ArcStore, argparse.Namespace], int]] = {
            "list": _list,
            "show": _show,
            "export": _export,
        }
        return commands[args.arcs_command](store, args)
    finally:
        store.close()


def _where(store: ArcStore) -> str:
    """The database a store reads, for messages (a PostgreSQL URL without its password)."""
    return str(getattr(store, "path", type(store).__name__))


def _discard_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# --- mona collect ---------------------------------------------------------------------------------


def _collect(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    # Everything the collector creates (databases, WAL and SHM files, lock files, folders) is for
    # its user only: the records may hold anything an application exported.
    os.umask(0o077)
    for option, path in (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--tls-client-ca", args.tls_client_ca),
    ):
        if path and not os.path.isfile(path):
            raise CliError(f"{option}: no file {path}", 2)
    if args.max_buffered_bytes < args.max_frame_bytes:
        raise CliError(
            f"--max-buffered-bytes ({args.max_buffered_bytes}) is below --max-frame-bytes ({args.max_frame_bytes}): "
            "a message of the largest size could never be received",
            2,
        )
    shared_key = _shared_key(args.shared_key_file)
    users = _read_users(args.users_file) if args.users_file else None
    if users and shared_key is None:
        raise CliError("--users-file needs a shared key (--shared-key-file or $MONA_COLLECTOR_SHARED_KEY)", 2)
    if args.alerts_config and args.evaluate_every is None:
        raise CliError("--alerts-config needs --evaluate-every", 2)
    db = resolve_db(args.db)
    if isinstance(db, str):  # PostgreSQL: several collectors may share it, each with its own merger
        return _serve(_new_collector(args, db, shared_key, users), args, db)
    db_path = _prepare_db_path(db)
    lock = _lock_database(db_path)
    try:
        collector = _new_collector(args, db_path, shared_key, users)
        return _serve(collector, args, db_path)
    finally:
        lock.close()


def _new_collector(
    args: argparse.Namespace, db_path: Database, shared_key: Optional[str], users: Optional[Dict[str, str]]
) -> Collector:
    try:
        return Collector(
            args.bind,
            args.port,
            db_path,
            max_frame_bytes=args.max_frame_bytes,
            stall_timeout=args.stall_timeout,
            max_connections=args.max_connections,
            idle_timeout=args.idle_timeout,
            max_buffered_bytes=args.max_buffered_bytes,
            synchronous=args.synchronous,
            shared_key=shared_key,
            users=users,
            hostname=args.hostname,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            tls_ca_file=args.tls_client_ca,
            max_depth=args.max_depth,
            merge_cache_bytes=args.merge_cache_bytes,
            merger_max_backoff=args.merger_max_backoff,
            evaluate_every=args.evaluate_every,
            alerts_config=args.alerts_config,
            dashboard=collect_dashboard(args),
        )
    except (OSError, ValueError) as exc:
        if args.evaluate_every is not None:
            from .report.monitoring_config import ConfigError  # loaded already by the alert evaluation

            if isinstance(exc, ConfigError):
                raise CliError(f"--alerts-config {_printable(args.alerts_config)}: {exc}", 2) from None
        raise CliError(str(exc), 2) from None


def _serve(collector: Collector, args: argparse.Namespace, db_path: Database) -> int:
    """Start, run until SIGINT/SIGTERM (exit 0) or until the database files go away (exit 1)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        collector.start()
    except ssl.SSLError as exc:
        raise CliError(f"cannot use the TLS certificate or key: {exc}", 2) from None
    except ImportError as exc:  # --http-port without the ui extra: the message says what to install
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}") from None
    files = [] if isinstance(db_path, str) else [db_path, raw_log_path(db_path)]
    identities = [_identity(path) for path in files]
    status = 0
    while not stop.wait(_DB_CHECK_INTERVAL):
        gone = [path for path, identity in zip(files, identities) if _identity(path) != identity]
        if gone:
            log.error(
                "collector: %s deleted or replaced while the collector runs: stopping, since whatever "
                "arrives now would be stored in a file nobody can open (start it again to create new ones)",
                " and ".join(_printable(str(path)) for path in gone),
            )
            status = 1
            break
    collector.stop()
    return status


def _identity(path: Path) -> Optional[Tuple[int, int]]:
    """Which file ``path`` names (device, inode), or None when there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _prepare_db_path(path: Path) -> Path:
    """Check ``--db`` and create its folder (for this user only): one clear line when that cannot be."""
    shown = _printable(str(path))
    if path.is_dir():
        raise CliError(f"--db {shown} is a directory; name a database file in it", 2)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CliError(f"--db {shown}: {_not_a_directory(path)} is not a directory", 2) from None
    except OSError as exc:
        raise CliError(
            f"--db {shown}: cannot create the folder {_printable(str(path.parent))}: {exc.strerror}"
        ) from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise CliError(f"--db {shown}: the folder {_printable(str(path.parent))} is not writable by this user")
    return path


def _not_a_directory(path: Path) -> str:
    """The first ancestor of ``path`` that exists and is not a directory."""
    for ancestor in reversed(path.parents):
        if ancestor.exists() and not ancestor.is_dir():
            return _printable(str(ancestor))
    return _printable(str(path.parent))


def _lock_database(db_path: Path) -> IO[str]:
    """Hold ``<db>.collector.lock`` for as long as this collector runs; a second collector on the same
    database stops at once, saying so, instead of waiting for the first one's merger. Where there is
    no ``fcntl`` (Windows) nothing is locked."""
    lock_path = f"{db_path}.collector.lock"
    try:
        handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - the lock lives as long as the file

    except OSError as exc:
        raise CliError(f"cannot create the lock file {_printable(lock_path)}: {exc.strerror}") from None
    try:
        _lock_at_once(handle)
    except OSError as exc:
        handle.seek(0)
        owner = handle.read(32).strip()
        handle.close()
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise CliError(f"cannot lock {_printable(lock_path)}: {exc.strerror}") from None
        raise CliError(
            f"the database {_printable(str(db_path))} is in use by another collector"
            + (f" (process {owner})" if owner.isdigit() else "")
            + "; stop it or choose another --db"
        ) from None
    if _merger_running(db_path):  # a collector started from Python holds only the merger's lock
        handle.close()
        raise CliError(
            f"the database {_printable(str(db_path))} is in use by another collector; stop it or choose another --db"
        )
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _lock_at_once(handle: IO[str]) -> None:
    """An exclusive lock on ``handle``'s file, or OSError when another process holds it. Where there is
    no ``fcntl`` (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        return
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _merger_running(db_path: Path) -> bool:
    """Whether a merger process holds the database's merger lock right now."""
    try:
        with open(f"{db_path}.merger.lock", "a+", encoding="utf-8") as probe:
            _lock_at_once(probe)  # released when the file is closed
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EACCES)
    return False


def _shared_key(path: Optional[str]) -> Optional[str]:
    """The key from the file (without its trailing newline), else from the environment, else None."""
    if path:
        key = _read_text(path, "--shared-key-file").rstrip("\r\n")
        if not key:
            raise CliError(f"the shared key file {path} is empty", 2)
        return key
    return os.environ.get("MONA_COLLECTOR_SHARED_KEY") or None


def _read_text(path: str, option: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise CliError(f"{option} {_printable(path)} is not UTF-8 text", 2) from None
    except OSError as exc:
        raise CliError(f"{option}: cannot read {_printable(path)}: {exc.strerror}", 2) from None


def _read_users(path: str) -> Dict[str, str]:
    """``user:password`` lines (the password is everything after the first colon); blank lines and
    lines starting with ``#`` are skipped. A bad line is reported by its number, never its text (it
    may hold a password)."""
    users: Dict[str, str] = {}
    for number, line in enumerate(_read_text(path, "--users-file").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, colon, password = line.partition(":")
        where = f"--users-file {_printable(path)}, line {number}"
        if not colon or not user or not password:
            raise CliError(f"{where}: expected user:password (a user name, a colon, the password)", 2)
        if user != user.strip():
            raise CliError(f"{where}: the user name starts or ends with white space", 2)
        if user in users:
            raise CliError(f"{where}: the user {_printable(user)} is listed twice", 2)
        users[user] = password
    if not users:
        raise CliError(f"--users-file {_printable(path)} lists no user", 2)
    if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("collector: %s holds passwords and other users can read it (chmod 600 it)", _printable(path))
    return users


# --- text for the terminal, CSV and JSON ----------------------------------------------------------

# C0 and C1 controls, DEL, and the characters that reorder or break lines on a terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _valid_text(value: Any) -> str:
    """``value`` as valid UTF-8 text: bytes that were not UTF-8 on the wire (kept as surrogates, or as
    bytes) become ``\\xNN`` escapes instead of failing the output."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    text = str(value)
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from a byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _escape_control(match: Match[str]) -> str:
    char = match.group()
    return _NAMED_ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def _printable(value: Any) -> str:
    """``value`` as text safe to print on a terminal: no escape sequences, CR, LF or invalid bytes."""
    return _CONTROL.sub(_escape_control, _valid_text(value))


def _json(value: Any, **options: Any) -> str:
    """JSON text that strict parsers accept: NaN and infinities become null."""
    try:
        return dump_json(value, allow_nan=False, **options)
    except ValueError:
        return dump_json(_finite(value), allow_nan=False, **options)


def _finite(value: Any) -> Any:
    """A copy of ``value`` with every NaN or infinite float (a value or a map key) replaced: values by
    None, keys by their name. Iterative, so that deep documents cannot exhaust the stack."""
    root: List[Any] = [value]
    stack: List[Tuple[Any, Any, Any]] = [(root, 0, value)]
    while stack:
        parent, key, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            parent[key] = None
        elif isinstance(item, dict):
            copy: Dict[Any, Any] = {}
            for k, v in item.items():
                k = str(k) if isinstance(k, float) and not math.isfinite(k) else k
                copy[k] = v
                stack.append((copy, k, v))
            parent[key] = copy
        elif isinstance(item, (list, tuple)):
            items = list(item)
            stack.extend((items, index, v) for index, v in enumerate(items))
            parent[key] = items
    return root[0]


# --- queries --------------------------------------------------------------------------------------


def _list(store: ArcStore, args: argparse.Namespace) -> int:
    documents = store.list_arcs(args.arc_class, args.since, args.limit)
    if args.json:
        for document in documents:
            print(_json(document))
        return 0
    rows = [
        [
            d["context_id"],
            d["user_id"],
            d["arc_class"] or "-",
            str(d["export_count"]),
            format_time(d["first_export"]),
            format_time(d["last_export"]),
            str(len(d["sub_arcs"])),
            ", ".join(str(name) for name in list(d["fields"])[:4]) + (", ..." if len(d["fields"]) > 4 else ""),
        ]
        for d in documents
    ]
    _print_table(["CONTEXT", "USER", "CLASS", "EXPORTS", "FIRST", "LAST", "SUB", "FIELDS"], rows)
    return 0


def _print_table(header: List[str], rows: List[List[Any]]) -> None:
    cells = [[_printable(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _show(store: ArcStore, args: argparse.Namespace) -> int:
    documents = store.find_arcs(args.context_id)
    if not documents:
        print(
            f"mona: no ARC with context id {_printable(repr(args.context_id))} in {_printable(_where(store))}",
            file=sys.stderr,
        )
        return 1
    # One user: the document; the same id under several users: a list of their documents.
    print(_json(documents[0] if len(documents) == 1 else documents, indent=2))
    return 0


def flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    """Nested maps as dotted column names: ``{"fields": {"a": 1}}`` -> ``{"fields.a": 1}``."""
    if isinstance(value, dict):  # an empty map (no sub-ARCs, no globals) gives no column
        flat: Dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, list):
        return {prefix: _json(value)}
    return {prefix: value}


def _export(store: ArcStore, args: argparse.Namespace) -> int:
    documents = store.iter_arcs(args.arc_class)
    if not args.out:
        _write_documents(sys.stdout, documents, args.format)
        return 0
    with _replaced_when_complete(args.out) as out:
        _write_documents(out, documents, args.format)
    return 0


def _write_documents(out: TextIO, documents: Iterable[Dict[str, Any]], form: str) -> None:
    if form == "jsonl":
        for document in documents:
            out.write(_json(document) + "\n")
    else:
        _write_csv(out, (flatten(document) for document in documents))


@contextlib.contextmanager
def _replaced_when_complete(path: str) -> Iterator[TextIO]:
    """A temporary file beside ``path``, renamed over it once written in full: a failed export never
    leaves a truncated file, nor destroys the previous one."""
    shown = _printable(path)
    if os.path.isdir(path):
        raise CliError(f"--out {shown} is a directory; name a file", 2)
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise CliError(f"--out {shown}: there is no folder {_printable(folder)}", 2)
    try:
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".partial")
    except OSError as exc:
        raise CliError(f"--out {shown}: cannot write in {_printable(folder)}: {exc.strerror}") from None
    try:
        with open(descriptor, "w", encoding="utf-8", newline="") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # as a file opened the usual way would be (mkstemp makes 0600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _csv_cell(value: Any) -> Any:
    return _valid_text(value) if isinstance(value, (str, bytes)) else value


def _write_csv(out: TextIO, rows: Iterable[Dict[str, Any]]) -> None:
    # The columns are the union of every ARC's keys; text that was not UTF-8 is escaped (\xNN).
    table = [{_valid_text(key): _csv_cell(value) for key, value in row.items()} for row in rows]
    fixed = ["user_id", "context_id", "arc_class", "first_export", "last_export", "export_count"]
    others = sorted({key for row in table for key in row} - set(fixed))
    writer = csv.DictWriter(out, fieldnames=fixed + others, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)


def _stats(store: ArcStore, args: argparse.Namespace) -> int:
    stats = store.stats()
    if args.json:
        print(_json(stats))
        return 0
    print(f"database      {_printable(_where(store))}")
    print(f"events        {stats['events']}")
    print(f"rejected      {stats['rejected']}  (malformed mona records, kept raw)")
    print(f"duplicates    {stats['duplicates']}  (resent records, dropped)")
    print(f"first event   {format_time(stats['first_event_time'])}")
    print(f"last event    {format_time(stats['last_event_time'])}")
    print(f"not merged    {stats['unmerged_events']} events in {stats['unmerged_rows']} raw rows  (merge lag)")
    print(
        f"merger        {stats['merger_restarts']} restart(s)"
        + (
            f", last error at {format_time(stats['merger_last_error_time'])}: {stats['merger_last_error']}"
            if stats["merger_last_error"]
            else ""
        )
    )
    print(f"ARCs          {stats['arcs']}")
    for arc_class, count in stats["arcs_by_class"].items():
        print(f"  {_printable(arc_class or '(no class)'):<20} {count}")
    print("tags")
    for tag, counts in stats["tags"].items():
        print(
            f"  {_printable(tag):<30} {counts['events']} events, {counts['rejected']} rejected, "
            f"{counts['duplicates']} duplicates"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
