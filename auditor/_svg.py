"""Small inline-SVG charts for the HTML report: bars, lines, a grid and a timeline.

No script and no external resource: each chart is one `<svg data-chart=NAME>` whose marks
(class `mark`) carry their exact value in `data-value` (JSON) and, where it is a figure of
`fedseal-audit verify --json`, its path there in `data-fig` (dot-separated keys and list
indices), so a test can compare what is drawn with what the audit says. Text is escaped.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["PALETTE", "Lane", "Series", "Span", "bar_chart", "grid_chart", "line_chart", "timeline"]

PALETTE = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#b7791f", "#4a5568")
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float | None]  # one per category; None: nothing to draw there
    figs: Sequence[str | None] = ()  # the verify --json path of each value, where it is one
    color: str = PALETTE[0]

    def fig(self, i: int) -> str | None:
        return self.figs[i] if i < len(self.figs) else None


@dataclass(frozen=True)
class Span:
    start: dt.datetime
    end: dt.datetime | None  # None: a point event
    color: str
    title: str
    value: object = None
    fig: str | None = None


@dataclass(frozen=True)
class Lane:
    label: str
    spans: Sequence[Span]


def _mark(tag: str, attrs: str, value: object, fig: str | None, title: str) -> str:
    figattr = f' data-fig="{escape(fig)}"' if fig else ""
    data = escape(json.dumps(value, sort_keys=True))
    return f'<{tag} class="mark" {attrs} data-value="{data}"{figattr}><title>{escape(title)}</title></{tag}>'


def _nice_max(value: float, *, integer: bool = False) -> float:
    if integer:  # counts: four whole-number steps
        return float(4 * max(1, math.ceil(value / 4)))
    if value <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * exp:
            return step * exp
    return 10.0 * exp


def _open(name: str, width: int, height: int, label: str) -> str:
    return (
        f'<svg class="chart" data-chart="{escape(name)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" {_FONT}>'
    )


def _axes(left: int, top: int, w: int, h: int, y_max: float, fmt: Callable[[float], str]) -> list[str]:
    out = []
    for i in range(5):
        y = top + h - h * i / 4
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e2e8f0"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#4a5568">')
        out.append(f"{escape(fmt(y_max * i / 4))}</text>")
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + h}" stroke="#a0aec0"/>')
    return out


def _legend(series: Sequence[tuple[str, str]], x: int, y: int) -> list[str]:
    out = []
    for label, color in series:
        out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 14}" y="{y}" fill="#2d3748">{escape(label)}</text>')
        x += 24 + 7 * len(label)
    return out


def bar_chart(
    name: str,
    label: str,
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
    stacked: bool = True,
    integer: bool = False,
    width: int = 600,
    height: int = 240,
) -> str:
    """Bars per category, stacked (or side by side) across `series`; `integer`: counts."""
    left, top, right, bottom = 64, 26, 12, 34
    w, h = width - left - right, height - top - bottom
    totals = [
        (sum(s.values[i] or 0 for s in series) if stacked else max((s.values[i] or 0) for s in series))
        for i in range(len(categories))
    ]
    y_max = _nice_max(max(totals, default=0), integer=integer)
    out = [_open(name, width, height, label), *_axes(left, top, w, h, y_max, fmt)]
    slot = w / max(len(categories), 1)
    bar = min(48.0, slot * 0.7)
    for i, category in enumerate(categories):
        x0 = left + slot * i + (slot - bar) / 2
        base = 0.0
        for n, s in enumerate(series):
            value = s.values[i]
            if value is None:
                continue
            bh = h * value / y_max
            if stacked:
                x, bw, y = x0, bar, top + h - h * base / y_max - bh
                base += value
            else:
                bw = bar / len(series)
                x, y = x0 + n * bw, top + h - bh
            attrs = f'x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{max(bh, 0.5):.1f}" fill="{s.color}"'
            out.append(_mark("rect", attrs, value, s.fig(i), f"{category} - {s.label}: {fmt(value)}"))
        out.append(
            f'<text x="{left + slot * i + slot / 2:.1f}" y="{top + h + 16}" text-anchor="middle" '
            f'fill="#2d3748">{escape(category)}</text>'
        )
    out += _legend([(s.label, s.color) for s in series], left, 14)
    out.append("</svg>")
    return "".join(out)


def line_chart(
    name: str,
    label: str,
    xs: Sequence[str],
    series: Sequence[Series],
    *,
    reference: tuple[str, float] | None = None,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
    width: int = 600,
    height: int = 240,
) -> str:
    """One polyline with dots per series over the categories `xs`; `reference` a dashed level."""
    left, top, right, bottom = 64, 26, 12, 34
    w, h = width - left - right, height - top - bottom
    values = [v for s in series for v in s.values if v is not None]
    y_max = _nice_max(max([*values, reference[1] if reference else 0.0], default=0.0))
    out = [_open(name, width, height, label), *_axes(left, top, w, h, y_max, fmt)]
    step = w / max(len(xs), 1)

    def point(i: int, v: float) -> tuple[float, float]:
        return left + step * i + step / 2, top + h - h * v / y_max

    if reference is not None:
        y = point(0, reference[1])[1]
        out.append(
            f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c53030" '
            f'stroke-dasharray="6 4"/><text x="{left + w - 4}" y="{y - 5:.1f}" text-anchor="end" '
            f'fill="#c53030">{escape(reference[0])}: {escape(fmt(reference[1]))}</text>'
        )
    for s in series:
        points = [(i, v) for i, v in enumerate(s.values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, v) for i, v in points))
            out.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"/>')
        for i, v in points:
            x, y = point(i, v)
            out.append(
                _mark(
                    "circle",
                    f'cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{s.color}"',
                    v,
                    s.fig(i),
                    f"{xs[i]} - {s.label}: {fmt(v)}",
                )
            )
    for i, x_label in enumerate(xs):
        out.append(
            f'<text x="{left + step * i + step / 2:.1f}" y="{top + h + 16}" text-anchor="middle" '
            f'fill="#2d3748">{escape(x_label)}</text>'
        )
    out += _legend([(s.label, s.color) for s in series], left, 14)
    out.append("</svg>")
    return "".join(out)


def grid_chart(
    name: str,
    label: str,
    rows: Sequence[str],
    cols: Sequence[str],
    cells: Mapping[tuple[str, str], tuple[str, str, object]],
    colors: Mapping[str, str],
    *,
    width: int = 600,
) -> str:
    """A rows x cols grid; `cells[(row, col)] = (state, title, value)` colours a cell by state."""
    left, top, cell = 110, 30, min(56, (width - 120) // max(len(cols), 1))
    height = top + cell * len(rows) + 30
    out = [_open(name, width, height, label)]
    for j, col in enumerate(cols):
        out.append(
            f'<text x="{left + j * cell + cell / 2}" y="{top - 8}" text-anchor="middle" '
            f'fill="#2d3748">{escape(col)}</text>'
        )
    for i, row in enumerate(rows):
        out.append(
            f'<text x="{left - 8}" y="{top + i * cell + cell / 2 + 4}" text-anchor="end" '
            f'fill="#2d3748">{escape(row)}</text>'
        )
        for j, col in enumerate(cols):
            x, y = left + j * cell + 2, top + i * cell + 2
            found = cells.get((row, col))
            if found is None:
                out.append(
                    f'<rect x="{x}" y="{y}" width="{cell - 4}" height="{cell - 4}" fill="#f7fafc" '
                    'stroke="#e2e8f0"/>'
                )
                continue
            state, title, value = found
            attrs = f'x="{x}" y="{y}" width="{cell - 4}" height="{cell - 4}" fill="{colors[state]}"'
            out.append(_mark("rect", attrs, value, None, title))
    out += _legend(list(colors.items()), left, height - 8)
    out.append("</svg>")
    return "".join(out)


def timeline(
    name: str,
    label: str,
    start: dt.datetime,
    end: dt.datetime,
    lanes: Sequence[Lane],
    *,
    width: int = 900,
) -> str:
    """Lanes of spans and point events over [start, end] (UTC)."""
    left, top, lane_h = 150, 16, 30
    w = width - left - 16
    height = top + lane_h * len(lanes) + 30
    total = max((end - start).total_seconds(), 1e-3)

    def x_of(t: dt.datetime) -> float:
        return left + w * min(max((t - start).total_seconds() / total, 0.0), 1.0)

    out = [_open(name, width, height, label)]
    for i, lane in enumerate(lanes):
        y = top + i * lane_h
        out.append(
            f'<text x="{left - 8}" y="{y + 18}" text-anchor="end" fill="#2d3748">{escape(lane.label)}</text>'
        )
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y + 14}" y2="{y + 14}" stroke="#e2e8f0"/>')
        for span in lane.spans:
            x0 = x_of(span.start)
            if span.end is None:
                attrs = (
                    f'points="{x0:.1f},{y + 4} {x0 + 7:.1f},{y + 14} {x0:.1f},{y + 24} {x0 - 7:.1f},{y + 14}"'
                )
                out.append(
                    _mark("polygon", attrs + f' fill="{span.color}"', span.value, span.fig, span.title)
                )
            else:
                bw = max(x_of(span.end) - x0, 3.0)
                attrs = f'x="{x0:.1f}" y="{y + 6}" width="{bw:.1f}" height="16" rx="3" fill="{span.color}"'
                out.append(_mark("rect", attrs, span.value, span.fig, span.title))
    base = top + lane_h * len(lanes) + 14
    for frac in (0.0, 0.5, 1.0):
        t = start + (end - start) * frac
        anchor = "start" if frac == 0 else "end" if frac == 1 else "middle"
        out.append(
            f'<text x="{left + w * frac:.1f}" y="{base}" text-anchor="{anchor}" fill="#4a5568">'
            f"{escape(t.strftime('%Y-%m-%d %H:%M:%S'))} UTC</text>"
        )
    out.append("</svg>")
    return "".join(out)
