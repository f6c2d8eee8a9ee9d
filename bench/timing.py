"""Timing helpers: compiled measuring loops, percentiles, medians.

A contender is a statement (one or more lines of Python) and the names it uses. Like :mod:`timeit`,
the statement is compiled into the body of a loop inside a function whose locals hold those names, so
the loop costs what the statement costs in user code, plus the loop itself (measured separately with
``pass`` and subtracted).

Two loops are built per contender:

* ``batch(n)``: the time of ``n`` runs in one stretch, divided by ``n``: the typical cost per call;
* ``sample(n)``: ``n`` runs each timed by its own pair of ``perf_counter_ns`` calls, for percentiles.
  The cost of the timer pair itself (measured with an empty statement) is subtracted.
"""

from __future__ import annotations

import gc
import statistics
import textwrap
import time
from typing import Any, Callable, Dict, List, Sequence

_TEMPLATE = """
def _batch(_n, _pc, _ns):
{bind}
    _t0 = _pc()
    for _i in range(_n):
{stmt}
    return _pc() - _t0

def _sample(_n, _pc, _ns):
{bind}
    _out = [0] * _n
    for _i in range(_n):
        _t0 = _pc()
{stmt}
        _out[_i] = _pc() - _t0
    return _out
"""


class Loop:
    """The two compiled measuring loops of one statement."""

    def __init__(self, stmt: str, names: Dict[str, Any]) -> None:
        bind = "\n".join(f"    {name} = _ns[{name!r}]" for name in names) or "    pass"
        source = _TEMPLATE.format(bind=bind, stmt=textwrap.indent(textwrap.dedent(stmt).strip(), " " * 8))
        scope: Dict[str, Any] = {}
        exec(compile(source, f"<bench loop: {stmt.strip()[:40]}>", "exec"), scope)
        self._batch: Callable[..., int] = scope["_batch"]
        self._sample: Callable[..., List[int]] = scope["_sample"]
        self._names = names

    def batch(self, n: int) -> float:
        """Nanoseconds per run, over ``n`` runs in a row."""
        return self._batch(n, time.perf_counter_ns, self._names) / n

    def sample(self, n: int) -> List[int]:
        """Nanoseconds of each of ``n`` runs, each timed on its own (timer cost included)."""
        return self._sample(n, time.perf_counter_ns, self._names)


def calibrate(loop: Loop, target_seconds: float, minimum: int = 20, maximum: int = 2_000_000) -> int:
    """How many runs take about ``target_seconds``."""
    n = 10
    while True:
        per_run = loop.batch(n)
        if per_run * n > 2_000_000 or n >= maximum:  # at least 2 ms measured
            break
        n *= 10
    return max(minimum, min(maximum, int(target_seconds * 1e9 / max(per_run, 1.0))))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` percentile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return float(ordered[rank])


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def collected() -> None:
    """A full collection before a measurement, so one contender does not pay for another's garbage."""
    gc.collect()
