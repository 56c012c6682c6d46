"""PAID stage 4 on CPU: background, product cut-out, taglines, CTA and logo drawn as graphics.

Text is never left to the diffusion model. Every text box gets the largest font size that fits
(binary search over sizes, greedy word wrap); its colour must reach WCAG 4.5:1 against the pixels
actually under it (checked against the 5th and 95th luminance percentiles, so a busy background
counts as both its light and its dark parts). When the planned colour fails, another palette colour
(or black/white) is used; when none passes, an opaque rounded underlay is drawn behind the text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from atelier_shared.plans import AdVariant, Box, Tagline, TextStyle
from PIL import Image, ImageDraw, ImageFilter

from .fonts import Font, load_font

WCAG_AA = 4.5
RGB = tuple[int, int, int]
PLAIN_BORDER_SPREAD = 40.0  # 90th-percentile RGB distance of border pixels from their median
MIN_FOREGROUND = 0.01  # keying that would leave less than this share of pixels is not applied


# ---------------------------------------------------------------- colour


def hex_to_rgb(value: str) -> RGB:
    v = value.lstrip("#")
    return int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16)


def rgb_to_hex(rgb: RGB) -> str:
    return "#{:02X}{:02X}{:02X}".format(*rgb)


def _lin(c: float) -> float:
    s = c / 255.0
    return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4


def relative_luminance(rgb: RGB) -> float:
    return 0.2126 * _lin(rgb[0]) + 0.7152 * _lin(rgb[1]) + 0.0722 * _lin(rgb[2])


def _ratio(l1: float, l2: float) -> float:
    hi, lo = max(l1, l2), min(l1, l2)
    return (hi + 0.05) / (lo + 0.05)


def contrast_ratio(rgb1: RGB | str, rgb2: RGB | str) -> float:
    """WCAG 2.x contrast ratio of two colours (RGB tuples or ``#RRGGBB``), 1..21."""
    a = hex_to_rgb(rgb1) if isinstance(rgb1, str) else rgb1
    b = hex_to_rgb(rgb2) if isinstance(rgb2, str) else rgb2
    return _ratio(relative_luminance(a), relative_luminance(b))


def luminance_map(img: Image.Image) -> np.ndarray:
    """Per-pixel WCAG relative luminance of an RGB image."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    lin = np.where(arr <= 0.03928, arr / 12.92, ((arr + 0.055) / 1.055) ** 2.4)
    return np.asarray(lin @ np.array([0.2126, 0.7152, 0.0722]))


def background_extremes(region: Image.Image) -> tuple[float, float]:
    """(dark, light) luminance of a region: its 5th and 95th percentiles."""
    small = region if region.width * region.height <= 128 * 128 else region.resize(
        (max(1, min(region.width, 128)), max(1, min(region.height, 128))), Image.Resampling.BOX)
    lum = luminance_map(small)
    return float(np.percentile(lum, 5)), float(np.percentile(lum, 95))


def min_contrast(color: RGB | str, region: Image.Image | tuple[float, float]) -> float:
    """Worst WCAG contrast of ``color`` against the dark and light parts of ``region``
    (an image, or its precomputed :func:`background_extremes`)."""
    c = hex_to_rgb(color) if isinstance(color, str) else color
    lc = relative_luminance(c)
    dark, light = background_extremes(region) if isinstance(region, Image.Image) else region
    return min(_ratio(lc, dark), _ratio(lc, light))


def _candidates(palette: list[str]) -> list[str]:
    out: list[str] = []
    for c in [*palette, "#111111", "#FFFFFF", "#000000"]:
        if c.upper() not in out:
            out.append(c.upper())
    return out


# ---------------------------------------------------------------- text fitting


@dataclass
class TextFit:
    """Result of :func:`fit_text`: a font, the wrapped lines and the block's size in pixels."""

    font: Font
    size: int
    lines: list[str]
    line_pitch: int
    width: int
    height: int
    truncated: bool = False


def _metrics(font: Font) -> tuple[int, int]:
    try:
        ascent, descent = font.getmetrics()  # type: ignore[union-attr]
        return int(ascent), int(descent)
    except AttributeError:
        _left, _top, _right, bottom = font.getbbox("Ag")
        return int(bottom), 0


def text_width(text: str, font: Font) -> int:
    if not text:
        return 0
    left, _top, right, _bottom = font.getbbox(text)
    return int(math.ceil(right - min(0, left)))


def wrap_text(text: str, font: Font, max_width: int) -> list[str]:
    """Greedy word wrap to ``max_width`` px; a word wider than the line is broken between characters."""
    lines: list[str] = []
    for para in text.split("\n"):
        words = para.split()
        current = ""
        for word in words:
            trial = f"{current} {word}" if current else word
            if text_width(trial, font) <= max_width:
                current = trial
                continue
            if current:
                lines.append(current)
            if text_width(word, font) <= max_width:
                current = word
                continue
            piece = ""
            for ch in word:  # a single word wider than the box: hard-break it
                if piece and text_width(piece + ch, font) > max_width:
                    lines.append(piece)
                    piece = ch
                else:
                    piece += ch
            current = piece
        if current or not words:
            lines.append(current)
    return lines


def _block(lines: list[str], font: Font, spacing: float) -> tuple[int, int, int]:
    ascent, descent = _metrics(font)
    pitch = max(1, int(round((ascent + descent) * spacing)))
    height = pitch * (len(lines) - 1) + ascent + descent if lines else 0
    width = max((text_width(ln, font) for ln in lines), default=0)
    return width, height, pitch


def fit_text(text: str, box_w: int, box_h: int, *, bold: bool = False, family: str | None = None,
             min_size: int = 8, max_size: int | None = None, line_spacing: float = 1.15) -> TextFit:
    """Largest font size (binary search) whose word-wrapped ``text`` fits ``box_w`` x ``box_h``.

    If not even ``min_size`` fits, the lines that fit are kept and the last one ends with "…"
    (``truncated=True``) — the block never overflows the box."""
    box_w, box_h = max(1, int(box_w)), max(1, int(box_h))
    text = " ".join(text.split())

    def attempt(size: int) -> tuple[bool, TextFit]:
        font = load_font(size, text=text, bold=bold, family=family)
        lines = wrap_text(text, font, box_w)
        w, h, pitch = _block(lines, font, line_spacing)
        return (w <= box_w and h <= box_h), TextFit(font, size, lines, pitch, w, h)

    lo, hi = max(1, min_size), max(min_size, max_size or box_h)
    best: TextFit | None = None
    ok, fit = attempt(lo)
    if ok:
        best = fit
        while lo < hi:  # invariant: lo fits
            mid = (lo + hi + 1) // 2
            ok, fit = attempt(mid)
            if ok:
                lo, best = mid, fit
            else:
                hi = mid - 1
        return best
    # nothing fits: keep what fits at min_size, ellipsize the last kept line
    font = fit.font
    ascent, descent = _metrics(font)
    keep = max(1, (box_h - ascent - descent) // fit.line_pitch + 1) if box_h >= ascent + descent else 1
    lines = fit.lines[:keep]
    last = lines[-1]
    while last and text_width(last + "…", font) > box_w:
        last = last[:-1].rstrip()
    lines[-1] = last + "…"
    w, h, pitch = _block(lines, font, line_spacing)
    return TextFit(font, fit.size, lines, pitch, w, h, truncated=True)


def draw_text_block(draw: ImageDraw.ImageDraw, fit: TextFit, box: tuple[int, int, int, int], color: RGB | str,
                    align: str = "center", valign: str = "center") -> tuple[int, int, int, int]:
    """Draw fitted lines inside ``box``; returns the block's pixel rectangle."""
    x1, y1, x2, y2 = box
    if valign == "top":
        top = y1
    elif valign == "bottom":
        top = y2 - fit.height
    else:
        top = y1 + (y2 - y1 - fit.height) // 2
    fill = hex_to_rgb(color) if isinstance(color, str) else color
    for i, line in enumerate(fit.lines):
        lw = text_width(line, fit.font)
        left_bearing = min(0, fit.font.getbbox(line)[0]) if line else 0
        if align == "left":
            x = x1
        elif align == "right":
            x = x2 - lw
        else:
            x = x1 + (x2 - x1 - lw) // 2
        draw.text((x - left_bearing, top + i * fit.line_pitch), line, font=fit.font, fill=fill)
    bx = {"left": x1, "right": x2 - fit.width}.get(align, x1 + (x2 - x1 - fit.width) // 2)
    return bx, top, bx + fit.width, top + fit.height


# ---------------------------------------------------------------- images


def cover(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover ``width`` x ``height`` (keeping aspect), then centre-crop to exactly that size."""
    scale = max(width / img.width, height / img.height)
    w, h = max(width, math.ceil(img.width * scale)), max(height, math.ceil(img.height * scale))
    resized = img.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - width) // 2, (h - height) // 2
    return resized.crop((left, top, left + width, top + height))


def _has_alpha(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        lo = img.convert("RGBA").getchannel("A").getextrema()[0]
        return isinstance(lo, int) and lo < 255
    return False


def _connected_to_border(candidate: np.ndarray) -> np.ndarray:
    """Pixels of ``candidate`` reachable from the image border through ``candidate`` (4-connected)."""
    seed = np.zeros_like(candidate)
    seed[0, :], seed[-1, :], seed[:, 0], seed[:, -1] = candidate[0, :], candidate[-1, :], candidate[:, 0], candidate[:, -1]
    while True:
        grown = seed.copy()
        grown[1:, :] |= seed[:-1, :]
        grown[:-1, :] |= seed[1:, :]
        grown[:, 1:] |= seed[:, :-1]
        grown[:, :-1] |= seed[:, 1:]
        grown &= candidate
        if np.array_equal(grown, seed):
            return seed
        seed = grown


def cutout(product: Image.Image) -> Image.Image:
    """The product as RGBA cropped to its pixels: its own alpha if it has one, else the plain
    background (estimated from the border pixels) keyed out where it is connected to the border.
    A busy border or a flat single-colour image is kept whole (opaque)."""
    if _has_alpha(product):
        rgba = product.convert("RGBA")
        bbox = rgba.getchannel("A").getbbox()
        return rgba.crop(bbox) if bbox else rgba
    rgb = product.convert("RGB")
    arr = np.asarray(rgb, dtype=np.float32)
    t = max(1, min(rgb.width, rgb.height) // 50)
    border = np.concatenate([arr[:t].reshape(-1, 3), arr[-t:].reshape(-1, 3), arr[:, :t].reshape(-1, 3),
                             arr[:, -t:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    spread = float(np.percentile(np.linalg.norm(border - bg, axis=1), 90))
    if spread > PLAIN_BORDER_SPREAD:
        return rgb.convert("RGBA")  # the border is not a plain backdrop: nothing to key out
    tol = max(24.0, 1.5 * spread + 8.0)
    candidate = np.linalg.norm(arr - bg, axis=2) <= tol
    # flood-fill on a small copy (fast), then back at full size intersected with the exact test
    scale = min(1.0, 256 / max(rgb.width, rgb.height))
    if scale < 1.0:
        small = Image.fromarray(candidate.astype(np.uint8) * 255).resize(
            (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.NEAREST)
        reach = _connected_to_border(np.asarray(small) > 127)
        reach_full = np.asarray(Image.fromarray(reach.astype(np.uint8) * 255).resize(rgb.size, Image.Resampling.NEAREST)) > 127
        background = reach_full & candidate
    else:
        background = _connected_to_border(candidate)
    if background.mean() > 1.0 - MIN_FOREGROUND:
        return rgb.convert("RGBA")  # an image of one flat colour is the product itself, not a backdrop
    alpha = Image.fromarray(np.where(background, 0, 255).astype(np.uint8))
    alpha = alpha.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.GaussianBlur(0.8))  # soft, halo-free edge
    out = rgb.convert("RGBA")
    out.putalpha(alpha)
    bbox = alpha.point(lambda a: 255 if a >= 16 else 0).getbbox()  # ignore the faint feather fringe
    return out.crop(bbox) if bbox else out


def fit_into(img: Image.Image, box: tuple[int, int, int, int], *, valign: str = "center") -> tuple[Image.Image, tuple[int, int]]:
    """``img`` scaled (keeping aspect) to the largest size inside ``box``, and its top-left position."""
    x1, y1, x2, y2 = box
    bw, bh = max(1, x2 - x1), max(1, y2 - y1)
    scale = min(bw / img.width, bh / img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    resized = img.resize((w, h), Image.Resampling.LANCZOS) if (w, h) != img.size else img
    top = {"top": y1, "bottom": y2 - h}.get(valign, y1 + (bh - h) // 2)
    return resized, (x1 + (bw - w) // 2, top)


def _rounded(canvas: Image.Image, rect: tuple[int, int, int, int], color: RGB, radius: int, alpha: int = 255) -> None:
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    ImageDraw.Draw(overlay).rounded_rectangle(rect, radius=max(0, radius), fill=(*color, alpha))
    canvas.alpha_composite(overlay)


# ---------------------------------------------------------------- ad


@dataclass
class TextReport:
    """What was drawn for one text box (for checks and tests)."""

    role: str
    level: str
    text: str
    box: tuple[int, int, int, int]
    block: tuple[int, int, int, int]
    size: int
    lines: list[str]
    color: str
    contrast: float
    switched: bool = False
    underlay: bool = False
    truncated: bool = False


@dataclass
class AdReport:
    width: int
    height: int
    product_box: tuple[int, int, int, int] | None = None
    product_rect: tuple[int, int, int, int] | None = None
    texts: list[TextReport] = field(default_factory=list)


def _level(box: Box, index_among_taglines: int) -> str:
    head = box.caption.split(":", 1)[0].strip().lower()
    if box.role == "cta":
        return "cta"
    if head in ("headline", "sub"):
        return head
    return "headline" if index_among_taglines == 0 else "sub"


def _text_for(level: str, box: Box, taglines: list[Tagline]) -> str:
    same = [t.text for t in taglines if t.level == level]
    if same:
        return same[0]
    return box.caption.split(":", 1)[1].strip() if ":" in box.caption else box.caption


def _styles_for(boxes: list[Box], styles: list[TextStyle]) -> list[TextStyle | None]:
    """Text styles pair with text boxes in order (the planner writes one per text box); by role otherwise."""
    if len(styles) == len(boxes) and all(s.box_role == b.role for s, b in zip(styles, boxes, strict=True)):
        return list(styles)
    pool = list(styles)
    out: list[TextStyle | None] = []
    for b in boxes:
        s = next((s for s in pool if s.box_role == b.role), None)
        if s is not None:
            pool.remove(s)
        out.append(s)
    return out


def _choose_text_colour(planned: str, image: Image.Image, palette: list[str]) -> tuple[str, float, bool]:
    region = background_extremes(image)
    c = min_contrast(planned, region)
    if c >= WCAG_AA:
        return planned.upper(), c, False
    for x in palette:  # brand colours first, in palette order
        cx = min_contrast(x, region)
        if cx >= WCAG_AA:
            return x.upper(), cx, True
    best = max(((min_contrast(x, region), x) for x in _candidates(palette)), key=lambda t: t[0])
    return best[1], best[0], True


def _draw_text(canvas: Image.Image, box: Box, text: str, level: str, style: TextStyle | None, brand: dict[str, Any],
               report: AdReport, max_size: int | None = None) -> None:
    W, H = canvas.size
    x1, y1, x2, y2 = box.to_pixels(W, H)
    palette = [str(c) for c in brand.get("palette") or ["#1F2937", "#F9FAFB"]]
    family = (style.font if style else None) or brand.get("font")
    draw = ImageDraw.Draw(canvas)
    if level == "cta":
        fill = (style.underlay_color if style and style.underlay_color else palette[0]).upper()
        color = (style.color if style else "#FFFFFF").upper()
        switched = False
        if contrast_ratio(color, fill) < WCAG_AA:
            color = max(_candidates(palette), key=lambda c: contrast_ratio(c, fill))
            switched = True
        bh = y2 - y1
        _rounded(canvas, (x1, y1, x2 - 1, y2 - 1), hex_to_rgb(fill), radius=bh // 2)
        pad_x, pad_y = max(2, round(bh * 0.35)), max(1, round(bh * 0.18))
        inner = (x1 + pad_x, y1 + pad_y, x2 - pad_x, y2 - pad_y)
        fit = fit_text(text, inner[2] - inner[0], inner[3] - inner[1], bold=True, family=family, min_size=6)
        block = draw_text_block(ImageDraw.Draw(canvas), fit, inner, color, align="center")
        report.texts.append(TextReport("cta", level, text, (x1, y1, x2, y2), block, fit.size, fit.lines, color,
                                       contrast_ratio(color, fill), switched, True, fit.truncated))
        return
    pad = max(1, round(0.04 * min(x2 - x1, y2 - y1)))
    inner = (x1 + pad, y1 + pad, x2 - pad, y2 - pad)
    align = style.align if style else "center"
    fit = fit_text(text, inner[2] - inner[0], inner[3] - inner[1], bold=(level == "headline"), family=family, min_size=6,
                   max_size=max_size)
    # where the block will land, to test the pixels really under the text
    probe = draw_text_block(ImageDraw.Draw(Image.new("RGB", (1, 1))), fit, inner, "#000000", align=align)
    region = canvas.convert("RGB").crop(probe)
    planned = style.color if style else palette[0]
    color, contrast, switched = _choose_text_colour(planned, region, palette)
    underlay = False
    if contrast < WCAG_AA:
        # no colour reads on this background: an opaque underlay behind the block
        wanted = [style.underlay_color] if style and style.underlay_color else []
        options = [c.upper() for c in [*wanted, *palette, "#000000", "#FFFFFF"]]
        under = next((u for u in options if contrast_ratio(planned, u) >= WCAG_AA),
                     max(options, key=lambda u: contrast_ratio(planned, u)))  # brand colours first
        color = planned.upper() if contrast_ratio(planned, under) >= WCAG_AA else max(
            _candidates(palette), key=lambda c: contrast_ratio(c, under))
        m = max(2, pad // 2 + fit.size // 6)
        rect = (max(0, probe[0] - m), max(0, probe[1] - m), min(W, probe[2] + m), min(H, probe[3] + m))
        _rounded(canvas, rect, hex_to_rgb(under), radius=max(2, fit.size // 4))
        contrast, switched, underlay = contrast_ratio(color, under), color != planned.upper(), True
    block = draw_text_block(draw, fit, inner, color, align=align)
    report.texts.append(TextReport("tagline", level, text, (x1, y1, x2, y2), block, fit.size, fit.lines, color, contrast,
                                   switched, underlay, fit.truncated))


def compose_ad_with_report(*, background: Image.Image, product: Image.Image | None, variant: AdVariant,
                           taglines: list[Tagline], brand: dict[str, Any],
                           logo: Image.Image | None = None) -> tuple[Image.Image, AdReport]:
    """:func:`compose_ad` plus a report of every text box (size, lines, colour, contrast, underlay)."""
    W, H = variant.target.w, variant.target.h
    canvas = cover(background.convert("RGB"), W, H).convert("RGBA")
    report = AdReport(width=W, height=H)
    boxes = sorted(variant.layout.boxes, key=lambda b: b.z)  # stable: equal z keeps plan order

    for b in boxes:
        if b.role == "product" and product is not None:
            rect = b.to_pixels(W, H)
            img, (px, py) = fit_into(cutout(product), rect, valign="bottom")
            canvas.alpha_composite(img, (px, py))
            report.product_box, report.product_rect = rect, (px, py, px + img.width, py + img.height)
    text_styles = [s for s in variant.text_styles if s.box_role in ("tagline", "cta")]
    under_color = next((s.underlay_color for s in text_styles if s.box_role == "tagline" and s.underlay_color), None)
    for b in boxes:
        if b.role == "underlay" and under_color:
            x1, y1, x2, y2 = b.to_pixels(W, H)
            _rounded(canvas, (x1, y1, x2 - 1, y2 - 1), hex_to_rgb(under_color), radius=round(0.04 * min(x2 - x1, y2 - y1)))
    text_boxes = [b for b in variant.layout.boxes if b.role in ("tagline", "cta")]
    n_tag = 0
    for b, style in zip(text_boxes, _styles_for(text_boxes, text_styles), strict=True):
        level = _level(b, n_tag)
        n_tag += b.role == "tagline"
        text = _text_for(level, b, taglines)
        headline = next((t.size for t in report.texts if t.level == "headline"), None)
        # hierarchy: a sub line never outgrows the headline drawn before it
        cap = max(6, round(0.75 * headline)) if level == "sub" and headline else None
        if text.strip():
            _draw_text(canvas, b, text, level, style, brand, report, max_size=cap)
    for b in boxes:
        if b.role == "logo" and logo is not None:
            img, pos = fit_into(cutout(logo), b.to_pixels(W, H))
            canvas.alpha_composite(img, pos)
    return canvas.convert("RGB"), report


def compose_ad(*, background: Image.Image, product: Image.Image | None, variant: AdVariant, taglines: list[Tagline],
               brand: dict[str, Any], logo: Image.Image | None = None) -> Image.Image:
    """The finished ad at exactly the variant's target size (RGB)."""
    return compose_ad_with_report(background=background, product=product, variant=variant, taglines=taglines,
                                  brand=brand, logo=logo)[0]
