"""Field filters of the ARC explorer: ``country = DE``, ``score < 0.5``, ``MODEL.decision != block``.

A filter names a flattened field (as ``mona report`` names them: ``MODEL.fraud_score``,
``globals.service``), an operator and a value. ``=`` and ``!=`` compare numbers as numbers when both
sides are numbers and as text otherwise; ``<``, ``<=``, ``>``, ``>=`` need a number and match only
numeric values. An ARC without the field matches only ``!=``.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

#: Filters per query, and characters per filter: enough for people, bounded for the server.
MAX_FILTERS = 10
MAX_FILTER_LENGTH = 200

_PATTERN = re.compile(r"^\s*([^\s=!<>]+)\s*(=|!=|<=|>=|<|>)\s*(.*?)\s*$")
_ORDER: Dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class FilterError(ValueError):
    """A filter that cannot be read; the message says which and why."""


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _numeric(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class FieldFilter:
    """One parsed filter."""

    field: str
    op: str
    value: str

    def matches(self, fields: Mapping[str, Any]) -> bool:
        present = fields.get(self.field)
        if present is None:
            return self.op == "!="
        if self.op in _ORDER:
            number = _numeric(present)
            wanted = _number(self.value)
            return number is not None and wanted is not None and _ORDER[self.op](number, wanted)
        number, wanted = _numeric(present), _number(self.value)
        equal = number == wanted if number is not None and wanted is not None else _text(present) == self.value
        return equal if self.op == "=" else not equal

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.value}"


def parse_filter(text: str) -> FieldFilter:
    """One filter from its text; raises :class:`FilterError` when it is malformed."""
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"a filter has at most {MAX_FILTER_LENGTH} characters")
    match = _PATTERN.match(text)
    if match is None:
        raise FilterError(f"{text[:60]!r} is not a filter like 'country = DE' or 'score < 0.5'")
    field, op, value = match.groups()
    if not value:
        raise FilterError(f"{text[:60]!r}: the value is missing")
    if op in _ORDER and _number(value) is None:
        raise FilterError(f"{text[:60]!r}: {op} needs a number, not {value[:40]!r}")
    return FieldFilter(field, op, value)


def parse_filters(texts: Sequence[str]) -> List[FieldFilter]:
    """The filters of a query (empty texts skipped); raises :class:`FilterError`."""
    texts = [text for text in texts if text.strip()]
    if len(texts) > MAX_FILTERS:
        raise FilterError(f"at most {MAX_FILTERS} filters")
    return [parse_filter(text) for text in texts]
