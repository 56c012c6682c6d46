"""Layout metrics stored with every plan, so layout quality is measurable (and comparable across backends).

For a layout (``LayoutPlan.boxes`` or raw ``(role, bbox, z)`` elements, normalised 0..1):

* ``overlap`` — mean IoU over pairs of foreground elements (not the background, and not pairs with an
  underlay, which exists to sit under text); 0 is best.
* ``alignment`` — mean over foreground elements of the smallest distance from any of its six alignment
  lines (left, centre, right, top, middle, bottom) to the same line of another element (the LayoutGAN++
  alignment measure, in canvas units); 0 is perfectly aligned.
* ``product_occlusion`` — fraction of the product box covered by elements drawn above it; None without a product.
* ``underlay_coverage`` — fraction of tagline area that lies on an underlay (PAID's underlay effectiveness;
  a CTA draws its own button); None without an underlay.
* ``out_of_bounds`` — fraction of element area outside the canvas (raw coordinates, before clamping).
* ``safe_zone_violation`` — fraction of graphic area (product, logo, text, CTA, underlay) outside the safe zone.
* ``text_product_overlap`` — fraction of text area on the product box.

For RPG (:func:`regional_metrics`): the cells of a split ratio, computed exactly with fractions, and
whether they cover the canvas exactly once (union = canvas, no two cells overlap).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations
from typing import Any

from atelier_contracts.plans import Box, LayoutPlan, RegionalPlan

from .layout import GRAPHIC_ROLES, TEXT_ROLES, BBox, SafeZone, area, intersection
from .rpg import split_ratio_cells

ROUND = 6


@dataclass(frozen=True)
class Element:
    role: str
    bbox: BBox
    z: int = 0


def elements(boxes: Iterable[Box | Element | tuple[str, Sequence[float], int]]) -> list[Element]:
    out = []
    for b in boxes:
        if isinstance(b, Element):
            out.append(b)
        elif isinstance(b, Box):
            out.append(Element(b.role, tuple(b.bbox), b.z))  # type: ignore[arg-type]
        else:
            role, bbox, z = b
            x1, y1, x2, y2 = (float(v) for v in bbox)
            out.append(Element(role, (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), int(z)))
    return out


def union_area(rects: Sequence[BBox]) -> float:
    """Exact area of a union of rectangles (coordinate compression; fine for a handful of boxes)."""
    rects = [r for r in rects if r[2] > r[0] and r[3] > r[1]]
    if not rects:
        return 0.0
    xs = sorted({v for r in rects for v in (r[0], r[2])})
    total = 0.0
    for xa, xb in zip(xs, xs[1:], strict=False):
        spans = sorted((r[1], r[3]) for r in rects if r[0] <= xa and r[2] >= xb)
        covered, cur_a, cur_b = 0.0, None, None
        for a, b in spans:
            if cur_b is None or a > cur_b:
                if cur_b is not None and cur_a is not None:
                    covered += cur_b - cur_a
                cur_a, cur_b = a, b
            else:
                cur_b = max(cur_b, b)
        if cur_b is not None and cur_a is not None:
            covered += cur_b - cur_a
        total += covered * (xb - xa)
    return total


def _covered(target: BBox, others: Sequence[BBox]) -> float:
    clipped = [c for c in (intersection(target, o) for o in others) if c is not None]
    return union_area(clipped)


def _iou(a: BBox, b: BBox) -> float:
    inter = intersection(a, b)
    if inter is None:
        return 0.0
    i = area(inter)
    return i / (area(a) + area(b) - i)


def _lines(b: BBox) -> tuple[float, ...]:
    return (b[0], (b[0] + b[2]) / 2, b[2], b[1], (b[1] + b[3]) / 2, b[3])


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, ROUND)


def layout_metrics(boxes: Iterable[Box | Element | tuple[str, Sequence[float], int]], *,
                   safe: SafeZone | None = None) -> dict[str, Any]:
    """The metrics above for one layout (see the module docstring)."""
    els = elements(boxes)
    fg = [e for e in els if e.role != "background"]
    pairs = [(a, b) for a, b in combinations(fg, 2) if "underlay" not in (a.role, b.role)]
    overlap = sum(_iou(a.bbox, b.bbox) for a, b in pairs) / len(pairs) if pairs else 0.0
    if len(fg) >= 2:
        align = 0.0
        for e in fg:
            mine = _lines(e.bbox)
            best = min(abs(mine[k] - _lines(o.bbox)[k]) for o in fg if o is not e for k in range(6))
            align += best
        alignment = align / len(fg)
    else:
        alignment = 0.0
    products = [e for e in els if e.role == "product"]
    occlusion = None
    if products:
        p = products[0]
        above = [e.bbox for e in fg if e is not p and e.z > p.z]
        occlusion = _covered(p.bbox, above) / area(p.bbox) if area(p.bbox) > 0 else 0.0
    texts = [e for e in els if e.role in TEXT_ROLES]
    text_area = sum(area(t.bbox) for t in texts)
    underlays = [e.bbox for e in els if e.role == "underlay"]
    lines = [e for e in els if e.role == "tagline"]  # a CTA draws its own button, so it needs no underlay
    line_area = sum(area(t.bbox) for t in lines)
    coverage = None
    if underlays and line_area > 0:
        coverage = sum(_covered(t.bbox, underlays) for t in lines) / line_area
    total = sum(area(e.bbox) for e in els)
    canvas = (0.0, 0.0, 1.0, 1.0)
    inside = sum(area(i) for i in (intersection(e.bbox, canvas) for e in els) if i is not None)
    oob = (total - inside) / total if total > 0 else 0.0
    violation = None
    if safe is not None:
        graphic = [e for e in els if e.role in GRAPHIC_ROLES]
        g_area = sum(area(e.bbox) for e in graphic)
        in_safe = sum(area(i) for i in (intersection(e.bbox, safe.rect) for e in graphic) if i is not None)
        violation = (g_area - in_safe) / g_area if g_area > 0 else 0.0
    text_on_product = 0.0
    if products and text_area > 0:
        text_on_product = sum(_covered(t.bbox, [products[0].bbox]) for t in texts) / text_area
    return {"boxes": len(els), "overlap": _r(overlap), "alignment": _r(alignment), "product_occlusion": _r(occlusion),
            "underlay_coverage": _r(coverage), "out_of_bounds": _r(oob), "safe_zone_violation": _r(violation),
            "text_product_overlap": _r(text_on_product)}


def plan_layout_metrics(plan: LayoutPlan, *, safe: SafeZone | None = None) -> dict[str, Any]:
    return layout_metrics(plan.boxes, safe=safe)


def cells_metrics(rects: Sequence[tuple[Fraction, Fraction, Fraction, Fraction]]) -> dict[str, Any]:
    """Exact coverage of the canvas by cells: union area, pairwise overlap, and whether they tile it exactly once."""
    overlap = Fraction(0)
    for a, b in combinations(rects, 2):
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        if w > 0 and h > 0:
            overlap += w * h
    total = sum(((r[2] - r[0]) * (r[3] - r[1]) for r in rects), Fraction(0))
    inside = all(0 <= r[0] < r[2] <= 1 and 0 <= r[1] < r[3] <= 1 for r in rects)
    # every cell inside, no two overlapping, areas summing to 1  <=>  the cells tile the canvas exactly once
    exactly_once = inside and overlap == 0 and total == 1
    return {"cells": len(rects), "covers_canvas_exactly_once": exactly_once, "coverage": float(total - overlap),
            "overlap": float(overlap)}


def regional_metrics(plan: RegionalPlan | str) -> dict[str, Any]:
    """RPG: cells of the split ratio, exact coverage of the canvas and pairwise overlap (fractions)."""
    split = plan if isinstance(plan, str) else plan.split_ratio
    cells = split_ratio_cells(split)
    return {**cells_metrics([b for _, _, b in cells]), "rows": len({r for r, _, _ in cells})}
