"""Small inline SVG charts for the HTML report: grouped bars and line series, no script, no network."""

from __future__ import annotations

from html import escape
from typing import List, Optional, Sequence, Tuple

WINDOW_COLOUR = "#d9480f"
BASELINE_COLOUR = "#1c7ed6"
#: Colours of the series of one chart, in turn (a chart of many segments repeats them).
PALETTE = ("#d9480f", "#1c7ed6", "#2b8a3e", "#ae3ec9", "#f08c00", "#0c8599", "#e64980", "#5c940d")
_WIDTH, _HEIGHT, _PAD = 420, 160, 28


def _frame(body: str, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" role="img">'
        f"<title>{escape(title)}</title>"
        f'<line x1="{_PAD}" y1="{_HEIGHT - _PAD}" x2="{_WIDTH - 4}" y2="{_HEIGHT - _PAD}" stroke="#888"/>'
        f"{body}</svg>"
    )


def bars(labels: Sequence[str], window: Sequence[float], baseline: Sequence[float], title: str) -> str:
    """Pairs of bars (baseline, window) per bin, heights as shares."""
    top = max([*window, *baseline, 1e-12])
    slot = (_WIDTH - _PAD - 8) / max(1, len(labels))
    bar = slot * 0.4
    plot = _HEIGHT - 2 * _PAD
    parts: List[str] = []
    for index, (label, now, then) in enumerate(zip(labels, window, baseline)):
        x = _PAD + index * slot + slot * 0.1
        for offset, share, colour in ((0.0, then, BASELINE_COLOUR), (bar, now, WINDOW_COLOUR)):
            height = plot * share / top
            parts.append(
                f'<rect x="{x + offset:.1f}" y="{_HEIGHT - _PAD - height:.1f}" width="{bar:.1f}" '
                f'height="{height:.1f}" fill="{colour}"><title>{escape(label)}: {share:.1%}</title></rect>'
            )
        parts.append(
            f'<text x="{x + bar:.1f}" y="{_HEIGHT - _PAD + 12}" font-size="8" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    return _frame("".join(parts), title)


def lines(series: Sequence[Tuple[str, str, Sequence[Optional[float]]]], title: str) -> str:
    """One polyline per (name, colour, points); None points leave a gap."""
    values = [value for _, _, points in series for value in points if value is not None]
    if not values:
        return _frame(f'<text x="{_PAD}" y="{_HEIGHT / 2}" font-size="11">no values in the window</text>', title)
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    count = max(len(points) for _, _, points in series)
    step = (_WIDTH - _PAD - 8) / max(1, count - 1)
    plot = _HEIGHT - 2 * _PAD
    parts = [
        f'<text x="2" y="{_PAD}" font-size="9">{high:.4g}</text>',
        f'<text x="2" y="{_HEIGHT - _PAD}" font-size="9">{low:.4g}</text>',
    ]
    for row, (name, colour, points) in enumerate(series):
        runs: List[List[str]] = [[]]
        for index, value in enumerate(points):
            if value is None:
                runs.append([])
                continue
            y = _HEIGHT - _PAD - plot * (value - low) / span
            runs[-1].append(f"{_PAD + index * step:.1f},{y:.1f}")
        for run in runs:
            if len(run) == 1:
                centre_x, centre_y = run[0].split(",")
                parts.append(f'<circle cx="{centre_x}" cy="{centre_y}" r="2" fill="{colour}"/>')
            elif run:
                parts.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        parts.append(
            f'<text x="{_WIDTH - 90}" y="{12 + 12 * row}" font-size="10" fill="{colour}">{escape(name)}</text>'
        )
    return _frame("".join(parts), title)
