"""Control images for ControlNets: derived from a given image (canny) or from a layout (depth, pose).

* ``canny(image)`` — OpenCV Canny edges, white on black, the input canny ControlNets expect.
* ``depth_from_layout(boxes)`` — a layout's depth map: a ground-plane gradient (far = dark at the top,
  near = bright at the bottom) with each box a flat plane as near as its bottom edge, higher ``z`` in
  front. No depth model runs here; for a real depth map, pass one as the control image.
* ``pose_from_layout(boxes)`` — an OpenPose-style (COCO-18 keypoints, the usual limb colours) standing
  skeleton fitted into every character box; for real poses, pass a pose image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

CONTROL_KINDS = ("canny", "depth", "pose")

# a standing figure in a unit box (x right, y down), COCO-18 order:
# nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, l-elbow, l-wrist, r-hip, r-knee, r-ankle,
# l-hip, l-knee, l-ankle, r-eye, l-eye, r-ear, l-ear
_STANDING = (
    (0.50, 0.08), (0.50, 0.18), (0.36, 0.19), (0.31, 0.35), (0.29, 0.50), (0.64, 0.19), (0.69, 0.35), (0.71, 0.50),
    (0.42, 0.52), (0.41, 0.74), (0.40, 0.96), (0.58, 0.52), (0.59, 0.74), (0.60, 0.96), (0.47, 0.06), (0.53, 0.06),
    (0.44, 0.07), (0.56, 0.07),
)
_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
          (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
            (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
            (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))


def canny(image: Image.Image, *, low: int = 100, high: int = 200) -> Image.Image:
    """Canny edges of ``image`` as an RGB image (white edges on black)."""
    import cv2  # heavy (OpenCV): loaded on first use

    gray = np.asarray(image.convert("L"))
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1), "RGB")


def _px(bbox: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = bbox
    return round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)


def depth_from_layout(boxes: Sequence[Any], width: int, height: int) -> Image.Image:
    """A depth map of the layout: ground gradient, each box a plane as near as its bottom edge."""
    ramp = np.linspace(40, 160, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    canvas = Image.fromarray(ramp.astype(np.uint8), "L").convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for box in sorted(boxes, key=lambda b: (b.z, b.bbox[3])):
        if box.role in ("tagline", "cta", "logo", "underlay", "background"):
            continue
        x1, y1, x2, y2 = _px(box.bbox, width, height)
        near = int(np.clip(120 + 135 * box.bbox[3], 0, 255))  # lower on the canvas = closer = brighter
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), fill=(near, near, near))
    return canvas


def pose_from_layout(boxes: Sequence[Any], width: int, height: int) -> Image.Image:
    """OpenPose-style standing skeletons, one per ``character`` box, on black."""
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for box in boxes:
        if box.role != "character":
            continue
        x1, y1, x2, y2 = _px(box.bbox, width, height)
        bw, bh = max(1, x2 - x1), max(1, y2 - y1)
        points = [(x1 + u * bw, y1 + v * bh) for u, v in _STANDING]
        stroke = max(1, round(min(bw, bh) / 30))
        for i, (a, b) in enumerate(_LIMBS):
            draw.line((points[a], points[b]), fill=_COLOURS[i % len(_COLOURS)], width=stroke)
        for i, (px, py) in enumerate(points):
            r = stroke + 1
            draw.ellipse((px - r, py - r, px + r, py + r), fill=_COLOURS[i % len(_COLOURS)])
    return canvas


def derive(kind: str, *, width: int, height: int, image: Image.Image | None = None,
           boxes: Sequence[Any] | None = None) -> Image.Image:
    """The control image of ``kind`` at ``width`` x ``height``: canny from ``image``, depth/pose from ``boxes``."""
    if kind == "canny":
        if image is None:
            raise ValueError("a canny control needs an image to take edges from")
        return canny(image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))
    if kind == "depth":
        return depth_from_layout(boxes or [], width, height)
    if kind == "pose":
        return pose_from_layout(boxes or [], width, height)
    raise ValueError(f"unknown control kind {kind!r}; expected one of {', '.join(CONTROL_KINDS)}")
