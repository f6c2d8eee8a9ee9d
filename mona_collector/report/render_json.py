"""The report as one strictly valid JSON object (docs/report-json.md): no NaN or infinity (null instead),
text that is valid UTF-8 (bytes that were not are shown as ``\\xNN`` escapes)."""

from __future__ import annotations

import json
import math
from typing import Any


def clean(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, numpy scalars and tuples made plain,
    and strings made encodable."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:  # surrogates kept from bytes that were not UTF-8
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {clean(key): clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(item) for item in value]
    if hasattr(value, "item") and callable(value.item):  # a numpy scalar
        return clean(value.item())
    return value


def render_json(report: Any) -> str:
    return json.dumps(clean(report), allow_nan=False, ensure_ascii=False)
