"""Alerts: rules over the report engine's results, their state in the collector's database, and sinks.

:mod:`.rules` parses the rules and sinks of the monitoring config, :mod:`.evaluate` judges them
against the database, :mod:`.state` keeps each alert's state with hysteresis and queues its
notifications, :mod:`.sinks` delivers them (a log line, a webhook, a command), and :mod:`.runner`
runs it all once or every few minutes inside the collector. See docs/alerts.md.
"""

from .evaluate import Evaluation, Observation, evaluate
from .rules import AlertConfig, Rule, SinkConfig, load_alert_config, parse_alert_config, parse_duration
from .runner import AlertLoop, check
from .state import AlertRow, apply, connect, read_alerts

__all__ = [
    "AlertConfig",
    "AlertLoop",
    "AlertRow",
    "Evaluation",
    "Observation",
    "Rule",
    "SinkConfig",
    "apply",
    "check",
    "connect",
    "evaluate",
    "load_alert_config",
    "parse_alert_config",
    "parse_duration",
    "read_alerts",
]
