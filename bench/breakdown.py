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
    from mona_client.export import encode_entry
    from mona_client.runtime import runtime

    def whole(_: str) -> Fragment:
        return "export(msg)", {"export": client.export, "msg": MESSAGE}, True, True

    def no_facade(_: str) -> Fragment:
        return "export(msg)", {"export": runtime.export, "msg": MESSAGE}, True, True

    def export_to(cid: str) -> Fragment:
        return "export_to(cid, msg)", {"export_to": runtime.pipeline.export_to, "cid": cid, "msg": MESSAGE}, True, False

    def lookup(_: str) -> Fragment:
        return (
            "rt.active\nstack = current_stack()\nstack[-1][0]",
            {"rt": runtime, "current_stack": ctx.current_stack},
            False,
            True,
        )

    def key_check(_: str) -> Fragment:
        return 'type(msg) is not dict or "MONA_" in "\\n".join(msg)', {"msg": MESSAGE}, False, False

    def clock(_: str) -> Fragment:
        return "int(now())", {"now": time.time}, False, False

    def record_id(_: str) -> Fragment:
        import itertools

        return "f'{src}{next(counter)}'", {"src": "3f2a9c0d1e4b5a67:", "counter": itertools.count(1)}, False, False

    def encode(cid: str) -> Fragment:
        return (
            "encode(ts, uid, cid, msg, rid)",
            {
                "encode": encode_entry,
                "ts": int(time.time()),
                "uid": "bench-user",
                "cid": cid,
                "msg": MESSAGE,
                "rid": "3f2a9c0d1e4b5a67:123456",
            },
            False,
            False,
        )

    def reused_packer(cid: str) -> Fragment:
        packer = msgpack.Packer(use_bin_type=False, autoreset=True)
        return (
            "pack([ts, {'user_id': uid, 'context': cid, 'message': msg, 'export_timestamp': ts, 'record_id': rid}])",
            {
                "pack": packer.pack,
                "ts": int(time.time()),
                "uid": "bench-user",
                "cid": cid,
                "msg": MESSAGE,
                "rid": "3f2a9c0d1e4b5a67:123456",
            },
            False,
            False,
        )

    def strict_packer(cid: str) -> Fragment:
        packer = msgpack.Packer(use_bin_type=False, autoreset=True, strict_types=True, default=str)
        names = reused_packer(cid)[1]
        names["pack"] = packer.pack
        return reused_packer(cid)[0], names, False, False

    def build(cid: str) -> Fragment:
        return (
            "[ts, {'user_id': uid, 'context': cid, 'message': msg, 'export_timestamp': ts, 'record_id': rid}]",
            {"ts": int(time.time()), "uid": "bench-user", "cid": cid, "msg": MESSAGE, "rid": "3f2a9c0d1e4b5a67:123456"},
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

    return [
        ("export(msg): the whole call", whole),
        ("  runtime.export(msg) (without the facade's call)", no_facade),
        ("  pipeline.export_to(context id, msg)", export_to),
        ("  step: active + current_stack() + stack[-1][0]", lookup),
        ("  step: reserved-key check ('\\n'.join)", key_check),
        ("  step: int(time.time())", clock),
        ("  step: record id f-string + next(counter)", record_id),
        ("  step: encode_entry(...)", encode),
        ("    build [ts, {5 keys}] alone", build),
        ("    reused Packer.pack of it (no strict_types)", reused_packer),
        ("    reused Packer.pack of it (strict_types, default)", strict_packer),
        ("    msgpack.packb(record) (floor)", packb_record),
        ("  step: Sender.put(entry)", put),
        ("    deque append + pop (floor)", append),
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
        ("sub-context enter+exit (no arc_class): the whole block", sub_whole),
        ("  step: new_context_id() + sub_stack()", sub_stack),
    ]


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
