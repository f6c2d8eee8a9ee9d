"""The two periods a report compares: the window (``--since``, by default the last 24 h) and the
baseline (``--baseline``: a duration right before the window, by default 7 days, or ``A..B``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from ..timeparse import parse_since

DEFAULT_SINCE = "24h"
DEFAULT_BASELINE = "7d"


@dataclass(frozen=True)
class Periods:
    """Half-open intervals of epoch seconds: an ARC belongs to one when its first export is in it."""

    window_start: float
    window_end: float
    baseline_start: float
    baseline_end: float


def _moment(text: str, now: float, option: str) -> float:
    try:
        return parse_since(text, now)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{option}: {exc}") from None


def parse_periods(
    since: Optional[str] = None,
    baseline: Optional[str] = None,
    until: Optional[str] = None,
    now: Optional[float] = None,
) -> Periods:
    """The periods the options name; raises ValueError with a one-line reason when they do not make sense.

    ``since`` and ``until`` are durations back from ``now`` or ISO times; ``baseline`` is a duration
    (the baseline then ends where the window starts) or ``A..B`` with A and B durations or ISO times.
    """
    now = time.time() if now is None else now
    window_end = now if until is None else _moment(until, now, "--until")
    window_start = _moment(since or DEFAULT_SINCE, now, "--since")
    if not window_start < window_end:
        raise ValueError("--since: the window must start before it ends")
    text = baseline or DEFAULT_BASELINE
    if ".." in text:
        first, _, last = text.partition("..")
        baseline_start = _moment(first, now, "--baseline")
        baseline_end = _moment(last, now, "--baseline")
    else:
        length = window_start - _moment(text, window_start, "--baseline")
        if length <= 0:
            raise ValueError("--baseline: expected a duration like 7d, or A..B with two times")
        baseline_start, baseline_end = window_start - length, window_start
    if not baseline_start < baseline_end:
        raise ValueError("--baseline: the baseline must start before it ends")
    return Periods(window_start, window_end, baseline_start, baseline_end)
