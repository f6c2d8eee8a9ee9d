"""The ``mona`` command: run the collector and query what it stored.

    mona collect [--bind 127.0.0.1] [--port 24224] [--db PATH]
                 [--shared-key-file PATH] [--tls-cert PATH --tls-key PATH [--tls-client-ca PATH]]
    mona arcs list [--arc-class C] [--since 2h] [--limit N] [--json]
    mona arcs show CONTEXT_ID
    mona arcs export --format jsonl|csv [--arc-class C] [--out FILE]
    mona stats [--json]

Every command takes ``--db`` (default: ``$MONA_COLLECTOR_DB``, else the per-user data directory).
The query commands only read the database, so they can run while the collector is writing.
``mona collect`` takes the shared key from ``--shared-key-file`` or ``$MONA_COLLECTOR_SHARED_KEY``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import ssl
import sys
import threading
from typing import Any, Dict, Iterable, List, Optional, Sequence, TextIO

from ..forward import DEFAULT_MAX_FRAME_BYTES, DEFAULT_PORT
from .merge import DEFAULT_CACHE_BYTES, DEFAULT_MAX_DEPTH, MAX_DEPTH_LIMIT
from .service import Collector
from .store import SQLiteStore, StoreError, default_db_path, dump_json
from .timeparse import format_time, parse_since


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help=f"database file (default: {default_db_path()})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mona", description="The mona embedded collector and its queries.")
    commands = parser.add_subparsers(dest="command", required=True)

    collect = commands.add_parser("collect", help="run the Forward collector in the foreground")
    collect.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: loopback)")
    collect.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP (and UDP heartbeat) port")
    _add_db(collect)
    collect.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES)
    collect.add_argument("--stall-timeout", type=float, default=30.0, help="seconds a frame may stay incomplete")
    collect.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"], help="SQLite durability")
    collect.add_argument("--quiet", action="store_true", help="log warnings only")
    collect.add_argument(
        "--shared-key-file",
        help="require the Forward shared-key handshake with the key in this file "
        "(default: $MONA_COLLECTOR_SHARED_KEY, if set)",
    )
    collect.add_argument("--hostname", help="the collector's name in the handshake (default: mona-collector.HOST)")
    collect.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM); needs --tls-key")
    collect.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    collect.add_argument("--tls-client-ca", help="require client certificates signed by this CA (PEM)")
    collect.add_argument("--max-depth", type=int, default=DEFAULT_MAX_DEPTH,
                         help=f"refuse records of sub-contexts nested deeper below their root (0-{MAX_DEPTH_LIMIT})")
    collect.add_argument("--merge-cache-bytes", type=int, default=DEFAULT_CACHE_BYTES,
                         help="bytes of ARC documents the merger keeps in memory")
    collect.add_argument("--merger-max-backoff", type=float, default=30.0,
                         help="longest wait, in seconds, before restarting a merger that died")

    arcs = commands.add_parser("arcs", help="query ARC documents").add_subparsers(dest="arcs_command", required=True)
    listing = arcs.add_parser("list", help="ARCs, most recently exported first")
    _add_db(listing)
    listing.add_argument("--arc-class")
    listing.add_argument("--since", help="a duration back from now (15m, 2h, 7d) or an ISO time")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="one JSON document per line")
    show = arcs.add_parser("show", help="one ARC document as JSON (root.sub shows root)")
    show.add_argument("context_id")
    _add_db(show)
    export = arcs.add_parser("export", help="every ARC as JSON lines or CSV")
    _add_db(export)
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("--arc-class")
    export.add_argument("--out", help="file to write (default: standard output)")

    stats = commands.add_parser("stats", help="what the database holds")
    _add_db(stats)
    stats.add_argument("--json", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "collect":
            return _collect(args)
        store = SQLiteStore(args.db or default_db_path(), readonly=True)
        try:
            if args.command == "stats":
                return _stats(store, args)
            return {"list": _list, "show": _show, "export": _export}[args.arcs_command](store, args)
        finally:
            store.close()
    except (StoreError, ValueError) as exc:
        print(f"mona: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into head
        return 0


def _collect(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--tls-client-ca", args.tls_client_ca)):
            if path and not os.path.isfile(path):
                raise ValueError(f"{option}: no file {path}")
        shared_key = _shared_key(args.shared_key_file)
        collector = Collector(
            args.bind,
            args.port,
            args.db,
            max_frame_bytes=args.max_frame_bytes,
            stall_timeout=args.stall_timeout,
            synchronous=args.synchronous,
            shared_key=shared_key,
            hostname=args.hostname,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            tls_ca_file=args.tls_client_ca,
            max_depth=args.max_depth,
            merge_cache_bytes=args.merge_cache_bytes,
            merger_max_backoff=args.merger_max_backoff,
        )
    except (OSError, ValueError) as exc:
        print(f"mona: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        collector.start()
    except ssl.SSLError as exc:
        print(f"mona: cannot use the TLS certificate or key: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mona: cannot listen on {args.bind}:{args.port}: {exc}", file=sys.stderr)
        return 1
    while not stop.wait(1.0):
        pass
    collector.stop()
    return 0


def _shared_key(path: Optional[str]) -> Optional[str]:
    """The key from the file (without its trailing newline), else from the environment, else None."""
    if path:
        with open(path, encoding="utf-8") as f:
            key = f.read().rstrip("\r\n")
        if not key:
            raise ValueError(f"the shared key file {path} is empty")
        return key
    return os.environ.get("MONA_COLLECTOR_SHARED_KEY") or None


def _list(store: SQLiteStore, args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    documents = store.list_arcs(args.arc_class, since, args.limit)
    if args.json:
        for document in documents:
            print(dump_json(document))
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
            ", ".join(list(d["fields"])[:4]) + (", ..." if len(d["fields"]) > 4 else ""),
        ]
        for d in documents
    ]
    _print_table(["CONTEXT", "USER", "CLASS", "EXPORTS", "FIRST", "LAST", "SUB", "FIELDS"], rows)
    return 0


def _print_table(header: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _show(store: SQLiteStore, args: argparse.Namespace) -> int:
    documents = store.find_arcs(args.context_id)
    if not documents:
        print(f"mona: no ARC with context id {args.context_id!r} in {store.path}", file=sys.stderr)
        return 1
    # One user: the document; the same id under several users: a list of their documents.
    print(dump_json(documents[0] if len(documents) == 1 else documents, indent=2))
    return 0


def flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    """Nested maps as dotted column names: ``{"fields": {"a": 1}}`` -> ``{"fields.a": 1}``."""
    if isinstance(value, dict):  # an empty map (no sub-ARCs, no globals) gives no column
        flat: Dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, list):
        return {prefix: json.dumps(value, default=str)}
    return {prefix: value}


def _export(store: SQLiteStore, args: argparse.Namespace) -> int:
    out: TextIO = open(args.out, "w", encoding="utf-8", newline="") if args.out else sys.stdout
    try:
        documents = store.iter_arcs(args.arc_class)
        if args.format == "jsonl":
            for document in documents:
                out.write(dump_json(document) + "\n")
        else:
            _write_csv(out, (flatten(document) for document in documents))
    finally:
        if args.out:
            out.close()
    return 0


def _write_csv(out: TextIO, rows: Iterable[Dict[str, Any]]) -> None:
    rows = list(rows)  # the columns are the union of every ARC's keys
    fixed = ["user_id", "context_id", "arc_class", "first_export", "last_export", "export_count"]
    others = sorted({key for row in rows for key in row} - set(fixed))
    writer = csv.DictWriter(out, fieldnames=fixed + others, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def _stats(store: SQLiteStore, args: argparse.Namespace) -> int:
    stats = store.stats()
    if args.json:
        print(dump_json(stats))
        return 0
    print(f"database      {store.path}")
    print(f"events        {stats['events']}")
    print(f"rejected      {stats['rejected']}  (malformed mona records, kept raw)")
    print(f"duplicates    {stats['duplicates']}  (resent records, dropped)")
    print(f"first event   {format_time(stats['first_event_time'])}")
    print(f"last event    {format_time(stats['last_event_time'])}")
    print(f"not merged    {stats['unmerged_events']} events in {stats['unmerged_rows']} raw rows  (merge lag)")
    print(f"merger        {stats['merger_restarts']} restart(s)" + (
        f", last error at {format_time(stats['merger_last_error_time'])}: {stats['merger_last_error']}"
        if stats["merger_last_error"] else ""))
    print(f"ARCs          {stats['arcs']}")
    for arc_class, count in stats["arcs_by_class"].items():
        print(f"  {arc_class or '(no class)':<20} {count}")
    print("tags")
    for tag, counts in stats["tags"].items():
        print(f"  {tag:<30} {counts['events']} events, {counts['rejected']} rejected, {counts['duplicates']} duplicates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
