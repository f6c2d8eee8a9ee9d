"""What ``mona report`` does with its options: read, compute, render (the argument parsing is in cli.py).

Failures are :class:`ReportError` with a one-line message and an exit status: 2 for a usage error
(an unknown class, a period or baseline with nothing in it, a malformed config), 1 for the rest.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, TextIO

from ..readers import Reader
from ..timeparse import format_time
from .engine import REPORT_VERSION, build_report, overview_row
from .monitoring_config import ConfigError, MonitoringConfig, load_config
from .periods import Periods, parse_periods
from .render_html import render_html
from .render_json import render_json
from .render_text import printable, render_overview, render_text
from .source import class_counts, class_span, read_table


class ReportError(Exception):
    """A failure to report in one line, with the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ReportOptions:
    arc_class: Optional[str] = None
    since: Optional[str] = None
    baseline: Optional[str] = None
    until: Optional[str] = None
    by: Sequence[str] = ()
    json: bool = False
    html: Optional[str] = None
    config: Optional[str] = None


def _config(path: Optional[str]) -> MonitoringConfig:
    if path is None:
        return MonitoringConfig()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise ReportError(f"--config {printable(path)}: {exc}", 2) from None


def _periods(options: ReportOptions) -> Periods:
    try:
        return parse_periods(options.since, options.baseline, options.until)
    except ValueError as exc:
        raise ReportError(str(exc), 2) from None


def _ranges(periods: Periods) -> List[tuple[float, float]]:
    return [(periods.window_start, periods.window_end), (periods.baseline_start, periods.baseline_end)]


def class_report(
    reader: Reader, arc_class: str, periods: Periods, config: MonitoringConfig, by: Sequence[str] = ()
) -> Dict[str, Any]:
    """The full report of one class."""
    settings = config.for_class(arc_class)
    table = read_table(reader, arc_class, _ranges(periods), settings)
    try:
        return build_report(table, periods, settings, arc_class, by)
    except ValueError as exc:
        raise ReportError(str(exc), 2) from None


def _write_file(path: str, text: str) -> None:
    """Write ``text`` to ``path``, replacing it only once complete."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".mona-report-", suffix=".html")
    except OSError as exc:
        raise ReportError(f"--html {printable(path)}: {exc.strerror}", 2) from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        os.unlink(temporary)
        raise ReportError(f"--html {printable(path)}: {exc.strerror}", 1) from None


def run_report(reader: Reader, options: ReportOptions, out: TextIO) -> int:
    """Print (or write) the report the options ask for; raises :class:`ReportError`."""
    config = _config(options.config)
    periods = _periods(options)
    counts = class_counts(reader)
    if not counts:
        raise ReportError(f"the database {printable(reader.name)} holds no ARC with a class yet")
    if options.arc_class is None:
        if options.html or options.by:
            raise ReportError(f"{'--html' if options.html else '--by'} needs --arc-class", 2)
        return _overview(reader, sorted(counts), periods, config, options, out)
    if options.arc_class not in counts:
        known = ", ".join(printable(name) for name in sorted(counts)[:20])
        raise ReportError(f"no ARC of class {printable(options.arc_class)!r} (classes: {known})", 2)
    report = class_report(reader, options.arc_class, periods, config, options.by)
    if report["baseline"]["arcs"] == 0:
        first, last = class_span(reader, options.arc_class)
        raise ReportError(
            f"--baseline: no ARC of class {printable(options.arc_class)!r} was first exported in the baseline "
            f"{format_time(periods.baseline_start)} .. {format_time(periods.baseline_end)} "
            f"(its ARCs span {format_time(first)} .. {format_time(last)})",
            2,
        )
    if options.html:
        _write_file(options.html, render_html(report))
    if options.json:
        out.write(render_json(report) + "\n")
    elif options.html:
        out.write(f"wrote {printable(options.html)} (status: {report['status']})\n")
    else:
        out.write(render_text(report))
    return 0


def _overview(
    reader: Reader,
    classes: Sequence[str],
    periods: Periods,
    config: MonitoringConfig,
    options: ReportOptions,
    out: TextIO,
) -> int:
    rows = [overview_row(class_report(reader, arc_class, periods, config)) for arc_class in classes]
    window = {"start": periods.window_start, "end": periods.window_end}
    baseline = {"start": periods.baseline_start, "end": periods.baseline_end}
    if options.json:
        document = {"report_version": REPORT_VERSION, "window": window, "baseline": baseline, "classes": rows}
        out.write(render_json(document) + "\n")
    else:
        out.write(render_overview(rows, window))
    return 0
