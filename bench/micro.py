"""Per-call costs on the caller's thread: mona's ``export()`` and contexts next to floors and peers.

Every contender runs in this process, against peers in other processes (see :mod:`bench.sinks`):

* the mona client sends to a sink that acks every chunk, so its background sender does its real work;
* fluent-logger's senders (async with its default queue, and sync) send to a sink that decodes and
  discards;
* the OpenTelemetry SDK uses a batch span processor and an in-memory exporter (emptied between runs);
* structlog renders JSON into ``/dev/null``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, List, Optional

import msgpack

from bench.timing import Loop, calibrate, collected, median, percentile

#: The typical message: four fields, two KAPIs and two dimensions.
MESSAGE: Dict[str, Any] = {"score": 0.93, "segment": "eu", "rows": 1234, "model": "m-3"}
ARC_CLASS = "BENCH_ALGORITHM"


@dataclass
class Contender:
    key: str
    label: str
    stmt: str
    names: Dict[str, Any]
    inside_context: bool = False  # run inside an open mona context
    before: Optional[Callable[[], None]] = None  # untimed, before each measurement
    after: Optional[Callable[[], object]] = None  # untimed, after each batch and sample
    loop: Optional[Loop] = None
    batch_n: int = 0
    sample_n: int = 0


@dataclass
class Figures:
    """One repetition's figures for one contender, in nanoseconds."""

    per_op: float
    p50: float
    p99: float
    raw_per_op: float = 0.0
    extra: Dict[str, float] = field(default_factory=dict)


def in_context(inside: bool) -> ContextManager[Any]:
    """An open mona context (with an arc class) when ``inside``, else nothing."""
    from mona_client import client

    return client.new_mona_context(arc_class=ARC_CLASS) if inside else contextlib.nullcontext()


def _context_for(contender: Contender) -> ContextManager[Any]:
    return in_context(contender.inside_context)


class Micro:
    """Sets up the contenders once; :meth:`repetition` measures each once, in the given order."""

    def __init__(self, sink_port: int, workdir: str, quick: bool) -> None:
        self.quick = quick
        self.workdir = workdir
        self.batch_seconds = 0.003 if quick else 0.012
        self.batches = 2 if quick else 5
        self.sample_seconds = 0.01 if quick else 0.25
        self.sample_min, self.sample_max = (500, 3_000) if quick else (5_000, 50_000)
        self._closers: List[Callable[[], None]] = []
        self.config_path = os.path.join(workdir, "mona_client_config.json")
        self._write_config(False)
        self.contenders = self._build(sink_port)

    # --- setting up ---------------------------------------------------------------------------------

    def _write_config(self, disabled: bool) -> None:
        temporary = self.config_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump({"disable_all": disabled}, out)
        os.replace(temporary, self.config_path)

    def _set_disabled(self, disabled: bool) -> None:
        """Flip ``disable_all`` in the config file and wait until the client's watcher saw it."""
        from mona_client import client

        self._write_config(disabled)
        deadline = time.monotonic() + 10
        while client.is_active() == disabled:
            if time.monotonic() > deadline:
                raise RuntimeError("the config watcher did not apply disable_all within 10 s")
            time.sleep(0.001)

    def _build(self, sink_port: int) -> List[Contender]:
        import structlog
        from fluent import asyncsender, sender
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from mona_client import client

        client.init_client(
            port=sink_port,
            user_id="bench-user",
            config_file=self.config_path,
            spool_dir=os.path.join(self.workdir, "spool"),
            print_logs=False,
        )
        flush = lambda: client.flush(30)  # noqa: E731 - a callback, read where it is passed

        # The record export() encodes, as plain data: msgpack's floor for the same bytes.
        with client.new_mona_context(arc_class=ARC_CLASS) as context_id:
            now = int(time.time())
            record = [
                now,
                {
                    "user_id": "bench-user",
                    "context": context_id,
                    "message": MESSAGE,
                    "export_timestamp": now,
                    "record_id": f"{os.urandom(8).hex()}:{123456}",
                },
            ]
        self.record_bytes = len(msgpack.packb(record))
        self.message_bytes = len(msgpack.packb(MESSAGE))

        async_sender = asyncsender.FluentSender("bench", host="127.0.0.1", port=sink_port)
        sync_sender = sender.FluentSender("bench", host="127.0.0.1", port=sink_port)
        self._closers += [async_sender.close, sync_sender.close]

        def async_drained() -> None:
            queue = getattr(async_sender, "_queue", None)
            deadline = time.monotonic() + 30
            while queue is not None and not queue.empty() and time.monotonic() < deadline:
                time.sleep(0.0005)

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = provider.get_tracer("bench")
        self._closers.append(provider.shutdown)

        def spans_exported() -> None:
            provider.force_flush()
            exporter.clear()

        devnull = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._closers.append(devnull.close)
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.processors.JSONRenderer(),
            ],
            logger_factory=structlog.PrintLoggerFactory(devnull),
            cache_logger_on_first_use=True,
        )
        log = structlog.get_logger()

        var: contextvars.ContextVar[Any] = contextvars.ContextVar("bench_var")
        stack = (("3f2a9c0d1e4b5a67-1a", ARC_CLASS),)

        contenders = [
            Contender("empty", "empty loop (subtracted from all)", "pass", {}),
            Contender("packb_msg", "msgpack.packb(message)", "packb(msg)", {"packb": msgpack.packb, "msg": MESSAGE}),
            Contender(
                "packb_rec",
                "msgpack.packb(record) [floor]",
                "packb(record)",
                {"packb": msgpack.packb, "record": record},
            ),
            Contender(
                "export",
                "mona export()",
                "export(msg)",
                {"export": client.export, "msg": MESSAGE},
                inside_context=True,
                after=flush,
            ),
            Contender(
                "fluent_async",
                "fluent-logger async emit",
                "emit('run', msg)",
                {"emit": async_sender.emit, "msg": MESSAGE},
                before=async_drained,
                after=async_drained,
            ),
            Contender(
                "fluent_sync",
                "fluent-logger sync emit",
                "emit('run', msg)",
                {"emit": sync_sender.emit, "msg": MESSAGE},
            ),
            Contender(
                "otel",
                "OTel SDK span, 3 attributes",
                "with start('run', attributes=attrs):\n    pass",
                {"start": tracer.start_as_current_span, "attrs": {"score": 0.93, "segment": "eu", "rows": 1234}},
                after=spans_exported,
            ),
            Contender(
                "structlog",
                "structlog bind_contextvars + info",
                "bind(mona_context=cid)\nlog.info('export', **msg)",
                {"bind": structlog.contextvars.bind_contextvars, "log": log, "cid": stack[0][0], "msg": MESSAGE},
            ),
            Contender(
                "cvar",
                "ContextVar set + reset",
                "token = set_(value)\nreset(token)",
                {"set_": var.set, "reset": var.reset, "value": stack},
            ),
            Contender(
                "context",
                "mona context enter+exit (arc_class)",
                "with new_context(arc_class=arc_class):\n    pass",
                {"new_context": client.new_mona_context, "arc_class": ARC_CLASS},
                after=flush,
            ),
            Contender(
                "sub",
                "mona sub-context enter+exit",
                "with new_sub():\n    pass",
                {"new_sub": client.new_mona_sub_context},
                inside_context=True,
                after=flush,
            ),
            Contender(
                "sub_class",
                "mona sub-context enter+exit (arc_class)",
                "with new_sub(arc_class=arc_class):\n    pass",
                {"new_sub": client.new_mona_sub_context, "arc_class": "BENCH_STEP"},
                inside_context=True,
                after=flush,
            ),
            Contender(
                "disabled",
                "disabled: context + export",
                "with new_context(arc_class=arc_class):\n    export(msg)",
                {
                    "new_context": client.new_mona_context,
                    "arc_class": ARC_CLASS,
                    "export": client.export,
                    "msg": MESSAGE,
                },
                before=lambda: self._set_disabled(True),
            ),
        ]
        for contender in contenders:
            contender.loop = Loop(contender.stmt, contender.names)
            self._calibrate(contender)
        return contenders

    def _calibrate(self, contender: Contender) -> None:
        assert contender.loop is not None
        if contender.before is not None:
            contender.before()
        try:
            with _context_for(contender):
                contender.batch_n = calibrate(contender.loop, self.batch_seconds)
                per_op = contender.loop.batch(contender.batch_n)
        finally:
            if contender.after is not None:
                contender.after()
            if contender.key == "disabled":
                self._set_disabled(False)
        contender.sample_n = int(
            max(self.sample_min, min(self.sample_max, self.sample_seconds * 1e9 / max(per_op, 1.0)))
        )

    # --- measuring ----------------------------------------------------------------------------------

    def measure(self, contender: Contender) -> tuple[List[float], List[int]]:
        """(ns per op of each batch, ns of each sampled call) for one contender, timer costs included."""
        loop = contender.loop
        assert loop is not None
        collected()
        if contender.before is not None:
            contender.before()
        try:
            batches: List[float] = []
            with _context_for(contender):
                for _ in range(self.batches):
                    batches.append(loop.batch(contender.batch_n))
                    if contender.after is not None:
                        contender.after()
                samples = loop.sample(contender.sample_n)
        finally:
            if contender.after is not None:
                contender.after()
            if contender.key == "disabled":
                self._set_disabled(False)
        return batches, samples

    def repetition(self, order: List[Contender]) -> Dict[str, Figures]:
        """Measure each contender once, in ``order``; loop and timer costs are subtracted."""
        raw: Dict[str, tuple[List[float], List[int]]] = {}
        for contender in order:
            raw[contender.key] = self.measure(contender)
        empty_batches, empty_samples = raw["empty"]
        loop_cost = median(empty_batches)
        timer_cost = median(empty_samples)
        figures: Dict[str, Figures] = {}
        for key, (batches, samples) in raw.items():
            if key == "empty":
                figures[key] = Figures(loop_cost, timer_cost, percentile(empty_samples, 0.99), loop_cost)
                continue
            raw_per_op = median(batches)
            figures[key] = Figures(
                per_op=raw_per_op - loop_cost,
                p50=percentile(samples, 0.50) - timer_cost,
                p99=percentile(samples, 0.99) - timer_cost,
                raw_per_op=raw_per_op,
            )
        return figures

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:
                pass
