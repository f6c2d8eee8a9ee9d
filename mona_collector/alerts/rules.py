"""Alert rules: what to watch, when it is wrong, and where to say so; parsed from the monitoring config.

The ``alerts`` section of the monitoring config (docs/alerts.md)::

    "alerts": {
      "rules": [
        {"class": "FRAUD_SCORER", "subject": "metric", "metric": "f1_macro", "by": "country",
         "below": 0.8, "window": "1d", "severity": "critical"},
        {"subject": "silence", "minutes": 30}
      ],
      "sinks": [{"type": "webhook", "url": "http://alerts.internal/hook"}]
    }

Every key is checked: an unknown key, a value of the wrong type or a missing threshold raises
:class:`~mona_collector.report.ConfigError` naming the key (``alerts.rules[1].below``). Without an
``alerts.rules`` key, :func:`default_rules` apply.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..report.monitoring_config import ConfigError, MonitoringConfig, load_config, parse_config

DRIFT, SEGMENT, METRIC, VOLUME, EXCEPTIONS, SILENCE = "drift", "segment", "metric", "volume", "exceptions", "silence"
SUBJECTS = (DRIFT, SEGMENT, METRIC, VOLUME, EXCEPTIONS, SILENCE)
SEVERITIES = ("info", "warning", "critical")
DRIFT_MEASURES = ("psi", "js", "ks", "mean_shift")
SEGMENT_KINDS = ("outlier", "drift", "size")
#: The metrics a ``metric`` rule can name (and ``precision:C``, ``recall:C``, ``f1:C`` for a class C).
METRICS = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "label_share",
    "mae",
    "rmse",
    "mean_error",
)
PER_CLASS_METRICS = ("precision", "recall", "f1")
EVERY_CLASS = "*"
DEFAULT_WINDOW = 86400.0
DEFAULT_BASELINE = 7 * 86400.0
DEFAULT_METRIC_MIN_N = 30
DEFAULT_OUTBOX_LIMIT = 1000
DEFAULT_WEBHOOK_TIMEOUT = 5.0
DEFAULT_COMMAND_TIMEOUT = 10.0
DEFAULT_MAX_BACKOFF = 300.0

_COMMON_KEYS = ("name", "class", "subject", "severity", "window", "open_after", "resolve_after")
_SUBJECT_KEYS: Dict[str, Tuple[str, ...]] = {
    DRIFT: ("kapi", "measure", "above", "baseline"),
    SEGMENT: ("kapi", "kind", "status", "baseline"),
    METRIC: ("metric", "by", "above", "below", "min_n"),
    VOLUME: ("above", "below"),
    EXCEPTIONS: ("above",),
    SILENCE: ("minutes",),
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SECTION_KEYS = ("rules", "sinks", "outbox_limit", "max_backoff")
_SINK_KEYS = {
    "log": ("type", "name"),
    "webhook": ("type", "name", "url", "timeout", "headers"),
    "command": ("type", "name", "command", "timeout"),
}


def parse_duration(text: str) -> float:
    """Seconds from a duration such as ``30s``, ``5m``, ``24h``, ``7d``, ``2w``; ValueError otherwise."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{str(text)[:40]!r} is not a duration like 30s, 5m, 24h or 7d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]


@dataclass(frozen=True)
class Rule:
    """One rule. ``above``/``below``: the value fires when it is strictly beyond (``None``: not used;
    a drift rule without ``above`` uses the class's alert threshold of its measure)."""

    name: str
    subject: str
    arc_class: str = EVERY_CLASS
    severity: str = "warning"
    window: float = DEFAULT_WINDOW
    baseline: float = DEFAULT_BASELINE
    kapi: Optional[str] = None
    measure: Optional[str] = None
    by: Optional[str] = None
    above: Optional[float] = None
    below: Optional[float] = None
    min_n: int = DEFAULT_METRIC_MIN_N
    status: str = "alert"
    open_after: int = 1
    resolve_after: int = 2

    def fires(self, value: float, above: Optional[float] = None) -> bool:
        """Whether ``value`` is beyond this rule's threshold (``above`` replaces the rule's own)."""
        limit = self.above if above is None else above
        if limit is not None and value > limit:
            return True
        return self.below is not None and value < self.below

    def as_json(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "class": self.arc_class,
            "subject": self.subject,
            "severity": self.severity,
            "window": self.window,
            "kapi": self.kapi,
            "measure": self.measure,
            "by": self.by,
            "above": self.above,
            "below": self.below,
        }


@dataclass(frozen=True)
class SinkConfig:
    """Where an alert's openings and resolutions go: ``log``, ``webhook`` (``url``) or ``command``."""

    name: str
    kind: str
    url: Optional[str] = None
    command: Tuple[str, ...] = ()
    timeout: float = DEFAULT_WEBHOOK_TIMEOUT
    headers: Tuple[Tuple[str, str], ...] = ()


@dataclass(frozen=True)
class AlertConfig:
    """The rules and sinks of a monitoring config, and the monitoring config itself (class settings)."""

    monitoring: MonitoringConfig
    rules: Tuple[Rule, ...]
    sinks: Tuple[SinkConfig, ...] = ()
    outbox_limit: int = DEFAULT_OUTBOX_LIMIT
    max_backoff: float = DEFAULT_MAX_BACKOFF
    defaults_used: bool = False


def default_rules() -> Tuple[Rule, ...]:
    """The rules when none are written: for every class, each KAPI's PSI beyond the class's PSI alert
    threshold (0.25 unless the config sets another), the last 24 h against the 7 days before."""
    return (Rule(name="default: KAPI drift (PSI)", subject=DRIFT, measure="psi"),)


# --- checking values ---------------------------------------------------------------------------------


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a number, not {_shown(value)}")
    return float(value)


def _whole(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a whole number of at least 1, not {_shown(value)}")
    return value


def _text(value: Any, where: str, choices: Sequence[str] = ()) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a text value, not {_shown(value)}")
    if choices and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _duration(value: Any, where: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _metric_name(value: Any, where: str) -> str:
    name = _text(value, where)
    kind, _, cls = name.partition(":")
    if name in METRICS or (kind in PER_CLASS_METRICS and cls):
        return name
    known = ", ".join(METRICS)
    raise ConfigError(f"{where}: unknown metric {name!r} (known: {known}, and precision:C, recall:C, f1:C)")


# --- rules -------------------------------------------------------------------------------------------


def _default_name(rule: Dict[str, Any]) -> str:
    detail = [rule["subject"]]
    for key in ("kapi", "measure", "metric", "kind", "by"):
        if rule.get(key) is not None:
            detail.append(f"{key}={rule[key]}")
    for key, sign in (("above", ">"), ("below", "<"), ("minutes", "min >=")):
        if rule.get(key) is not None:
            detail.append(f"{sign} {rule[key]}")
    return f"{rule.get('class', EVERY_CLASS)}: {' '.join(str(part) for part in detail)}"


def parse_rule(entry: Any, where: str) -> Rule:
    """One rule from its JSON object; ConfigError names ``where`` and the key at fault."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object")
    if "subject" not in entry:
        raise ConfigError(f"{where}.subject: missing (one of {', '.join(SUBJECTS)})")
    subject = _text(entry["subject"], f"{where}.subject", SUBJECTS)
    allowed = _COMMON_KEYS + _SUBJECT_KEYS[subject]
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key for a {subject} rule (known: {', '.join(allowed)})")
    values: Dict[str, Any] = {"subject": subject}
    for key in ("name", "kapi", "by"):
        if key in entry:
            values[key] = _text(entry[key], f"{where}.{key}")
    if "class" in entry:
        values["arc_class"] = _text(entry["class"], f"{where}.class")
    if "severity" in entry:
        values["severity"] = _text(entry["severity"], f"{where}.severity", SEVERITIES)
    for key in ("window", "baseline"):
        if key in entry:
            values[key] = _duration(entry[key], f"{where}.{key}")
    for key in ("open_after", "resolve_after", "min_n"):
        if key in entry:
            values[key] = _whole(entry[key], f"{where}.{key}")
    for key in ("above", "below"):
        if key in entry:
            values[key] = _number(entry[key], f"{where}.{key}")
    _subject_values(subject, entry, values, where)
    values.setdefault("name", _default_name({**entry, "subject": subject}))
    return Rule(**values)


def _subject_values(subject: str, entry: Mapping[str, Any], values: Dict[str, Any], where: str) -> None:
    """The keys particular to ``subject``, and the thresholds it needs."""
    if subject == DRIFT:
        values["measure"] = _text(entry.get("measure", "psi"), f"{where}.measure", DRIFT_MEASURES)
    elif subject == SEGMENT:
        if "kind" in entry:
            values["measure"] = _text(entry["kind"], f"{where}.kind", SEGMENT_KINDS)
        values["status"] = _text(entry.get("status", "alert"), f"{where}.status", ("warn", "alert"))
    elif subject == METRIC:
        if "metric" not in entry:
            raise ConfigError(f"{where}.metric: missing (one of {', '.join(METRICS)})")
        values["measure"] = _metric_name(entry["metric"], f"{where}.metric")
    elif subject == SILENCE:
        if "minutes" not in entry:
            raise ConfigError(f"{where}.minutes: missing (the minutes without an ARC that fire the rule)")
        minutes = _number(entry["minutes"], f"{where}.minutes")
        if minutes <= 0:
            raise ConfigError(f"{where}.minutes: expected a number of minutes above 0")
        values["above"] = minutes
        values["window"] = minutes * 60
    if subject in (METRIC, VOLUME) and ("above" in values) == ("below" in values):
        raise ConfigError(f"{where}: expected one threshold, 'above' or 'below'")
    if subject == EXCEPTIONS:
        if "above" not in values:
            raise ConfigError(f"{where}.above: missing (the share of ARCs with an exception, 0 to 1)")
        if not 0 <= values["above"] <= 1:
            raise ConfigError(f"{where}.above: expected a share between 0 and 1")


# --- sinks and the whole section ---------------------------------------------------------------------


def parse_sink(entry: Any, where: str) -> SinkConfig:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object with a 'type' (log, webhook, command)")
    kind = _text(entry.get("type"), f"{where}.type", tuple(_SINK_KEYS))
    unknown = sorted(set(entry) - set(_SINK_KEYS[kind]))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key for a {kind} sink (known: {', '.join(_SINK_KEYS[kind])})")
    timeout = DEFAULT_COMMAND_TIMEOUT if kind == "command" else DEFAULT_WEBHOOK_TIMEOUT
    if "timeout" in entry:
        timeout = _number(entry["timeout"], f"{where}.timeout")
        if timeout <= 0:
            raise ConfigError(f"{where}.timeout: expected seconds above 0")
    if kind == "webhook":
        url = _text(entry.get("url"), f"{where}.url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url: expected an http:// or https:// address")
        headers = entry.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ConfigError(f"{where}.headers: expected a map of header name to text")
        name = _text(entry.get("name", f"webhook {url}"), f"{where}.name")
        return SinkConfig(name, kind, url=url, timeout=timeout, headers=tuple(sorted(headers.items())))
    if kind == "command":
        command = entry.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(part, str) for part in command):
            raise ConfigError(f"{where}.command: expected a non-empty list of arguments, the program first")
        name = _text(entry.get("name", f"command {command[0]}"), f"{where}.name")
        return SinkConfig(name, kind, command=tuple(command), timeout=timeout)
    return SinkConfig(_text(entry.get("name", "log"), f"{where}.name"), kind)


def alert_config(monitoring: MonitoringConfig) -> AlertConfig:
    """The rules and sinks of ``monitoring``'s ``alerts`` section (the defaults without one)."""
    section = monitoring.alerts
    if section is None:
        return AlertConfig(monitoring, default_rules(), defaults_used=True)
    if not isinstance(section, dict):
        raise ConfigError("alerts: expected an object with rules and sinks")
    unknown = sorted(set(section) - set(_SECTION_KEYS))
    if unknown:
        raise ConfigError(f"alerts.{unknown[0]}: unknown key (known: {', '.join(_SECTION_KEYS)})")
    rules: List[Rule] = []
    defaults_used = "rules" not in section
    entries = section.get("rules", [])
    if not isinstance(entries, list):
        raise ConfigError("alerts.rules: expected a list of rules")
    names: Dict[str, int] = {}
    for index, entry in enumerate(entries):
        rule = parse_rule(entry, f"alerts.rules[{index}]")
        if rule.name in names:
            raise ConfigError(
                f"alerts.rules[{index}].name: {rule.name!r} is also the name of rules[{names[rule.name]}]"
            )
        names[rule.name] = index
        rules.append(rule)
    sinks = section.get("sinks", [])
    if not isinstance(sinks, list):
        raise ConfigError("alerts.sinks: expected a list of sinks")
    parsed_sinks = tuple(parse_sink(entry, f"alerts.sinks[{index}]") for index, entry in enumerate(sinks))
    if len({sink.name for sink in parsed_sinks}) != len(parsed_sinks):
        raise ConfigError("alerts.sinks: two sinks have the same name (give each a 'name')")
    outbox_limit = _whole(section.get("outbox_limit", DEFAULT_OUTBOX_LIMIT), "alerts.outbox_limit")
    max_backoff = _number(section.get("max_backoff", DEFAULT_MAX_BACKOFF), "alerts.max_backoff")
    if max_backoff <= 0:
        raise ConfigError("alerts.max_backoff: expected seconds above 0")
    return AlertConfig(
        monitoring,
        default_rules() if defaults_used else tuple(rules),
        parsed_sinks,
        outbox_limit,
        max_backoff,
        defaults_used,
    )


def load_alert_config(path: Optional[str]) -> AlertConfig:
    """The alert config in the monitoring config file at ``path`` (the defaults when None)."""
    return alert_config(MonitoringConfig() if path is None else load_config(path))


def parse_alert_config(text: str) -> AlertConfig:
    return alert_config(parse_config(text))
