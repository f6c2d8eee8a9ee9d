"""Where the time of ``export()`` and of a context's enter+exit goes, step by step.

Each step of the client's hot paths is timed on its own (same compiled loops as the rest of the
bench), next to the whole call and to the floors it is built on. The steps reach into the client's
modules; a step that no longer exists there (the client changed) is shown as ``n/a``.
"""

from __future__ import annotations

import collections
import contextvars
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import msgpack

from bench.micro import ARC_CLASS, MESSAGE, in_context
from bench.timing import Loop, calibrate, collected, median

# (label, builder) where builder(context_id) returns (stmt, names, needs_flush, inside_context)
Fragment = Tuple[str, Dict[str, Any], bool, bool]
Step = Tuple[str, Callable[[str], Fragment]]


def _export_steps() -> List[Step]:
    from mona_client import client
    from mona_client import context as ctx
    from mona_client.export import Packing, packers
    from mona_client.runtime import runtime

    pipeline = runtime.pipeline

    def whole(_: str) -> Fragment:
        return "export(msg)", {"export": client.export, "msg": MESSAGE}, True, True

    def export_to(cid: str) -> Fragment:
        return "export_to(cid, msg)", {"export_to": pipeline.export_to, "cid": cid, "msg": MESSAGE}, True, False

    def lookup(_: str) -> Fragment:
        return (
            "p.active\nstack = current_stack()\nstack[-1][0]",
            {"p": pipeline, "current_stack": ctx.current_stack},
            False,
            True,
        )

    def known_keys(_: str) -> Fragment:
        return (
            "type(msg) is not dict or not msg.keys() <= good",
            {"msg": MESSAGE, "good": frozenset(MESSAGE)},
            False,
            False,
        )

    def key_join(_: str) -> Fragment:
        return 'type(msg) is not dict or "MONA_" in "\\n".join(msg)', {"msg": MESSAGE}, False, False

    def clock(_: str) -> Fragment:
        return "int(now())", {"now": time.time}, False, False

    def head_check(cid: str) -> Fragment:
        head = (int(time.time()), cid, b"")
        return "head[0] != ts or head[1] is not cid", {"head": head, "ts": head[0], "cid": cid}, False, False

    def pack(_: str) -> Fragment:
        return (
            "packing = packers.pop() if packers else Packing()\npacking.pack(msg)\npackers.append(packing)",
            {"packers": packers, "Packing": Packing, "msg": MESSAGE},
            False,
            False,
        )

    def record_id(_: str) -> Fragment:
        import itertools

        from mona_client.export import record_id_heads

        return (
            "digits = b'%d' % next(counter)\njoin((head, packed, heads[len(digits)], digits))",
            {
                "counter": itertools.count(123456),
                "join": b"".join,
                "head": b"h" * 90,
                "packed": msgpack.packb(MESSAGE),
                "heads": record_id_heads("3f2a9c0d1e4b5a67:"),
            },
            False,
            False,
        )

    def packb_record(cid: str) -> Fragment:
        now = int(time.time())
        record = [
            now,
            {
                "user_id": "bench-user",
                "context": cid,
                "message": MESSAGE,
                "export_timestamp": now,
                "record_id": "3f2a9c0d1e4b5a67:123456",
            },
        ]
        return "packb(record)", {"packb": msgpack.packb, "record": record}, False, False

    def put(cid: str) -> Fragment:
        sender = runtime.sender
        assert sender is not None
        entry = encode_entry(int(time.time()), "bench-user", cid, MESSAGE, "3f2a9c0d1e4b5a67:123456")
        return "put(entry)", {"put": sender.put, "entry": entry}, True, False

    def append(_: str) -> Fragment:
        return (
            "append(entry)\npop()",
            {"append": (q := collections.deque[bytes]()).append, "pop": q.pop, "entry": b"x"},
            False,
            False,
        )

    from mona_client.export import encode_entry

    return [
        ("export(msg): the whole call (one Python frame and the put)", whole),
        ("  pipeline.export_to(context id, msg) (export_batch's way)", export_to),
        ("  step: active + current_stack() + stack[-1][0]", lookup),
        ("  step: reserved-key check, keys known (subset test)", known_keys),
        ("    the same for new keys ('\\n'.join)", key_join),
        ("  step: int(time.time())", clock),
        ("  step: head check (same second, same context)", head_check),
        ("  step: Packer from the pool + pack(message)", pack),
        ("  step: record id digits + join of the entry", record_id),
        ("  step: Sender.put(entry)", put),
        ("    deque append + pop (floor)", append),
        ("  msgpack.packb(record) (floor of the whole call)", packb_record),
    ]


def _context_steps() -> List[Step]:
    from mona_client import client
    from mona_client import context as ctx
    from mona_client.runtime import runtime

    def whole(_: str) -> Fragment:
        return (
            "with new_context(arc_class=arc):\n    pass",
            {"new_context": client.new_mona_context, "arc": ARC_CLASS},
            True,
            False,
        )

    def bare(_: str) -> Fragment:
        return "with new_context():\n    pass", {"new_context": client.new_mona_context}, False, False

    def construct(_: str) -> Fragment:
        return "new_context(arc_class=arc)", {"new_context": client.new_mona_context, "arc": ARC_CLASS}, False, False

    def new_id(_: str) -> Fragment:
        return "new_id()", {"new_id": ctx.new_context_id}, False, False

    def push_pop(_: str) -> Fragment:
        return "pop(push(stack))", {"push": ctx.push, "pop": ctx.pop, "stack": (("x", ARC_CLASS),)}, False, False

    def cvar(_: str) -> Fragment:
        var: contextvars.ContextVar[Any] = contextvars.ContextVar("bench_breakdown")
        return "reset(set_(v))", {"set_": var.set, "reset": var.reset, "v": (("x", ARC_CLASS),)}, False, False

    def new_head(_: str) -> Fragment:
        from mona_client.runtime import runtime as rt

        return (
            "new_head(ts, new_id())",
            {"new_head": rt.pipeline._encoder.new_head, "ts": int(time.time()), "new_id": ctx.new_context_id},
            False,
            False,
        )

    def minimal_block(_: str) -> Fragment:
        return "with Minimal(arc_class=arc):\n    pass", {"Minimal": _MinimalBlock, "arc": ARC_CLASS}, False, False

    def off_stack(cid: str) -> Fragment:
        return (
            "off = OffStack(((cid, arc),))\noff.owed = ([(cid, arc, True, None)],)",
            {"OffStack": ctx.OffStack, "cid": cid, "arc": ARC_CLASS},
            False,
            False,
        )

    def arc_export(cid: str) -> Fragment:
        return (
            "open_exports(cid, arc, True, None)",
            {"open_exports": runtime.pipeline.open_context_exports, "cid": cid, "arc": ARC_CLASS},
            True,
            False,
        )

    def sub_whole(_: str) -> Fragment:
        return "with new_sub():\n    pass", {"new_sub": client.new_mona_sub_context}, True, True

    def sub_stack(cid: str) -> Fragment:
        return (
            "sub_stack(stack, new_id(), None)",
            {"sub_stack": ctx.sub_stack, "stack": ((cid, ARC_CLASS),), "new_id": ctx.new_context_id},
            False,
            False,
        )

    return [
        ("context enter+exit (arc_class): the whole block", whole),
        ("  the same without arc_class (no record exported)", bare),
        ("  step: new_mona_context(arc_class=...) object", construct),
        ("  step: new_context_id()", new_id),
        ("  step: context.push + context.pop", push_pop),
        ("    ContextVar set + reset (floor)", cvar),
        ("  step: the arc_class record (open_context_exports)", arc_export),
        ("    its new head (new_head, with new_context_id())", new_head),
        ("the floor of any with-block: a class with __slots__, 4 fields, no work", minimal_block),
        ("  an OffStack and what it owes (a block entered while off)", off_stack),
        ("sub-context enter+exit (no arc_class): the whole block", sub_whole),
        ("  step: new_context_id() + sub_stack()", sub_stack),
    ]


class _MinimalBlock:
    """A with-block that does nothing: the cost of the object, __enter__ and __exit__ in Python."""

    __slots__ = ("arc_class", "context_id", "export_timestamp", "measure_duration")

    def __init__(
        self,
        arc_class: Optional[str] = None,
        context_id: str = "",
        export_timestamp: Optional[float] = None,
        *,
        measure_duration: Optional[bool] = None,
    ) -> None:
        self.arc_class = arc_class
        self.context_id = context_id
        self.export_timestamp = export_timestamp
        self.measure_duration = measure_duration

    def __enter__(self) -> str:
        return ""

    def __exit__(self, *exc: object) -> None:
        return None


def measure(repetitions: int, quick: bool) -> List[Tuple[str, Optional[Tuple[float, float]]]]:
    """(median, lowest) ns per step over ``repetitions`` interleaved rounds; None for a step that is n/a."""
    from mona_client import client

    steps: List[Tuple[str, Optional[Tuple[Loop, int, bool, bool]]]] = []
    with client.new_mona_context(arc_class=ARC_CLASS) as context_id:
        pass
    empty = Loop("pass", {})
    target = 0.002 if quick else 0.015
    for group in (_export_steps, _context_steps):
        try:
            built = group()
        except (ImportError, AttributeError) as exc:  # the client changed shape
            steps.append((f"{group.__name__}: n/a ({exc})", None))
            continue
        for label, builder in built:
            try:
                stmt, names, flush, inside = builder(context_id)
                loop = Loop(stmt, names)
                with in_context(inside):
                    n = calibrate(loop, target)
                client.flush(30)
                steps.append((label, (loop, n, flush, inside)))
            except Exception:
                steps.append((label, None))
    results: Dict[str, List[float]] = {label: [] for label, _ in steps}
    for _ in range(repetitions):
        collected()
        loop_cost = median([empty.batch(100_000) for _ in range(3)])
        for label, entry in steps:
            if entry is None:
                continue
            loop, n, flush, inside = entry
            values = []
            for _ in range(2 if quick else 3):
                with in_context(inside):
                    values.append(loop.batch(n))
                if flush:
                    client.flush(30)
            results[label].append(median(values) - loop_cost)
    return [(label, (median(results[label]), min(results[label])) if results[label] else None) for label, _ in steps]
