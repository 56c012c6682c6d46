"""Layout geometry: normalised boxes, channel safe zones and the PAID ad-layout solver.

Every box is normalised to 0..1 with a top-left origin (CreatiLayout / PITA convention), rounded to
3 decimals, and at most ``MAX_BOXES`` per layout (SiamLayout's ``max_objs``).

The ad solver (PAID's offline layout stage) works in pixels inside the channel's safe zone and picks
an arrangement by aspect ratio — square: product left, text right; landscape: text left, product
right; portrait: text top, product middle, CTA bottom; banner (4:1 and wider): logo, text, CTA and
product side by side. Text reads top to bottom (headline, subs, CTA), the product sits near a third
line, and a gap separates text from product. Graphic boxes are rounded *inwards* to 3 decimals, so
rounding can never push them out of the safe zone or onto the product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Literal

from atelier_contracts import placements
from atelier_contracts.plans import Box

from .common import load_data

BBox = tuple[float, float, float, float]
Aspect = Literal["square", "landscape", "portrait"]
Arrangement = Literal["square", "landscape", "portrait", "banner"]
MAX_BOXES = 10
MAX_TAGLINE_BOXES = 3  # headline + two subs; further taglines stay in the plan without a box
TEXT_ROLES = ("tagline", "cta")
GRAPHIC_ROLES = ("product", "logo", "tagline", "underlay", "cta")  # must stay inside the safe zone
MIN_TEXT_PX = 8
MIN_BOX_PX = 16  # the repair's smallest box side (designer.repair_drafts)
# with allow_occlude the product may grow this far (fraction of its size) under the text side
OCCLUDE_GROWTH = 0.12
MAX_OCCLUSION = 0.25

# z order shared by every ad layout: higher draws on top
Z_BACKGROUND, Z_ENTITY, Z_PRODUCT, Z_UNDERLAY, Z_TEXT, Z_LOGO = 0, 1, 2, 3, 4, 4


# ---------------------------------------------------------------- boxes


def aspect_class(width: int, height: int) -> Aspect:
    """square for ~1:1 (0.85..1.3), landscape wider, portrait taller (4:5 and 9:16 are portrait)."""
    r = width / height
    if r >= 1.3:
        return "landscape"
    if r < 0.85:
        return "portrait"
    return "square"


def rounded(b: BBox) -> BBox:
    x1, y1, x2, y2 = (round(min(1.0, max(0.0, v)), 3) for v in b)
    return (x1, y1, x2, y2)


def inward(b: BBox) -> BBox:
    """``b`` rounded to 3 decimals towards its inside (never grows, so never leaves a region it was in)."""
    x1, y1, x2, y2 = (min(1.0, max(0.0, v)) for v in b)
    return (math.ceil(x1 * 1000 - 1e-6) / 1000, math.ceil(y1 * 1000 - 1e-6) / 1000,
            math.floor(x2 * 1000 + 1e-6) / 1000, math.floor(y2 * 1000 + 1e-6) / 1000)


def union(a: BBox, b: BBox) -> BBox:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def area(b: BBox) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def intersection(a: BBox, b: BBox) -> BBox | None:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def intersection_area(a: BBox, b: BBox) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def overlaps(a: BBox, b: BBox) -> bool:
    return intersection_area(a, b) > 0.0


def inside_canvas(b: BBox) -> bool:
    return 0.0 <= b[0] < b[2] <= 1.0 and 0.0 <= b[1] < b[3] <= 1.0


def contains(outer: BBox, inner: BBox, eps: float = 1e-9) -> bool:
    return (inner[0] >= outer[0] - eps and inner[1] >= outer[1] - eps and inner[2] <= outer[2] + eps
            and inner[3] <= outer[3] + eps)


def bottom_aligned_columns(heights: list[float], *, margin: float = 0.06, gap: float = 0.04, bottom: float = 0.96,
                           max_width: float = 0.34) -> list[BBox]:
    """KAHANI offline boxes: equal-width columns, centred as a group, all standing on one ground line.

    ``heights`` are fractions of the canvas height (children shorter than adults)."""
    n = len(heights)
    if n == 0:
        return []
    width = min(max_width, (1.0 - 2 * margin - (n - 1) * gap) / n)
    total = n * width + (n - 1) * gap
    x = (1.0 - total) / 2
    boxes = []
    for h in heights:
        top = max(0.02, bottom - h)
        boxes.append(rounded((x, top, x + width, bottom)))
        x += width + gap
    return boxes


def full_canvas_box(caption: str) -> Box:
    return Box(bbox=(0.0, 0.0, 1.0, 1.0), caption=caption, role="background", z=Z_BACKGROUND)


# ---------------------------------------------------------------- safe zones


@dataclass(frozen=True)
class SafeZone:
    """Fractions of the canvas, per side, that graphics must keep clear of (the channel's UI covers them)."""

    name: str
    left: float
    top: float
    right: float
    bottom: float

    @property
    def rect(self) -> BBox:
        return (self.left, self.top, 1.0 - self.right, 1.0 - self.bottom)

    def contains(self, b: BBox, eps: float = 1e-9) -> bool:
        return contains(self.rect, b, eps)

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The safe rectangle in whole pixels, rounded inwards."""
        return (math.ceil(self.left * width - 1e-9), math.ceil(self.top * height - 1e-9),
                math.floor((1.0 - self.right) * width + 1e-9), math.floor((1.0 - self.bottom) * height + 1e-9))

    def as_dict(self) -> dict[str, float | str]:
        return {"name": self.name, "left": self.left, "top": self.top, "right": self.right, "bottom": self.bottom}


@cache
def _zones() -> tuple[dict[str, object], ...]:
    return tuple(load_data("safe_zones.json")["rules"])


def _min_text_of(width: int, height: int) -> float:
    """The lowest text box of a size, in pixels: its placement's minimum text height with line spacing and
    padding (x1.3), and never under the repair's 16 px minimum box."""
    try:
        text_px = placements.placement(f"{width}x{height}").min_text_px
    except ValueError:
        text_px = MIN_TEXT_PX
    return float(max(MIN_BOX_PX + 1, math.ceil(1.3 * text_px)))


def _channel_of(width: int, height: int) -> str | None:
    """The safe-zone channel a standard placement of this size names (None: any other size)."""
    try:
        return placements.placement(f"{width}x{height}").channel
    except ValueError:  # a size the specs refuse (tests, tools): by aspect ratio
        return None


def safe_zone_for(width: int, height: int, channel: str | None = None) -> SafeZone:
    """The safe zone of a target size (``data/safe_zones.json``): by channel name (given, or the standard
    placement's: ``atelier_contracts.placements``), else by aspect ratio."""
    named = channel if channel is not None else _channel_of(width, height)
    rules = _zones()
    chosen = None
    if named:
        chosen = next((r for r in rules if r["name"] == named), None)
        if chosen is None:
            raise ValueError(f"unknown safe-zone channel {named!r}; known: {[r['name'] for r in rules]}")
    if chosen is None:
        for rule in rules:
            if "min_h_over_w" in rule and height / width < float(rule["min_h_over_w"]):  # type: ignore[arg-type]
                continue
            if "min_w_over_h" in rule and width / height < float(rule["min_w_over_h"]):  # type: ignore[arg-type]
                continue
            chosen = rule
            break
    assert chosen is not None, "safe_zones.json must end with a rule that always matches"
    return SafeZone(name=str(chosen["name"]), left=float(chosen["left"]), top=float(chosen["top"]),  # type: ignore[arg-type]
                    right=float(chosen["right"]), bottom=float(chosen["bottom"]))  # type: ignore[arg-type]


# ---------------------------------------------------------------- the ad solver


Rect = tuple[float, float, float, float]  # pixels


@dataclass(frozen=True)
class AdSlots:
    """Where each graphic element of one ad goes (normalised boxes), from :func:`solve_ad_layout`."""

    arrangement: Arrangement
    product: BBox
    texts: tuple[BBox, ...]  # headline first, then the subs
    cta: BBox | None
    logo: BBox | None
    underlay: BBox | None
    align: Literal["left", "center", "right"]
    safe: SafeZone


def _stack(col: Rect, *, taglines: int, cta: bool, gap: float, align: str,
           centre: bool = True, min_px: float = MIN_TEXT_PX) -> tuple[list[Rect], Rect | None]:
    """Headline, subs and CTA stacked top to bottom in ``col`` (weights 3 / 1.5 / 1.3), centred vertically.

    Sub-taglines that would be set lower than ``min_px`` are left out, last first (a 320x50 banner shows its
    headline only): fewer text boxes than taglines come back, never one too small to read."""
    x1, y1, x2, y2 = col
    w, h = x2 - x1, y2 - y1
    inner_gap = 0.6 * gap
    while True:
        weights = [3.0] + [1.5] * (taglines - 1) + ([1.3] if cta else [])
        avail = h - inner_gap * (len(weights) - 1)
        unit = min(avail / sum(weights), 0.13 * w)  # text boxes keep a readable shape in wide columns
        if taglines == 1 or 1.5 * unit >= min_px:
            break
        taglines -= 1
    heights = [u * unit for u in weights]
    total = sum(heights) + inner_gap * (len(weights) - 1)
    y = y1 + (h - total) / 2 if centre else y1
    texts: list[Rect] = []
    cta_rect: Rect | None = None
    for i, hh in enumerate(heights):
        if cta and i == len(heights) - 1:
            cw = min(w, max(0.6 * w, min(w, 4.0 * hh)))
            cx1 = x1 if align == "left" else x1 + (w - cw) / 2
            cta_rect = (cx1, y, cx1 + cw, y + hh)
        else:
            texts.append((x1, y, x2, y + hh))
        y += hh + inner_gap
    return texts, cta_rect


def shape_to(rect: Rect, aspect: float, *, min_px: float = 0.0) -> Rect:
    """The largest box of ``aspect`` (width/height, in pixels) inside ``rect``, centred and standing on its bottom;
    no side under ``min_px`` (or the slot's own side)."""
    x1, y1, x2, y2 = rect
    w, h = x2 - x1, y2 - y1
    if w / h > aspect:
        nw, nh = max(min(w, min_px), h * aspect), h
    else:
        nw, nh = w, max(min(h, min_px), w / aspect)
    cx = (x1 + x2) / 2
    return (cx - nw / 2, y2 - nh, cx + nw / 2, y2)


def solve_ad_layout(width: int, height: int, *, taglines: int = 1, cta: bool = True, logo: bool = False,
                    underlay: bool = False, allow_occlude: bool = False, safe: SafeZone | None = None,
                    min_text_px: float | None = None, product_aspect: float | None = None) -> AdSlots:
    """Solve one ad layout under the constraints (safe zone, margins, no text over the product, reading order).

    ``min_text_px``: the placement's minimum text height (``atelier_contracts.placements``; default: the
    size's placement); sub-taglines that cannot be set that high are left out (``len(texts) < taglines``).
    ``product_aspect``: the product's width/height; its box takes that shape inside its slot (standing on the slot's
    bottom, centred), so the freed space is free for the background's objects."""
    if min_text_px is None:
        min_text_px = _min_text_of(width, height)
    safe = safe or safe_zone_for(width, height)
    n = max(1, min(MAX_TAGLINE_BOXES, taglines))
    sx1, sy1, sx2, sy2 = safe.pixels(width, height)
    sw, sh = sx2 - sx1, sy2 - sy1
    if sw < 8 or sh < 8:
        raise ValueError(f"{width}x{height}: the safe zone {safe.name} leaves no room for an ad")
    gap = max(4.0, 0.025 * min(sw, sh))
    ratio = width / height
    logo_rect: Rect | None = None
    align: Literal["left", "center", "right"] = "left"
    grow: tuple[float, float] = (0.0, 0.0)  # direction the product may grow into the text side (allow_occlude)

    if ratio >= 3.0:
        arrangement: Arrangement = "banner"
        x = float(sx1)
        if logo:
            lw = min(float(sh), 0.12 * sw)
            logo_rect = (x, sy1 + (sh - lw) / 2, x + lw, sy1 + (sh + lw) / 2)
            x += lw + gap
        pw = min(0.25 * sw, 1.2 * sh)
        product: Rect = (sx2 - pw, sy1, sx2, sy2)
        right = sx2 - pw - gap
        cta_rect: Rect | None = None
        if cta:
            cw = min(0.2 * sw, 3.2 * sh)
            ch = min(float(sh), max(0.45 * sh, cw / 4.0))
            cta_rect = (right - cw, sy1 + (sh - ch) / 2, right, sy1 + (sh + ch) / 2)
            right -= cw + gap
        texts, _ = _stack((x, sy1, right, sy2), taglines=n, cta=False, gap=gap, align="left", min_px=min_text_px)
        grow = (-1.0, 0.0)
    elif ratio >= 0.85:
        arrangement = "landscape" if ratio >= 1.3 else "square"
        if arrangement == "landscape":
            pw = min(0.42 * sw, 1.1 * sh)
            product = (sx2 - pw, sy1, sx2, sy2)
            col: Rect = (sx1, sy1, sx2 - pw - gap, sy2)
            grow = (-1.0, 0.0)
        else:
            half = (sw - gap) / 2
            product = (sx1, sy1, sx1 + half, sy2)
            col = (sx1 + half + gap, sy1, sx2, sy2)
            grow = (1.0, 0.0)
        if logo:
            lh = min(0.12 * sh, 0.3 * (col[2] - col[0]))
            lw = min(3.0 * lh, 0.5 * (col[2] - col[0]))
            if arrangement == "landscape":
                logo_rect = (col[0], sy1, col[0] + lw, sy1 + lh)
                col = (col[0], sy1 + lh + gap, col[2], col[3])
            else:  # square: the logo sits above the product, the text column keeps its full height
                logo_rect = (sx1, sy1, sx1 + lw, sy1 + lh)
                product = (product[0], sy1 + lh + gap, product[2], product[3])
        texts, cta_rect = _stack(col, taglines=n, cta=cta, gap=gap, align="left", min_px=min_text_px)
    else:
        arrangement = "portrait"
        align = "center"
        y = float(sy1)
        if logo:
            lh = min(0.06 * sh, 0.15 * sw)
            lw = min(3.0 * lh, 0.5 * sw)
            logo_rect = (sx1 + (sw - lw) / 2, y, sx1 + (sw + lw) / 2, y + lh)
            y += lh + gap
        head = min(0.15 * sh, 0.45 * sw)
        sub = min(0.065 * sh, 0.2 * sw)
        texts = []
        if sub < min_text_px:
            n = 1
        for i in range(n):
            hh = head if i == 0 else sub
            texts.append((sx1, y, sx2, y + hh))
            y += hh + (0.6 * gap if i < n - 1 else gap)
        bottom = float(sy2)
        cta_rect = None
        if cta:
            ch = min(0.075 * sh, 0.2 * sw)
            cw = min(0.6 * sw, max(4.0 * ch, 0.4 * sw))
            cta_rect = (sx1 + (sw - cw) / 2, sy2 - ch, sx1 + (sw + cw) / 2, sy2)
            bottom = sy2 - ch - gap
        inset = 0.05 * sw
        product = (sx1 + inset, y, sx2 - inset, bottom)
        grow = (0.0, -1.0)

    if product_aspect:
        product = shape_to(product, product_aspect, min_px=MIN_BOX_PX + 1)
    if product[2] - product[0] < 4 or product[3] - product[1] < 4:
        raise ValueError(f"{width}x{height}: no room left for the product")
    under: Rect | None = None
    if underlay:
        pad = 0.45 * gap
        u = texts[0]
        for t in texts[1:]:
            u = union(u, t)
        under = (max(sx1, u[0] - pad), max(sy1, u[1] - pad), min(sx2, u[2] + pad), min(sy2, u[3] + pad))
    if allow_occlude:
        # the product grows under the text side: text and underlay may cover part of it (PAID allow_occlude)
        dx = OCCLUDE_GROWTH * (product[2] - product[0]) * grow[0]
        dy = OCCLUDE_GROWTH * (product[3] - product[1]) * grow[1]
        product = (max(sx1, product[0] + min(0.0, dx)), max(sy1, product[1] + min(0.0, dy)),
                   min(sx2, product[2] + max(0.0, dx)), min(sy2, product[3] + max(0.0, dy)))

    def norm(r: Rect) -> BBox:
        return inward((r[0] / width, r[1] / height, r[2] / width, r[3] / height))

    return AdSlots(arrangement=arrangement, product=norm(product), texts=tuple(norm(t) for t in texts),
                   cta=norm(cta_rect) if cta_rect else None, logo=norm(logo_rect) if logo_rect else None,
                   underlay=norm(under) if under else None, align=align, safe=safe)
