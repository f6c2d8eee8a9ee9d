"""The dashboard's command-line parts: ``mona ui`` and the ``--http-*`` options of ``mona collect``.

Nothing here imports the web dependencies: they load when the dashboard starts, and their absence
is one line (:data:`~.settings.INSTALL_HINT`), exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any, Optional, Union

from .settings import DashboardSettings

DEFAULT_UI_PORT = 8080


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text[:40]} is out of range (0 to 65535)")
    return value


def add_ui_parser(commands: Any) -> None:
    """``mona ui``: the dashboard of a database, in the foreground."""
    ui = commands.add_parser("ui", help="serve the web dashboard and /metrics of a database")
    ui.add_argument("--db", help="database file or postgresql:// URL (default: as for every command)")
    ui.add_argument("--port", type=_port, default=DEFAULT_UI_PORT, help="HTTP port (default: %(default)d)")
    ui.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: loopback)")
    ui.add_argument("--token-file", help="a file holding the token every request must give (required off loopback)")
    ui.add_argument("--config", metavar="FILE", help="a JSON monitoring config (see docs/report.md)")
    ui.add_argument("--quiet", action="store_true", help="log warnings only")


def add_http_options(collect: argparse.ArgumentParser) -> None:
    """``mona collect --http-port``: the dashboard served from the collector's process."""
    collect.add_argument("--http-port", type=_port, help="also serve the dashboard and /metrics on this HTTP port")
    collect.add_argument("--http-bind", default="127.0.0.1", help="address of the dashboard (default: loopback)")
    collect.add_argument("--http-token-file", help="a file holding the dashboard's token (required off loopback)")


class UiCommandError(Exception):
    """A failure to report in one line, with the exit status (2: a wrong argument, 1: a failure)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _fail(message: str, status: int) -> UiCommandError:
    return UiCommandError(message, status)


def _token(path: Optional[str], option: str) -> Optional[str]:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise _fail(f"{option}: cannot read {path}: {reason}", 2) from None
    if not token:
        raise _fail(f"{option}: {path} is empty", 2)
    return token


def _settings(
    port: int, bind: str, token_file: Optional[str], token_option: str, bind_option: str
) -> DashboardSettings:
    try:
        return DashboardSettings(port, bind, _token(token_file, token_option))
    except ValueError as exc:
        raise _fail(f"{bind_option}: {exc}", 2) from None


def collect_dashboard(args: argparse.Namespace) -> Optional[DashboardSettings]:
    """The dashboard ``mona collect`` serves (None without ``--http-port``)."""
    if args.http_port is None:
        return None
    return _settings(args.http_port, args.http_bind, args.http_token_file, "--http-token-file", "--http-bind")


def run_ui(args: argparse.Namespace, db_path: Union[Path, str]) -> int:
    """Serve the dashboard until SIGINT or SIGTERM."""
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    settings = _settings(args.port, args.bind, args.token_file, "--token-file", "--bind")
    if isinstance(db_path, Path) and not db_path.exists():
        raise _fail(f"no collector database at {db_path}", 1)
    from . import UiMissingError, load_server

    try:
        server_class = load_server()
    except UiMissingError as exc:
        raise _fail(str(exc), 1) from None
    config = None
    if args.config:
        from ..report.monitoring_config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise _fail(f"--config {args.config}: {exc}", 2) from None
    server = server_class(db_path, settings, config)
    try:
        server.start()
    except OSError as exc:
        raise _fail(f"cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}", 1) from None
    print(f"mona dashboard: {server.url}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0
