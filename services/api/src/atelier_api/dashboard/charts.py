"""Server-rendered SVG charts (no script, no external library): a bar chart over hourly buckets."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 200
PAD_L, PAD_R, PAD_T, PAD_B = 44, 8, 12, 26


def nice_max(value: float) -> float:
    """The smallest 1/2/2.5/5 × 10^k at or above ``value`` (1 for an empty chart)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= value - 1e-12:
            return float(m * exp)
    return float(10 * exp)


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or float(v).is_integer() else f"{v:.1f}"


def bar_chart(values: Sequence[float], labels: Sequence[str], *, title: str, unit: str,
              label_every: int = 3) -> Markup:
    """An accessible SVG bar chart: ``<title>`` per bar, three gridlines, every ``label_every``-th x label."""
    n = max(1, len(values))
    top = nice_max(max(values, default=0.0))
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    slot = plot_w / n
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
             f'preserveAspectRatio="xMidYMid meet">', f"<title>{escape(title)}</title>"]
    for frac in (0.0, 0.5, 1.0):
        y = PAD_T + plot_h * (1 - frac)
        parts.append(f'<line class="grid" x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_num(top * frac)}</text>')
    for i, v in enumerate(values):
        h = plot_h * (v / top) if top else 0.0
        x = PAD_L + i * slot + slot * 0.15
        y = PAD_T + plot_h - h
        label = labels[i] if i < len(labels) else ""
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{max(h, 0):.1f}">'
                     f"<title>{escape(label)}: {escape(_num(v))} {escape(unit)}</title></rect>")
        if i % label_every == 0:
            parts.append(f'<text class="axis" x="{x + slot * 0.35:.1f}" y="{HEIGHT - 8}" '
                         f'text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<text class="unit" x="{PAD_L}" y="{PAD_T - 2}">{escape(unit)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
