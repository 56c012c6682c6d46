"""CreatiLayout designer (offline): a global caption and at most 10 captioned boxes, and layout repair.

CreatiLayout's LayoutDesigner is an LLM that turns user input — a caption, centre points or some boxes —
into a standard layout and optimises layouts; its prompt and model were not released. This module is the
offline designer and the repair step every layout passes, whichever backend drew it:

* :func:`design_layout` — from a prompt (entities split on conjunctions with their spatial cues, sized
  by a category prior table, ``data/size_priors.json``), from centre points (one per entity, in order or
  matched by caption), or completing some boxes the user fixed (the rest go into free space);
* :func:`repair_drafts` / :func:`repair_layout` — orders and clamps coordinates, enforces minimum
  sizes, keeps graphics inside the safe zone, moves text (and logo/underlay) off the product, and keeps
  at most 10 boxes; it returns notes saying what it changed;
* :func:`place_in_free_space` — the largest empty rectangle on a grid, for background objects.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from atelier_contracts.plans import Box, LayoutPlan, PlannerInfo

from .common import RULES_PLANNER, clean_text, load_data
from .layout import (
    GRAPHIC_ROLES,
    MAX_BOXES,
    TEXT_ROLES,
    Z_ENTITY,
    BBox,
    SafeZone,
    area,
    intersection_area,
    inward,
    overlaps,
    rounded,
)
from .rpg import extract_entities

# boxes that must not cover the product unless allow_occlude (the renderer draws them over it)
COVERING_ROLES = (*TEXT_ROLES, "logo", "underlay")
# what goes first when a layout has more than MAX_BOXES boxes
DROP_ORDER = ("entity", "underlay", "logo", "cta", "tagline", "character", "product", "background")
_H_POS = {"left": 0, "center": 1, "right": 2}
_V_POS = {"top": 0.3, "middle": 0.5, "bottom": 0.72}


@dataclass
class Draft:
    """A box before validation: any four numbers (an LLM may swap or overshoot them)."""

    role: str
    bbox: tuple[float, float, float, float]
    caption: str = ""
    z: int = 0
    ref_artifact: str | None = None


@dataclass
class Repair:
    boxes: list[Box]
    notes: list[str] = field(default_factory=list)


def size_prior(caption: str) -> tuple[float, float]:
    """Typical (width, height) of what a caption names, as fractions of the canvas."""
    data = load_data("size_priors.json")
    low = caption.lower()
    for cat in data["categories"]:
        if any(re.search(rf"\b{re.escape(k)}\b", low) for k in cat["keywords"]):
            w, h = cat["size"]
            return float(w), float(h)
    w, h = data["default"]
    return float(w), float(h)


def _shift_inside(b: BBox, region: BBox) -> BBox:
    """Move ``b`` (shrinking it only if it is larger than ``region``) so it lies inside ``region``."""
    x1, y1, x2, y2 = b
    w = min(x2 - x1, region[2] - region[0])
    h = min(y2 - y1, region[3] - region[1])
    x1 = min(max(x1, region[0]), region[2] - w)
    y1 = min(max(y1, region[1]), region[3] - h)
    return (x1, y1, x1 + w, y1 + h)


def _label(d: Draft) -> str:
    return f"{d.role} {d.caption[:40]!r}" if d.caption else d.role


# ---------------------------------------------------------------- free space


def place_in_free_space(size: tuple[float, float], occupied: Sequence[BBox], *, region: BBox = (0.0, 0.0, 1.0, 1.0),
                        grid: int = 16, min_size: float = 0.06, anchor: str = "bottom") -> BBox | None:
    """A box of about ``size`` in the largest empty grid rectangle of ``region`` that fits it; None if none.

    The box keeps the prior's size where the free rectangle allows, shrinks to it otherwise, and stands on
    the rectangle's bottom (``anchor="bottom"``, objects on the ground) or sits at its centre."""
    gx1, gy1, gx2, gy2 = region
    cw, ch = (gx2 - gx1) / grid, (gy2 - gy1) / grid
    free = [[True] * grid for _ in range(grid)]
    for r in range(grid):
        for c in range(grid):
            cell = (gx1 + c * cw, gy1 + r * ch, gx1 + (c + 1) * cw, gy1 + (r + 1) * ch)
            if any(overlaps(cell, o) for o in occupied):
                free[r][c] = False
    best: tuple[float, BBox] | None = None
    heights = [0] * grid
    for r in range(grid):
        for c in range(grid):
            heights[c] = heights[c] + 1 if free[r][c] else 0
        for c in range(grid):  # every maximal rectangle whose bottom row is r and whose lowest column is c
            h = heights[c]
            if h == 0:
                continue
            left = c
            while left > 0 and heights[left - 1] >= h:
                left -= 1
            right = c
            while right < grid - 1 and heights[right + 1] >= h:
                right += 1
            rect = (gx1 + left * cw, gy1 + (r - h + 1) * ch, gx1 + (right + 1) * cw, gy1 + (r + 1) * ch)
            w = min(size[0], rect[2] - rect[0])
            hh = min(size[1], rect[3] - rect[1])
            if w < min_size or hh < min_size:
                continue
            score = w * hh
            if best is None or score > best[0] + 1e-12:
                cx = (rect[0] + rect[2]) / 2
                top = rect[3] - hh if anchor == "bottom" else (rect[1] + rect[3] - hh) / 2
                best = (score, (cx - w / 2, top, cx + w / 2, top + hh))
    return best[1] if best else None


# ---------------------------------------------------------------- repair


def repair_drafts(drafts: Sequence[Draft], *, width: int, height: int, safe: SafeZone | None = None,
                  min_px: int = 16, allow_occlude: bool = False, max_boxes: int = MAX_BOXES,
                  gap_px: float = 4.0) -> Repair:
    """Turn any drafted boxes into a valid layout and say what changed (see the module docstring)."""
    notes: list[str] = []
    items = [Draft(d.role, tuple(float(v) for v in d.bbox), d.caption, d.z, d.ref_artifact)  # type: ignore[arg-type]
             for d in drafts]
    canvas: BBox = (0.0, 0.0, 1.0, 1.0)
    # + 2/1000: the inward rounding to 3 decimals must not take a box below the minimum again
    min_w, min_h = min(0.5, min_px / width + 0.002), min(0.5, min_px / height + 0.002)
    for d in items:
        x1, y1, x2, y2 = d.bbox
        if x1 > x2 or y1 > y2:
            notes.append(f"{_label(d)}: corners reordered")
            x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        c = (min(max(x1, 0.0), 1.0), min(max(y1, 0.0), 1.0), min(max(x2, 0.0), 1.0), min(max(y2, 0.0), 1.0))
        if c != (x1, y1, x2, y2):
            notes.append(f"{_label(d)}: clamped to the canvas")
        x1, y1, x2, y2 = c
        if x2 - x1 < min_w or y2 - y1 < min_h:
            notes.append(f"{_label(d)}: grown to the minimum size")
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            w, h = max(x2 - x1, min_w), max(y2 - y1, min_h)
            x1, y1, x2, y2 = _shift_inside((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), canvas)
        d.bbox = (x1, y1, x2, y2)
        if safe is not None and d.role in GRAPHIC_ROLES and not safe.contains(d.bbox):
            notes.append(f"{_label(d)}: moved inside the safe zone ({safe.name})")
            d.bbox = _shift_inside(d.bbox, safe.rect)

    region = safe.rect if safe is not None else canvas
    products = [d for d in items if d.role == "product"]
    if products and not allow_occlude:
        product = products[0]
        gx, gy = gap_px / width, gap_px / height
        placed: list[BBox] = []
        for d in items:
            if d.role not in COVERING_ROLES or not overlaps(d.bbox, product.bbox):
                if d.role in COVERING_ROLES:
                    placed.append(d.bbox)
                continue
            moved = _move_off(d.bbox, product.bbox, region, placed, gx, gy, min_w, min_h)
            if moved is not None:
                notes.append(f"{_label(d)}: moved off the product")
                d.bbox = moved
            else:
                product.bbox = _cut_product(product.bbox, d.bbox, gx, gy)
                notes.append(f"{_label(d)}: no room beside the product, so the product box was cut back")
            placed.append(d.bbox)

    if len(items) > max_boxes:
        order = {r: i for i, r in enumerate(DROP_ORDER)}
        ranked = sorted(range(len(items)), key=lambda i: (order.get(items[i].role, 0), -i))
        drop = set(ranked[:len(items) - max_boxes])
        for i in sorted(drop):
            notes.append(f"{_label(items[i])}: dropped (at most {max_boxes} boxes)")
        items = [d for i, d in enumerate(items) if i not in drop]

    boxes = []
    for d in items:
        b = inward(d.bbox) if d.role in GRAPHIC_ROLES else rounded(d.bbox)
        if not (b[0] < b[2] and b[1] < b[3]):  # rounding ate a sliver: keep the unrounded interior
            b = rounded(d.bbox)
        boxes.append(Box(bbox=b, caption=d.caption, role=d.role, z=d.z, ref_artifact=d.ref_artifact))  # type: ignore[arg-type]
    return Repair(boxes=boxes, notes=notes)


def _move_off(b: BBox, p: BBox, region: BBox, placed: Sequence[BBox], gx: float, gy: float,
              min_w: float, min_h: float) -> BBox | None:
    """``b`` moved (shrunk only if needed) into the free side of ``region`` around product ``p`` nearest to it."""
    sides = [(region[0], region[1], p[0] - gx, region[3]), (p[2] + gx, region[1], region[2], region[3]),
             (region[0], region[1], region[2], p[1] - gy), (region[0], p[3] + gy, region[2], region[3])]
    w, h = b[2] - b[0], b[3] - b[1]
    best: tuple[float, BBox] | None = None
    for s in sides:
        sw, sh = s[2] - s[0], s[3] - s[1]
        if sw < min_w or sh < min_h:
            continue
        cand = _shift_inside((b[0], b[1], b[0] + min(w, sw), b[1] + min(h, sh)), s)
        lost = 1.0 - area(cand) / area(b) if area(b) > 0 else 0.0
        moved = abs(cand[0] - b[0]) + abs(cand[1] - b[1])
        crowd = sum(intersection_area(cand, o) for o in placed)
        cost = moved + 2.0 * lost + 4.0 * crowd
        if best is None or cost < best[0]:
            best = (cost, cand)
    return best[1] if best else None


def _cut_product(p: BBox, b: BBox, gx: float, gy: float) -> BBox:
    """Product ``p`` with the side facing ``b`` cut back so they no longer overlap (the largest piece wins)."""
    pieces = [(p[0], p[1], min(p[2], b[0] - gx), p[3]), (max(p[0], b[2] + gx), p[1], p[2], p[3]),
              (p[0], p[1], p[2], min(p[3], b[1] - gy)), (p[0], max(p[1], b[3] + gy), p[2], p[3])]
    valid = [q for q in pieces if q[2] > q[0] and q[3] > q[1]]
    return max(valid, key=area) if valid else p


def repair_layout(plan: LayoutPlan, *, safe: SafeZone | None = None, min_px: int = 16,
                  allow_occlude: bool = False) -> tuple[LayoutPlan, list[str]]:
    """:func:`repair_drafts` for a LayoutPlan (clamp, minimum sizes, text off the product, <= 10 boxes)."""
    drafts = [Draft(b.role, b.bbox, b.caption, b.z, b.ref_artifact) for b in plan.boxes]
    fixed = repair_drafts(drafts, width=plan.width, height=plan.height, safe=safe, min_px=min_px,
                          allow_occlude=allow_occlude)
    return plan.model_copy(update={"boxes": fixed.boxes}), fixed.notes


# ---------------------------------------------------------------- design


def _points(points: Sequence[Any] | None) -> list[tuple[str | None, float, float]]:
    out: list[tuple[str | None, float, float]] = []
    for p in points or []:
        if isinstance(p, dict):
            out.append((p.get("caption"), float(p["x"]), float(p["y"])))
        else:
            x, y = p
            out.append((None, float(x), float(y)))
    for _, x, y in out:
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(f"centre point ({x}, {y}) must lie in 0..1")
    return out


def design_drafts(prompt: str, *, points: Sequence[Any] | None = None,
                  boxes: Sequence[Box | Draft] | None = None, max_boxes: int = MAX_BOXES) -> list[Draft]:
    """Region drafts for a prompt, keeping the user's boxes and using the user's centre points."""
    entities, style = extract_entities(clean_text(prompt))
    fixed = [Draft(b.role, tuple(b.bbox), b.caption, b.z, b.ref_artifact) for b in boxes or []]  # type: ignore[arg-type]
    taken = {d.caption.lower() for d in fixed if d.caption}
    todo = [e for e in entities if e.text.lower() not in taken][:max(0, max_boxes - len(fixed))]
    pts = _points(points)
    drafts = list(fixed)
    occupied: list[BBox] = [d.bbox for d in fixed]

    def draft_at(caption: str, cx: float, cy: float) -> Draft:
        w, h = size_prior(caption)
        b = _shift_inside((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), (0.0, 0.0, 1.0, 1.0))
        return Draft("entity", b, caption, Z_ENTITY)

    pending = []
    for i, e in enumerate(todo):
        named = next((p for p in pts if p[0] and p[0].lower() in e.text.lower()), None)
        point = named or (pts[i] if i < len(pts) and pts[i][0] is None else None)
        if point is not None:
            d = draft_at(e.text, point[1], point[2])
            drafts.append(d)
            occupied.append(d.bbox)
        else:
            pending.append(e)

    cued = [e for e in pending if e.h or e.v]
    rows: dict[float, list[Any]] = {}
    for e in cued:
        rows.setdefault(_V_POS.get(e.v or "middle", 0.5), []).append(e)
    for cy, row in rows.items():
        row.sort(key=lambda e: _H_POS.get(e.h or "center", 1))
        for k, e in enumerate(row):
            slot = _H_POS.get(e.h or "center", 1) if len({x.h for x in row}) == len(row) else k
            n = 3 if len({x.h for x in row}) == len(row) else len(row)
            d = draft_at(e.text, (slot + 0.5) / n, cy)
            drafts.append(d)
            occupied.append(d.bbox)
    uncued = [e for e in pending if not (e.h or e.v)]
    if uncued and not cued and not occupied:
        n = len(uncued)  # no cues at all: one row along the lower third line, left to right (reading order)
        for k, e in enumerate(uncued):
            w, h = size_prior(e.text)
            w = min(w, 0.9 / n)
            cx, cy = (k + 0.5) / n, 2 / 3
            drafts.append(Draft("entity", (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), e.text, Z_ENTITY))
    else:
        for e in uncued:
            spot = place_in_free_space(size_prior(e.text), occupied, anchor="center")
            if spot is None:
                continue
            drafts.append(Draft("entity", spot, e.text, Z_ENTITY))
            occupied.append(spot)
    if style:
        suffix = ", ".join(style)
        for d in drafts:
            if d.role == "entity" and d.caption and suffix not in d.caption:
                d.caption = f"{d.caption}, {suffix}"
    return drafts[:max_boxes]


def design_layout(prompt: str, *, width: int = 1024, height: int = 1024, points: Sequence[Any] | None = None,
                  boxes: Sequence[Box] | None = None, plan_id: str = "design", seed: int = 0,
                  negative_prompt: str = "", planner: PlannerInfo = RULES_PLANNER) -> tuple[LayoutPlan, list[str]]:
    """CreatiLayout designer: global caption + at most 10 boxes with captions, and the repair notes."""
    caption = clean_text(prompt)
    if not caption:
        raise ValueError("cannot design a layout for an empty prompt")
    drafts = design_drafts(caption, points=points, boxes=boxes)
    fixed = repair_drafts(drafts, width=width, height=height)
    plan = LayoutPlan(plan_id=plan_id, seed=seed, width=width, height=height, negative_prompt=negative_prompt,
                      planner=planner, global_caption=caption, boxes=fixed.boxes)
    return plan, fixed.notes
