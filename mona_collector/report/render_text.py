"""The report for a terminal: aligned tables, statuses, and a sparkline of ARCs per hour.

Text from the database (field names, dimension values) is printed with control characters escaped,
so a stored string cannot drive the terminal.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence

from ..timeparse import format_time
from .render_json import clean

SPARK = "▁▂▃▄▅▆▇█"
#: Segment rows shown in the terminal (``--json`` and ``--html`` have them all).
SHOWN_SEGMENTS = 15
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: Any) -> str:
    text = clean(value) if isinstance(value, str) else str(value)
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def sparkline(counts: Sequence[int]) -> str:
    """One block character per count, scaled to the largest (a space for none)."""
    top = max(counts, default=0)
    if top <= 0:
        return " " * len(counts)
    return "".join(
        " " if count == 0 else SPARK[min(len(SPARK) - 1, count * len(SPARK) // (top + 1))] for count in counts
    )


def number(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1%}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> List[str]:
    """Rows aligned in columns: text left, the rest right (every cell is text already)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def _measure(name: str, measure: Dict[str, Any]) -> str:
    limits = f"warn {number(measure['warn'])}, alert {number(measure['alert'])}"
    return f"{name} {number(measure['value'])} [{measure['status']}; {limits}]"


def _header(report: Dict[str, Any]) -> List[str]:
    window, baseline, overview = report["window"], report["baseline"], report["overview"]
    hours = overview["bucket_seconds"] / 3600
    unit = "hour" if hours == 1 else f"{hours:g} hours"
    counts = overview["arcs_per_bucket"]
    return [
        f"ARC class {printable(report['arc_class'])}: {report['status'].upper()}",
        f"  window   {format_time(window['start'])} .. {format_time(window['end'])}  {window['arcs']:,} ARCs",
        f"  baseline {format_time(baseline['start'])} .. {format_time(baseline['end'])}  {baseline['arcs']:,} ARCs",
        f"  ARCs per {unit}: {sparkline(counts)}  (max {max(counts, default=0):,})",
    ]


def _fields(report: Dict[str, Any]) -> List[str]:
    rows = []
    for field in report["overview"]["fields"]:
        mismatch = field["type_mismatch"]
        mismatches = mismatch["window"] + mismatch["baseline"]
        rows.append(
            [
                printable(field["name"]),
                field["kind"] + (" (config)" if field["declared"] else ""),
                percent(field["share_window"]),
                percent(field["share_baseline"]),
                f"{mismatches:,}" if mismatches else "",
            ]
        )
    return [
        "",
        "Fields (share of ARCs carrying each)",
        *table(["field", "kind", "window", "baseline", "type mismatch"], rows),
    ]


def _kapis(report: Dict[str, Any]) -> List[str]:
    if not report["kapis"]:
        return []
    keys = ["n", "missing", "mean", "std", "min", "p50", "p90", "p99", "max"]
    lines = ["", "KAPIs"]
    for kapi in report["kapis"]:
        rows = [
            [period, *(percent(stats[key]) if key == "missing" else number(stats[key]) for key in keys)]
            for period, stats in (("window", kapi["window"]), ("baseline", kapi["baseline"]))
        ]
        lines.append(f"  {printable(kapi['name'])}: {kapi['status'].upper()}")
        lines += table(["", *keys], rows, indent="    ")
        drift = kapi["drift"]
        lines.append("    " + "  ".join(_measure(name, drift[key]) for key, name in _DRIFT_NAMES))
    return lines


_DRIFT_NAMES = (("psi", "PSI"), ("js", "JS"), ("ks", "KS"), ("mean_shift", "mean shift"))


def _dimensions(report: Dict[str, Any]) -> List[str]:
    if not report["dimensions"]:
        return []
    lines = ["", "Dimensions (share of ARCs per value)"]
    for dimension in report["dimensions"]:
        drift = dimension["drift"]
        lines.append(
            f"  {printable(dimension['name'])}: {dimension['status'].upper()}  "
            f"{_measure('PSI', drift['psi'])}  {_measure('JS', drift['js'])}"
        )
        rows = [
            [printable(value["value"]), percent(value["share_window"]), percent(value["share_baseline"])]
            for value in dimension["values"][:8]
        ]
        lines += table(["value", "window", "baseline"], rows, indent="    ")
        if len(dimension["values"]) > 8:
            lines.append(f"    ... {len(dimension['values']) - 8} more (see --json)")
        if dimension["new_values_total"]:
            shown = ", ".join(printable(value["value"]) for value in dimension["new_values"][:5])
            lines.append(
                f"    new values: {dimension['new_values_total']} ({dimension['new_values_arcs']:,} ARCs): {shown}"
            )
    return lines


def segment_label(segment: Dict[str, Any]) -> str:
    return ", ".join(f"{printable(name)}={printable(value)}" for name, value in segment.items())


def _segments(report: Dict[str, Any]) -> List[str]:
    segments = report["segments"]
    if not segments:
        return ["", "Segment insights: none flagged"]
    rows = [
        [
            row["status"],
            row["kind"],
            segment_label(row["segment"]),
            printable(row["kapi"] or "(share)"),
            percent(row["value"]) if row["kind"] == "size" else number(row["value"]),
            percent(row["baseline"]) if row["kind"] == "size" else number(row["baseline"]),
            f"{row['n']:,}",
            number(row["score"]),
            row["reason"],
        ]
        for row in segments[:SHOWN_SEGMENTS]
    ]
    title = f"Segment insights ({len(segments)} flagged, most severe first"
    title += f"; top {SHOWN_SEGMENTS} shown)" if len(segments) > SHOWN_SEGMENTS else ")"
    return ["", title, *table(["status", "kind", "segment", "KAPI", "now", "baseline", "n", "score", "why"], rows)]


_CLASSIFICATION_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted")
_REGRESSION_KEYS = ("mae", "rmse", "mean_error")


def _metric_keys(metrics: Dict[str, Any]) -> Sequence[str]:
    return _CLASSIFICATION_KEYS if metrics["kind"] == "classification" else _REGRESSION_KEYS


def _metrics_counts(name: str, block: Dict[str, Any]) -> str:
    text = (
        f"  {name}: {block['predicted']:,} predictions, {block['pairs']:,} with a label "
        f"({percent(block['label_share'])})"
    )
    mismatches = block["prediction_type_mismatch"] + block["label_type_mismatch"]
    if mismatches:
        text += f", {mismatches:,} values of the wrong type left out"
    if block["label_without_prediction"]:
        text += f", {block['label_without_prediction']:,} labels without a prediction"
    return text


def _metrics(report: Dict[str, Any]) -> List[str]:
    """The model's metrics: both periods, its classes, its series, and its segments."""
    metrics = report.get("metrics")
    if not metrics:
        return []
    keys = _metric_keys(metrics)
    label = printable(metrics["label"]) + ("" if metrics["label_found"] else " (no ARC has it yet)")
    lines = [
        "",
        f"Model metrics ({metrics['kind']}{' (config)' if metrics['kind_declared'] else ''}): "
        f"prediction {printable(metrics['prediction'])}, label {label}",
        _metrics_counts("window", metrics["window"]),
        _metrics_counts("baseline", metrics["baseline"]),
    ]
    rows = [[period, *(number(metrics[period][key]) for key in keys)] for period in ("window", "baseline")]
    lines += table(["", *keys], rows)
    if metrics["kind"] == "classification" and metrics["window"]["classes"]:
        classes = [
            [
                printable(row["class"]),
                number(row["precision"]),
                number(row["recall"]),
                number(row["f1"]),
                f"{row['support']:,}",
            ]
            for row in metrics["window"]["classes"]
        ]
        lines += [
            "  per class in the window",
            *table(["class", "precision", "recall", "F1", "support"], classes, "    "),
        ]
    if metrics["unseen_label_classes"]:
        shown = ", ".join(printable(name) for name in metrics["unseen_label_classes"][:10])
        lines.append(f"  label classes never predicted: {shown}")
    headline = metrics["headline"]
    points = metrics["series"]["points"]
    values = [point[headline] for point in points]
    lines.append(f"  {headline} per {metrics['series']['bucket']}: " + "  ".join(number(value) for value in values))
    if metrics["segments"]:
        segment_rows = [
            [
                f"{printable(row['dimension'])}={printable(row['value'])}",
                f"{row['window']['pairs']:,}",
                number(row["window"][headline]),
                number(row["baseline"][headline]),
            ]
            for row in metrics["segments"][:SHOWN_SEGMENTS]
        ]
        lines += [f"  {headline} per segment", *table(["segment", "n", "window", "baseline"], segment_rows, "    ")]
    return lines


def render_text(report: Dict[str, Any]) -> str:
    """The report of one class."""
    lines = _header(report) + _fields(report) + _kapis(report) + _dimensions(report) + _segments(report)
    lines += _metrics(report)
    return "\n".join(lines) + "\n"


def render_overview(rows: Sequence[Dict[str, Any]], window: Dict[str, Any]) -> str:
    """The every-class overview: one line per class."""
    header = ["class", "status", "window", "baseline", "ARCs per hour", "alerts", "warnings", "top insight"]
    cells = []
    for row in rows:
        top = row["top_insight"]
        insight = f"{top['kind']} {segment_label(top['segment'])} {printable(top['kapi'] or '')}".strip() if top else ""
        cells.append(
            [
                printable(row["arc_class"]),
                row["status"],
                f"{row['arcs_window']:,}",
                f"{row['arcs_baseline']:,}",
                sparkline(row["arcs_per_bucket"]),
                str(row["alerts"]),
                str(row["warnings"]),
                insight,
            ]
        )
    title = f"Every class, window {format_time(window['start'])} .. {format_time(window['end'])}"
    return "\n".join([title, *table(header, cells), "", "mona report --arc-class CLASS shows one in full."]) + "\n"
