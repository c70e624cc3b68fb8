"""Tiny dependency-free SVG charts for the HTML report: horizontal bars, stacked bars and histograms.

Each function returns an inline `<svg>` string sized in CSS pixels with a `viewBox`, so it scales with its
container. Every text is escaped; colours come from a small palette shared with the report's CSS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

KEPT = "#2f7d5b"
REJECTED = "#c4553a"
ACCENT = "#3566a8"
THRESHOLD = "#d1302f"
GRID = "#e4e7ec"
INK = "#2b2f36"
MUTED = "#6b7280"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


def fmt_num(v: float) -> str:
    """Compact number: 1234 -> 1,234; 1.5e6 -> 1.5M; 0.12345 -> 0.123."""
    if isinstance(v, int | np.integer) or float(v).is_integer():
        v = int(v)
        if abs(v) >= 10_000_000:
            return f"{v / 1e6:.0f}M"
        if abs(v) >= 1_000_000:
            return f"{v / 1e6:.1f}M"
        return f"{v:,}"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _nice_ticks(vmax: float, n: int = 4) -> list[float]:
    """Round tick values from 0 to at least vmax."""
    if vmax <= 0:
        return [0.0, 1.0]
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(vmax / step)) + 1)]


def _axis_ticks(lo: float, hi: float, most: int = 7, integer: bool = False) -> list[float]:
    """At most `most` round tick values inside [lo, hi] (whole numbers only when `integer`)."""
    span = hi - lo
    if span <= 0:
        return [lo]
    mag = 10 ** math.floor(math.log10(span / most))
    steps = [m * mag * k for k in (1, 10) for m in (1, 2, 2.5, 5)]
    step = next(s for s in steps if span / s <= most - 1 + 1e-9 and (not integer or float(s).is_integer()))
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" style="{FONT}">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def _text(
    x: float, y: float, s: str, anchor: str = "start", size: int = 11, fill: str = INK, extra: str = ""
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{fill}" text-anchor="{anchor}" {extra}>'
        f"{escape(s)}</text>"
    )


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    label: str,
    color: str = ACCENT,
    width: int = 460,
    label_width: int | None = None,
    x_max: float | None = None,
    annotations: Sequence[str] | None = None,
) -> str:
    """Horizontal bars, one row per label, the value printed at the end of each bar."""
    return stacked_bars(
        labels, [(label, values, color)], label=label, width=width, label_width=label_width, x_max=x_max,
        annotations=annotations, legend=False,
    )


def stacked_bars(
    labels: Sequence[str],
    segments: Sequence[tuple[str, Sequence[float], str]],
    *,
    label: str,
    width: int = 460,
    label_width: int | None = None,
    x_max: float | None = None,
    annotations: Sequence[str] | None = None,
    legend: bool = True,
) -> str:
    """Horizontal stacked bars: `segments` are (name, values per label, colour), drawn left to right.

    Labels longer than 32 characters are cut (the full text is in a tooltip); the label and value
    columns are as wide as their longest text, the bars take the rest of `width`.
    """
    row_h, top = 22, 24 if legend else 6
    totals = [sum(float(s[1][i]) for s in segments) for i in range(len(labels))]
    notes = list(annotations) if annotations else [fmt_num(t) for t in totals]
    if label_width is None:
        label_width = min(int(6.6 * max((len(x) for x in labels), default=4)) + 14, 230)
    value_w = int(6.2 * max((len(n) for n in notes), default=4)) + 14
    width = max(width, label_width + value_w + 150)
    plot_w = width - label_width - value_w
    height = top + row_h * max(len(labels), 1) + 6
    vmax = x_max if x_max is not None else max(totals, default=0.0)
    vmax = vmax or 1.0
    body = []
    if legend:
        x = label_width
        for name, _, color in segments:
            body.append(f'<rect x="{x}" y="6" width="10" height="10" rx="2" fill="{color}"/>')
            body.append(_text(x + 14, 15, name, size=11, fill=MUTED))
            x += 24 + 7 * len(name)
    for i, lab in enumerate(labels):
        y = top + i * row_h
        short = lab if len(lab) <= 32 else lab[:31] + "…"
        body.append(f"<g><title>{escape(lab)}</title>{_text(label_width - 8, y + 15, short, 'end')}</g>")
        x = float(label_width)
        for _, values, color in segments:
            w = plot_w * float(values[i]) / vmax
            if w > 0:
                body.append(
                    f'<rect x="{x:.1f}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row_h - 6}" '
                    f'fill="{color}"/>'
                )
            x += w
        body.append(_text(x + 6, y + 15, notes[i], fill=MUTED))
    return _svg(width, height, body, label)


def histogram(
    counts: Sequence[float],
    edges: Sequence[float],
    *,
    label: str,
    x_label: str = "",
    thresholds: Sequence[tuple[float, str]] = (),
    color: str = ACCENT,
    y_max: float | None = None,
    width: int = 460,
    height: int = 210,
    overflow: bool = False,
    x_range: tuple[float, float] | None = None,
    integer: bool = False,
) -> str:
    """Vertical bars over `edges` (len(counts) + 1), with dashed lines at `thresholds` (value, label).

    The x range (`x_range`, or the edges') grows to take in each threshold (`on_chart` leaves far-off ones
    out)
    `overflow` marks the last bin as holding everything above its left edge (labelled "≥").
    """
    left, right, top, bottom = 52, 14, 18, 40
    pw, ph = width - left - right, height - top - bottom
    lo, hi = x_range if x_range is not None else (float(edges[0]), float(edges[-1]))
    for t, _ in thresholds:
        lo, hi = min(lo, t), max(hi, t)
    span = (hi - lo) or 1.0

    def sx(v: float) -> float:
        return left + pw * (v - lo) / span

    ticks = _nice_ticks(y_max if y_max is not None else max(counts, default=0))
    ymax = ticks[-1] or 1.0

    def sy(v: float) -> float:
        return top + ph - ph * v / ymax

    body = []
    for t in ticks:
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="{GRID}"/>')
        body.append(_text(left - 6, sy(t) + 4, fmt_num(t), "end", 10, MUTED))
    for i, c in enumerate(counts):
        x0, x1 = sx(float(edges[i])), sx(float(edges[i + 1]))
        if c > 0:
            h = max(ph * float(c) / ymax, 1.0)
            body.append(
                f'<rect x="{x0 + 0.5:.1f}" y="{top + ph - h:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{color}"><title>[{fmt_num(float(edges[i]))}, '
                f"{fmt_num(float(edges[i + 1]))}): {fmt_num(float(c))}</title></rect>"
            )
    body.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="{MUTED}"/>'
    )
    for v in _axis_ticks(lo, hi, integer=integer):
        x = sx(v)
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="{MUTED}"/>')
        body.append(_text(x, top + ph + 15, fmt_num(v), "middle", 10, MUTED))
    if overflow:
        body.append(_text(left + pw, top - 6, f"last bar: ≥ {fmt_num(float(edges[-2]))}", "end", 10, MUTED))
    if x_label:
        body.append(_text(left + pw / 2, height - 6, x_label, "middle", 11, MUTED))
    for k, (t, name) in enumerate(thresholds):
        x = sx(t)
        body.append(
            f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{top + ph}" '
            f'stroke="{THRESHOLD}" stroke-width="2" stroke-dasharray="5 3"/>'
        )
        anchor = "end" if x > left + pw * 0.6 else "start"
        dx = -5 if anchor == "end" else 5
        body.append(
            _text(x + dx, top + 8 + 13 * k, f"{name} {fmt_num(t)}", anchor, 11, THRESHOLD,
                  'font-weight="600"')
        )
    return _svg(width, height, body, label)


def on_chart(threshold: float, edges: Sequence[float], slack: float = 1.0) -> bool:
    """Whether a threshold lies near enough to the data (within `slack` of its span) to be drawn."""
    lo, hi = float(edges[0]), float(edges[-1])
    span = hi - lo
    return lo - slack * span <= threshold <= hi + slack * span


def bin_edges(
    arrays: Sequence[np.ndarray],
    bins: int = 30,
    integer: bool = False,
    clip_quantile: float = 0.995,
    domain: tuple[float, float] | None = None,
) -> tuple[np.ndarray, bool]:
    """Shared bin edges over several runs' values; returns (edges, overflow).

    The range ends at `clip_quantile` of the pooled values, so one extreme row does not squash the plot;
    `overflow` says the last bin also counts everything above it. Integer data gets integer-wide bins.
    A `domain` (e.g. (0, 1) for probabilities) fixes the range instead, widened only by values outside it.
    """
    pooled = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.array([])
    if domain is not None:
        lo = min(domain[0], float(pooled.min())) if pooled.size else domain[0]
        hi = max(domain[1], float(pooled.max())) if pooled.size else domain[1]
        return np.linspace(lo, hi, bins + 1), False
    if pooled.size == 0:
        return np.array([0.0, 1.0]), False
    lo, top = float(pooled.min()), float(pooled.max())
    hi = float(np.quantile(pooled, clip_quantile)) if clip_quantile < 1 else top
    overflow = top > hi
    if integer:
        lo, hi = math.floor(lo), math.floor(hi) + 1
        step = max(1, math.ceil((hi - lo) / bins))
        edges = np.arange(lo, hi + step, step, dtype=float)
        return edges, overflow
    if hi <= lo:
        hi = lo + 1e-6 if lo == 0 else lo + abs(lo) * 1e-3
    return np.linspace(lo, hi, bins + 1), overflow


def counts_in(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram counts over `edges`; values beyond the last edge land in the last bin."""
    v = values[np.isfinite(values)]
    v = np.clip(v, edges[0], edges[-1])
    return np.histogram(v, bins=edges)[0]
