"""Bytes each queued export holds in memory, measured in a fresh process.

The client is started as usual, then its sender is replaced by one aimed at a port where nothing
listens and given no spool: the sender thread's connection attempts fail, so every export stays in
its queue (with a spool, the sender would move them to disk, which is what it is for, but then the
queue would not be what is measured). The queue holds the encoded entry of each export and nothing
else; its growth over ``count`` exports, divided by ``count``, is the figure:

* ``tracemalloc``: the Python allocations still alive after the exports (exact, includes the
  deque's blocks);
* ``rss``: the growth of the resident set, what the operating system sees.

    python3 -m bench.memory --count 100000     # prints one JSON line
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import tracemalloc

import psutil


def main() -> None:
    parser = argparse.ArgumentParser(description="bytes per queued export")
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()

    from bench.micro import ARC_CLASS, MESSAGE
    from bench.sinks import free_port
    from mona_client import client
    from mona_client.runtime import runtime
    from mona_client.transport import Sender, SenderOptions

    workdir = tempfile.mkdtemp(prefix="mona-bench-memory-")
    dead_port = free_port()  # bound and closed at once: connecting is refused
    client.init_client(port=dead_port, user_id="bench-user", spool_dir=os.path.join(workdir, "spool"), print_logs=False)
    sender = Sender(SenderOptions("127.0.0.1", dead_port, max_queue=args.count * 2 + 1000), spool=None)
    runtime.pipeline.sender = sender
    export = client.export
    process = psutil.Process()

    with client.new_mona_context(arc_class=ARC_CLASS):
        for _ in range(1000):  # warm up: the sender thread starts and fails, caches fill
            export(MESSAGE)
        sender.batcher.queue.clear()
        gc.collect()

        tracemalloc.start()
        before_traced, _ = tracemalloc.get_traced_memory()
        for _ in range(args.count):
            export(MESSAGE)
        gc.collect()
        after_traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        traced_queued = len(sender.batcher.queue)
        entry_bytes = len(sender.batcher.queue[0]) if sender.batcher.queue else 0
        sender.batcher.queue.clear()
        gc.collect()

        before_rss = process.memory_info().rss
        for _ in range(args.count):
            export(MESSAGE)
        after_rss = process.memory_info().rss
        rss_queued = len(sender.batcher.queue)

    stats = sender.stats()
    print(
        json.dumps(
            {
                "count": args.count,
                "queued": min(traced_queued, rss_queued),
                "sent": stats["sent"],
                "dropped": stats["dropped"],
                "entry_bytes": entry_bytes,
                "object_bytes": sys.getsizeof(b"x" * entry_bytes),
                "tracemalloc_per_export": (after_traced - before_traced) / traced_queued,
                "rss_per_export": (after_rss - before_rss) / rss_queued,
            }
        )
    )
    sys.stdout.flush()
    shutil.rmtree(workdir, ignore_errors=True)
    os._exit(0)  # nothing to deliver: skip the exit flush towards the dead port


if __name__ == "__main__":
    main()
