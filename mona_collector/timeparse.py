"""Reading the times the query CLI accepts: ``--since 15m``, ``2h``, ``7d`` or an ISO 8601 time."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Optional

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: Optional[float] = None) -> float:
    """The epoch seconds ``text`` designates: a duration back from ``now``, or an ISO time (naive
    ISO times are UTC, as export timestamps are). Raises ValueError otherwise."""
    match = _DURATION.match(text)
    if match:
        amount, unit = match.groups()
        return (time.time() if now is None else now) - float(amount) * _SECONDS[unit.lower()]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration like 15m, 2h, 7d nor an ISO time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def format_time(seconds: Optional[float]) -> str:
    """An epoch time as ISO 8601 UTC to the second, "-" for none, or the number itself when no
    calendar date has it (NaN, or beyond year 9999): a display never fails on a stored value."""
    if seconds is None:
        return "-"
    try:
        return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return repr(seconds)
