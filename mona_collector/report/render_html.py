"""The report as one self-contained HTML file: tables and inline SVG charts, no script, no network.

Per KAPI: a histogram of the window against the baseline over the drift bins (the baseline's
deciles) and the window's mean and p90 per hour; then the dimensions and the segment table.
"""

from __future__ import annotations

from html import escape
from typing import Any, Dict, List, Optional, Sequence

from ..timeparse import format_time
from .render_json import clean
from .render_text import number, percent, segment_label
from .svg import BASELINE_COLOUR, PALETTE, WINDOW_COLOUR, bars, lines

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.ok{color:#2b8a3e}.warn{color:#e67700}.alert{color:#c92a2a;font-weight:bold}
.kapi{display:inline-block;vertical-align:top;margin:0 16px 16px 0}
"""


def _text(value: Any) -> str:
    return escape(str(clean(value)) if isinstance(value, str) else str(value))


def _status(value: str) -> str:
    return f'<span class="{escape(value.split()[0])}">{escape(value)}</span>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _shares(counts: Sequence[int]) -> List[float]:
    total = sum(counts)
    return [count / total if total else 0.0 for count in counts]


def _bin_labels(edges: Sequence[float]) -> List[str]:
    return [f"≤{edge:.3g}" for edge in edges] + [f">{edges[-1]:.3g}"] if edges else []


def _kapi(kapi: Dict[str, Any]) -> str:
    name = kapi["name"]
    stats = ["n", "missing", "mean", "std", "min", "p50", "p90", "p99", "max"]
    rows = [
        [period, *(percent(kapi[period][key]) if key == "missing" else number(kapi[period][key]) for key in stats)]
        for period in ("window", "baseline")
    ]
    drift = [
        [key, number(measure["value"]), number(measure["warn"]), number(measure["alert"]), _status(measure["status"])]
        for key, measure in kapi["drift"].items()
    ]
    bins = kapi["bins"]
    histogram = bars(
        _bin_labels(bins["edges"]), _shares(bins["window"]), _shares(bins["baseline"]), f"{name}: window vs baseline"
    )
    series: Dict[str, List[Optional[float]]] = kapi["series"]
    hourly = lines(
        [("mean", WINDOW_COLOUR, series["mean"]), ("p90", BASELINE_COLOUR, series["p90"])], f"{name} per hour"
    )
    return (
        f'<div class="kapi"><h3>{_text(name)} {_status(kapi["status"])}</h3>'
        f"{_table(['', *stats], rows)}{_table(['drift', 'value', 'warn', 'alert', 'status'], drift)}"
        f"<div>Histogram over the drift bins (baseline deciles): "
        f'<span style="color:{BASELINE_COLOUR}">baseline</span>, <span style="color:{WINDOW_COLOUR}">window</span>'
        f"</div>{histogram}<div>Per hour in the window</div>{hourly}</div>"
    )


def _dimension(dimension: Dict[str, Any]) -> str:
    rows = [
        [_text(value["value"]), percent(value["share_window"]), percent(value["share_baseline"])]
        for value in dimension["values"]
    ]
    drift = " · ".join(
        f"{key.upper()} {number(measure['value'])} {_status(measure['status'])}"
        for key, measure in dimension["drift"].items()
    )
    new = ""
    if dimension["new_values_total"]:
        shown = ", ".join(_text(value["value"]) for value in dimension["new_values"])
        new = f"<p>New values ({dimension['new_values_total']}): {shown}</p>"
    return f"<h3>{_text(dimension['name'])} {_status(dimension['status'])}</h3><p>{drift}</p>{new}" + _table(
        ["value", "window", "baseline"], rows
    )


def _segments(segments: Sequence[Dict[str, Any]]) -> str:
    if not segments:
        return "<p>No segment flagged.</p>"
    rows = [
        [
            _status(row["status"]),
            escape(row["kind"]),
            _text(segment_label(row["segment"])),
            _text(row["kapi"] or "(share)"),
            percent(row["value"]) if row["kind"] == "size" else number(row["value"]),
            percent(row["baseline"]) if row["kind"] == "size" else number(row["baseline"]),
            f"{row['n']:,}",
            number(row["score"]),
            _text(row["reason"]),
        ]
        for row in segments
    ]
    return _table(["status", "kind", "segment", "KAPI", "now", "baseline", "n", "score", "why"], rows)


def _metrics(metrics: Optional[Dict[str, Any]]) -> str:
    """The model's metrics: a table of both periods, then per dimension a chart of the headline metric
    per bucket, one line per segment."""
    if not metrics:
        return ""
    keys = (
        ["accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted"]
        if metrics["kind"] == "classification"
        else ["mae", "rmse", "mean_error"]
    )
    rows = [
        [period, f"{metrics[period]['pairs']:,}", percent(metrics[period]["label_share"])]
        + [number(metrics[period][key]) for key in keys]
        for period in ("window", "baseline")
    ]
    headline = metrics["headline"]
    bucket = metrics["series"]["bucket"]
    charts = [
        lines(
            [("all", PALETTE[0], [point[headline] for point in metrics["series"]["points"]])],
            f"{headline} per {bucket}",
        )
    ]
    by_dimension: Dict[str, List[Dict[str, Any]]] = {}
    for row in metrics["segments"]:
        by_dimension.setdefault(row["dimension"], []).append(row)
    for dimension, segments in by_dimension.items():
        series = [
            (f"{dimension}={row['value']}", PALETTE[index % len(PALETTE)], [p[headline] for p in row["series"]])
            for index, row in enumerate(segments[: len(PALETTE)])
        ]
        charts.append(f"<div>{_text(dimension)}</div>" + lines(series, f"{headline} per {bucket} by {dimension}"))
    return (
        f"<h2>Model metrics</h2><p>{escape(metrics['kind'])}: prediction {_text(metrics['prediction'])}, "
        f"label {_text(metrics['label'])}</p>"
        f"{_table(['', 'with a label', 'label share', *keys], rows)}"
        f"<div>{escape(headline)} per {escape(bucket)}, per segment</div>"
        + "".join(f'<div class="kapi">{chart}</div>' for chart in charts)
    )


def render_html(report: Dict[str, Any]) -> str:
    """The whole report of one class as an HTML document."""
    window, baseline, overview = report["window"], report["baseline"], report["overview"]
    title = f"mona report: {report['arc_class']}"
    counts = overview["arcs_per_bucket"]
    arcs_chart = lines([("ARCs", WINDOW_COLOUR, [float(count) for count in counts])], "ARCs per hour")
    fields = [
        [_text(field["name"]), escape(field["kind"]), percent(field["share_window"]), percent(field["share_baseline"])]
        for field in overview["fields"]
    ]
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_text(title)}</title><style>{_STYLE}</style>"
        f"</head><body><h1>{_text(title)} {_status(report['status'])}</h1>"
        f"<p>Window {format_time(window['start'])} .. {format_time(window['end'])}: {window['arcs']:,} ARCs. "
        f"Baseline {format_time(baseline['start'])} .. {format_time(baseline['end'])}: {baseline['arcs']:,} ARCs.</p>"
        f"{arcs_chart}<h2>Segment insights</h2>{_segments(report['segments'])}"
        f"<h2>KAPIs</h2>{''.join(_kapi(kapi) for kapi in report['kapis'])}"
        f"<h2>Dimensions</h2>{''.join(_dimension(dimension) for dimension in report['dimensions'])}"
        f"{_metrics(report.get('metrics'))}"
        f"<h2>Fields</h2>{_table(['field', 'kind', 'window', 'baseline'], fields)}"
        "</body></html>\n"
    )
