"""The monitoring config: a JSON file that says, per ARC class, how to read and judge its fields.

It is read by ``mona report --config FILE`` and meant for everything built on top of the report.
Every key is optional; see docs/report.md for the reference::

    {
      "defaults": {"min_n": 100, "thresholds": {"psi": [0.1, 0.25]}},
      "classes": {
        "FRAUD_SCORER": {
          "kapis": ["retries"], "dimensions": ["MODEL.version"], "ignore": ["request_id"],
          "buckets": {"amount": [10, 100, 1000]},
          "thresholds": {"segment_k": [1, 2]}, "min_segment_arcs": 50, "min_segment_share": 0.02,
          "model": {"prediction": "MODEL.decision", "label": "outcome", "kind": "classification", "bucket": "day"}
        }
      },
      "alerts": {"rules": [...], "sinks": [...]}
    }

``defaults`` apply to every class; a class's own entry overrides them key by key (thresholds metric by
metric; ``model`` key by key). A malformed config raises :class:`ConfigError` naming the key at fault.
The ``alerts`` section is kept as written here and checked by :mod:`mona_collector.alerts.rules`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple

#: Each threshold: (warn, alert). A value at or above warn is ``warn``, at or above alert ``alert``.
DEFAULT_THRESHOLDS: Dict[str, Tuple[float, float]] = {
    "psi": (0.1, 0.25),
    "js": (0.1, 0.2),
    "ks": (0.1, 0.2),
    "mean_shift": (1.0, 2.0),
    "segment_k": (1.0, 2.0),
    "size_factor": (2.0, 4.0),
}
DEFAULT_MIN_N = 100
DEFAULT_MIN_SEGMENT_ARCS = 30
DEFAULT_MIN_SEGMENT_SHARE = 0.01
#: The kinds of model a class's prediction and label can be judged as, and the lengths of the
#: buckets of the metrics' series.
MODEL_KINDS = ("classification", "regression")
METRIC_BUCKETS = {"day": 86400.0, "hour": 3600.0}
_MODEL_KEYS = ("prediction", "label", "kind", "bucket")

_SETTING_KEYS = {
    "kapis",
    "dimensions",
    "ignore",
    "buckets",
    "thresholds",
    "min_n",
    "min_segment_arcs",
    "min_segment_share",
    "model",
}


class ConfigError(ValueError):
    """A monitoring config that cannot be used; the message names the file's key at fault."""


@dataclass(frozen=True)
class ModelSettings:
    """Where a class's model decision and its ground truth are, and how to judge them.

    ``None`` fields are found or inferred: the fields named ``prediction`` and ``label`` (root first),
    the kind from their values. ``bucket`` is the length of the metrics' series: ``day`` or ``hour``.
    """

    prediction: Optional[str] = None
    label: Optional[str] = None
    kind: Optional[str] = None
    bucket: str = "day"

    def as_json(self) -> Dict[str, Any]:
        return {"prediction": self.prediction, "label": self.label, "kind": self.kind, "bucket": self.bucket}


@dataclass(frozen=True)
class ClassSettings:
    """How one class is read and judged (the defaults, overridden by the config)."""

    kapis: FrozenSet[str] = frozenset()
    dimensions: FrozenSet[str] = frozenset()
    ignore: FrozenSet[str] = frozenset()
    buckets: Mapping[str, Tuple[float, ...]] = field(default_factory=dict)
    thresholds: Mapping[str, Tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    min_n: int = DEFAULT_MIN_N
    min_segment_arcs: int = DEFAULT_MIN_SEGMENT_ARCS
    min_segment_share: float = DEFAULT_MIN_SEGMENT_SHARE
    model: ModelSettings = field(default_factory=ModelSettings)

    def as_json(self) -> Dict[str, Any]:
        """The settings as the report's JSON shows them."""
        return {
            "thresholds": {name: {"warn": warn, "alert": alert} for name, (warn, alert) in self.thresholds.items()},
            "min_n": self.min_n,
            "min_segment_arcs": self.min_segment_arcs,
            "min_segment_share": self.min_segment_share,
            "kapis": sorted(self.kapis),
            "dimensions": sorted(self.dimensions),
            "ignore": sorted(self.ignore),
            "buckets": {name: list(bounds) for name, bounds in sorted(self.buckets.items())},
            "model": self.model.as_json(),
        }


@dataclass(frozen=True)
class MonitoringConfig:
    """A parsed config: the defaults and the entries of named classes."""

    defaults: ClassSettings = field(default_factory=ClassSettings)
    classes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: The ``alerts`` section as written (None when absent), see mona_collector.alerts.rules.
    alerts: Optional[Any] = None

    def for_class(self, arc_class: str) -> ClassSettings:
        entry = self.classes.get(arc_class)
        return self.defaults if entry is None else _apply(self.defaults, entry, f"classes.{arc_class}")


def _names(value: Any, where: str) -> FrozenSet[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: expected a list of field names")
    return frozenset(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number")
    return float(value)


def _buckets(value: Any, where: str) -> Dict[str, Tuple[float, ...]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a map of field name to a list of boundaries")
    out: Dict[str, Tuple[float, ...]] = {}
    for name, bounds in value.items():
        if not isinstance(bounds, list) or not bounds:
            raise ConfigError(f"{where}.{name}: expected a non-empty list of increasing numbers")
        numbers = tuple(_number(bound, f"{where}.{name}") for bound in bounds)
        if any(low >= high for low, high in zip(numbers, numbers[1:])):
            raise ConfigError(f"{where}.{name}: the boundaries must increase")
        out[name] = numbers
    return out


def _thresholds(base: Mapping[str, Tuple[float, float]], value: Any, where: str) -> Dict[str, Tuple[float, float]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a map of metric to [warn, alert]")
    out = dict(base)
    for name, pair in value.items():
        if name not in DEFAULT_THRESHOLDS:
            raise ConfigError(f"{where}.{name}: unknown metric (known: {', '.join(DEFAULT_THRESHOLDS)})")
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(f"{where}.{name}: expected [warn, alert]")
        warn, alert = (_number(item, f"{where}.{name}") for item in pair)
        if not 0 <= warn <= alert:
            raise ConfigError(f"{where}.{name}: expected 0 <= warn <= alert")
        if name == "size_factor" and warn <= 1:
            raise ConfigError(f"{where}.{name}: a size factor must be above 1")
        out[name] = (warn, alert)
    return out


def _whole(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a whole number of at least 1")
    return value


def _model(base: ModelSettings, value: Any, where: str) -> ModelSettings:
    """``base`` with what the ``model`` object ``value`` sets."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object with {', '.join(_MODEL_KEYS)}")
    unknown = sorted(set(value) - set(_MODEL_KEYS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(_MODEL_KEYS)})")
    changes: Dict[str, Any] = {}
    for key in ("prediction", "label"):
        if key in value:
            if not isinstance(value[key], str) or not value[key]:
                raise ConfigError(f"{where}.{key}: expected a field name")
            changes[key] = value[key]
    if "kind" in value:
        if value["kind"] not in MODEL_KINDS:
            raise ConfigError(f"{where}.kind: expected one of {', '.join(MODEL_KINDS)}")
        changes["kind"] = value["kind"]
    if "bucket" in value:
        if value["bucket"] not in METRIC_BUCKETS:
            raise ConfigError(f"{where}.bucket: expected one of {', '.join(METRIC_BUCKETS)}")
        changes["bucket"] = value["bucket"]
    return replace(base, **changes)


def _apply(settings: ClassSettings, entry: Mapping[str, Any], where: str) -> ClassSettings:
    """``settings`` with what ``entry`` (a config object) sets."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object")
    unknown = sorted(set(entry) - _SETTING_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(_SETTING_KEYS))})")
    changes: Dict[str, Any] = {}
    for key in ("kapis", "dimensions", "ignore"):
        if key in entry:
            changes[key] = _names(entry[key], f"{where}.{key}")
    if "buckets" in entry:
        changes["buckets"] = {**settings.buckets, **_buckets(entry["buckets"], f"{where}.buckets")}
    if "thresholds" in entry:
        changes["thresholds"] = _thresholds(settings.thresholds, entry["thresholds"], f"{where}.thresholds")
    for key in ("min_n", "min_segment_arcs"):
        if key in entry:
            changes[key] = _whole(entry[key], f"{where}.{key}")
    if "min_segment_share" in entry:
        share = _number(entry["min_segment_share"], f"{where}.min_segment_share")
        if not 0 <= share <= 1:
            raise ConfigError(f"{where}.min_segment_share: expected a fraction between 0 and 1")
        changes["min_segment_share"] = share
    if "model" in entry:
        changes["model"] = _model(settings.model, entry["model"], f"{where}.model")
    result = replace(settings, **changes)
    both = result.kapis & result.dimensions
    if both:
        raise ConfigError(f"{where}: {sorted(both)[0]!r} is declared both a KAPI and a dimension")
    return result


def parse_config(text: str) -> MonitoringConfig:
    """A config from its JSON text; raises :class:`ConfigError` when it is not valid."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError("expected a JSON object with 'defaults', 'classes' and/or 'alerts'")
    unknown: List[str] = sorted(set(document) - {"defaults", "classes", "alerts"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key (known: alerts, classes, defaults)")
    defaults = _apply(ClassSettings(), document.get("defaults", {}), "defaults")
    classes = document.get("classes", {})
    if not isinstance(classes, dict):
        raise ConfigError("classes: expected a map of ARC class to its settings")
    config = MonitoringConfig(defaults, classes, document.get("alerts"))
    for arc_class in classes:  # check every entry now, not when its class is reported
        config.for_class(arc_class)
    return config


def load_config(path: str) -> MonitoringConfig:
    """The config in the file at ``path``; a file that cannot be read is a :class:`ConfigError` too."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"cannot read {path}: {reason}") from None
    return parse_config(text)
