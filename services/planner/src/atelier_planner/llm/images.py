"""Images for a VLM: scaled to fit, encoded as PNG data URLs (OpenAI-compatible ``image_url`` parts)."""

from __future__ import annotations

import base64
import io

from atelier_runtime.images import png_bytes
from PIL import Image


def open_image(data: bytes | Image.Image) -> Image.Image:
    if isinstance(data, Image.Image):
        return data
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def data_url(image: bytes | Image.Image, *, max_side: int = 768) -> str:
    """``data:image/png;base64,...`` of ``image`` scaled (never up) so its longer side is at most ``max_side``."""
    img = open_image(image)
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")


def crop(image: Image.Image, bbox: tuple[float, float, float, float], *, pad: float = 0.05) -> Image.Image:
    """The region ``bbox`` (normalised) of ``image`` with a little context around it."""
    w, h = image.size
    x1, y1, x2, y2 = bbox
    px, py = pad * (x2 - x1), pad * (y2 - y1)
    box = (max(0, round((x1 - px) * w)), max(0, round((y1 - py) * h)), min(w, round((x2 + px) * w)),
           min(h, round((y2 + py) * h)))
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        raise ValueError(f"region {list(bbox)} is too small to show at {w}x{h}")
    return image.crop(box)
