"""Alerts: rules over the report engine's results, their state in the collector's database, and sinks.

:mod:`.rules` parses the rules and sinks of the monitoring config, :mod:`.evaluate` judges them
against the database, :mod:`.state` keeps each alert's state with hysteresis and queues its
notifications, :mod:`.sinks` delivers them (a log line, a webhook, a command), and :mod:`.runner`
runs it all once or every few minutes inside the collector. See docs/alerts.md.

Nothing is imported here: the modules load numpy (through the report engine), which only a collector
that evaluates alerts and the ``mona alerts`` commands need.
"""
