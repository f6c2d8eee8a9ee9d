"""``mona report``: statistics, drift and segment insights over the ARCs the collector stores.

The pipeline, one module per step: :mod:`.source` reads the ARCs of a class and period from the
database, :mod:`.fields` flattens each into named values, :mod:`.table` types every field on its own and
builds numpy columns, :mod:`.engine` computes the report (with :mod:`.stats`, :mod:`.drift` and
:mod:`.segments`) as one JSON-shaped dict, and :mod:`.render_text`, :mod:`.render_json` and
:mod:`.render_html` show it. The engine takes a :class:`~.table.ColumnTable`, so any faster source of
columns can feed it.
"""

from .engine import build_report, overview_row
from .monitoring_config import ClassSettings, ConfigError, MonitoringConfig, load_config, parse_config
from .periods import Periods, parse_periods
from .source import ReportSourceError, read_table
from .table import ColumnTable, TableBuilder

__all__ = [
    "ClassSettings",
    "ColumnTable",
    "ConfigError",
    "MonitoringConfig",
    "Periods",
    "ReportSourceError",
    "TableBuilder",
    "build_report",
    "load_config",
    "overview_row",
    "parse_config",
    "parse_periods",
    "read_table",
]
