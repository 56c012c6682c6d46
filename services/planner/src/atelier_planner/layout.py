"""CreatiLayout offline designer: box templates per aspect ratio and per cast size, and box geometry.

Every box is normalised to 0..1 with a top-left origin (CreatiLayout / PITA convention), rounded to
3 decimals, and at most ``MAX_BOXES`` per layout (SiamLayout's ``max_objs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from atelier_shared.plans import Box

BBox = tuple[float, float, float, float]
Aspect = Literal["square", "landscape", "portrait"]
MAX_BOXES = 10
TEXT_ROLES = ("tagline", "cta")

# z order shared by every ad layout: higher draws on top
Z_BACKGROUND, Z_ENTITY, Z_PRODUCT, Z_UNDERLAY, Z_TEXT, Z_LOGO = 0, 1, 2, 3, 4, 4


@dataclass(frozen=True)
class AdTemplate:
    """Where each element of an ad goes for one aspect class (PAID offline fallback)."""

    name: Aspect
    product: BBox
    headline: BBox
    sub: BBox
    cta: BBox
    logo: BBox
    underlay: BBox
    align: Literal["left", "center", "right"]
    objects: tuple[BBox, ...] = field(default_factory=tuple)


# square: product left, tagline right
SQUARE = AdTemplate(
    name="square", product=(0.06, 0.14, 0.52, 0.84), headline=(0.56, 0.14, 0.95, 0.42), sub=(0.56, 0.44, 0.95, 0.60),
    cta=(0.60, 0.67, 0.92, 0.77), logo=(0.06, 0.03, 0.24, 0.11), underlay=(0.54, 0.12, 0.97, 0.62), align="left",
    objects=((0.02, 0.86, 0.34, 0.99), (0.56, 0.83, 0.98, 0.99), (0.30, 0.01, 0.70, 0.12)),
)
# landscape (1200x628 and wider): text left, product right
LANDSCAPE = AdTemplate(
    name="landscape", product=(0.62, 0.08, 0.94, 0.80), headline=(0.05, 0.14, 0.55, 0.44), sub=(0.05, 0.46, 0.55, 0.62),
    cta=(0.05, 0.70, 0.32, 0.86), logo=(0.05, 0.02, 0.19, 0.11), underlay=(0.03, 0.12, 0.57, 0.65), align="left",
    objects=((0.35, 0.68, 0.58, 0.98), (0.60, 0.82, 0.98, 0.99)),
)
# portrait (9:16, 4:5): tagline top, product middle, CTA bottom
PORTRAIT = AdTemplate(
    name="portrait", product=(0.14, 0.33, 0.86, 0.78), headline=(0.08, 0.08, 0.92, 0.22), sub=(0.10, 0.23, 0.90, 0.30),
    cta=(0.25, 0.83, 0.75, 0.90), logo=(0.38, 0.015, 0.62, 0.065), underlay=(0.05, 0.07, 0.95, 0.31), align="center",
    objects=((0.0, 0.36, 0.13, 0.74), (0.87, 0.36, 1.0, 0.74), (0.05, 0.92, 0.95, 1.0)),
)
TEMPLATES: dict[Aspect, AdTemplate] = {"square": SQUARE, "landscape": LANDSCAPE, "portrait": PORTRAIT}


def aspect_class(width: int, height: int) -> Aspect:
    """square for ~1:1 (0.85..1.3), landscape wider, portrait taller (4:5 and 9:16 are portrait)."""
    r = width / height
    if r >= 1.3:
        return "landscape"
    if r < 0.85:
        return "portrait"
    return "square"


def template_for(width: int, height: int) -> AdTemplate:
    return TEMPLATES[aspect_class(width, height)]


def rounded(b: BBox) -> BBox:
    x1, y1, x2, y2 = (round(min(1.0, max(0.0, v)), 3) for v in b)
    return (x1, y1, x2, y2)


def union(a: BBox, b: BBox) -> BBox:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def intersection_area(a: BBox, b: BBox) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def overlaps(a: BBox, b: BBox) -> bool:
    return intersection_area(a, b) > 0.0


def inside_canvas(b: BBox) -> bool:
    return 0.0 <= b[0] < b[2] <= 1.0 and 0.0 <= b[1] < b[3] <= 1.0


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
