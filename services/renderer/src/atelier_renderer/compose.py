"""PAID stage 4 on CPU: background, product cut-out, taglines, CTA and logo drawn as graphics.

Text is never left to the diffusion model. Every text box gets the largest font size that fits
(binary search over sizes, greedy word wrap); its colour must reach WCAG 4.5:1 against the pixels
actually under it (checked against the 5th and 95th luminance percentiles, so a busy background
counts as both its light and its dark parts). When the planned colour fails, another palette colour
(or black/white) is used; when none passes, an opaque rounded underlay is drawn behind the text.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from atelier_contracts.colors import (
    RGB,
    WCAG_AA,
    contrast_ratio,
    hex_to_rgb,
    luminance_contrast,
    relative_luminance,
)
from atelier_contracts.plans import AdVariant, Box, Tagline, TextStyle
from PIL import Image, ImageDraw, ImageFilter

from .fonts import Font, is_rtl, load_font

PLAIN_BORDER_SPREAD = 40.0  # 90th-percentile RGB distance of border pixels from their median
MIN_FOREGROUND = 0.01  # keying that would leave less than this share of pixels is not applied


# ---------------------------------------------------------------- colour


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
    return min(luminance_contrast(lc, dark), luminance_contrast(lc, light))


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
    """Advance-box width of ``text`` as drawn (shaped) with ``font``, in pixels."""
    if not text:
        return 0
    return _width(font, text)


@lru_cache(maxsize=65536)
def _width(font: Font, text: str) -> int:
    left, _top, right, _bottom = font.getbbox(text)
    return int(math.ceil(right - min(0, left)))


_CJK_CHAR = r"\u3000-\u30FF\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF\uFF00-\uFFEF\uAC00-\uD7AF"
_CJK_RE = re.compile(f"[{_CJK_CHAR}]")
_CJK_PIECES = re.compile(f"[{_CJK_CHAR}]|[^{_CJK_CHAR}]+")
# kinsoku: these never start a line (closing marks) / never end one (opening marks)
_NO_START = set("、。，．・：；？！ー）」』】〉》〕］｝〟’”ゝゞヽヾぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ々〜…‥,.!?)]}")
_NO_END = set("（「『【〈《〔［｛〝‘“([{")
_VIRAMAS = frozenset("\u094D\u09CD\u0A4D\u0ACD\u0B4D\u0BCD\u0C4D\u0CCD\u0D4D")


def _tokens(para: str) -> list[tuple[str, bool]]:
    """Break opportunities of a paragraph: ``(token, space_before)``. Words break at spaces; CJK text
    breaks between any two characters, except before closing and after opening punctuation."""
    out: list[tuple[str, bool]] = []
    for m in re.finditer(r"\S+", para):
        word, space = m.group(0), bool(out)
        if not _CJK_RE.search(word):
            out.append((word, space))
            continue
        pieces: list[str] = []
        for piece in _CJK_PIECES.findall(word):
            if pieces and (piece[0] in _NO_START or pieces[-1][-1] in _NO_END):
                pieces[-1] += piece
            else:
                pieces.append(piece)
        out.append((pieces[0], space))
        out.extend((p, False) for p in pieces[1:])
    return out


def _clusters(word: str) -> list[str]:
    """Rough grapheme clusters: a base character with its combining marks, joiners and virama conjuncts,
    so a forced break never splits what the shaper draws as one glyph."""
    out: list[str] = []
    for ch in word:
        joins = (unicodedata.category(ch).startswith("M") or ch in "\u200c\u200d"
                 or (out and out[-1][-1] in _VIRAMAS) or (out and out[-1][-1] in "\u200c\u200d"))
        if out and joins:
            out[-1] += ch
        else:
            out.append(ch)
    return out


def wrap_text(text: str, font: Font, max_width: int) -> list[str]:
    """Greedy line breaking to ``max_width`` px: by words, by characters in CJK text; a word wider than
    the line is broken between grapheme clusters.

    Lines are built from measured token widths (shaping happens within words, so they add up), and
    every finished line is measured whole; one that came out too wide gives its last tokens back."""
    lines: list[str] = []
    space = text_width("a a", font) - text_width("aa", font)
    for para in text.split("\n"):
        tokens = _tokens(para)
        pending: list[tuple[str, bool]] = []
        for word, sp in tokens:
            if text_width(word, font) <= max_width:
                pending.append((word, sp))
                continue
            pieces: list[str] = []
            piece = ""
            for cl in _clusters(word):  # a single word wider than the box: hard-break it
                if piece and text_width(piece + cl, font) > max_width:
                    pieces.append(piece)
                    piece = cl
                else:
                    piece += cl
            pieces.append(piece)
            pending.append((pieces[0], sp))
            pending.extend((p, False) for p in pieces[1:])
        current: list[tuple[str, bool]] = []
        width, i, n = 0, 0, len(pending)
        while True:
            if i < n:
                word, sp = pending[i]
                add = text_width(word, font) + (space if current and sp else 0)
                if not current or width + add <= max_width:
                    current.append((word, sp))
                    width += add
                    i += 1
                    continue
            if not current:
                break
            while len(current) > 1 and text_width(_join(current), font) > max_width:
                current.pop()  # the estimate was a little short: give the token back
                i -= 1
            lines.append(_join(current))
            current, width = [], 0
            if i >= n:
                break
        if not tokens:
            lines.append("")
    return lines


def _join(tokens: list[tuple[str, bool]]) -> str:
    out = ""
    for word, sp in tokens:
        out += (" " if out and sp else "") + word
    return out


def _block(lines: list[str], font: Font, spacing: float) -> tuple[int, int, int]:
    ascent, descent = _metrics(font)
    pitch = max(1, int(round((ascent + descent) * spacing)))
    height = pitch * (len(lines) - 1) + ascent + descent if lines else 0
    width = max((text_width(ln, font) for ln in lines), default=0)
    return width, height, pitch


def fit_text(text: str, box_w: int, box_h: int, *, bold: bool = False, family: str | None = None,
             min_size: int = 8, max_size: int | None = None, line_spacing: float = 1.15,
             font_file: Path | None = None) -> TextFit:
    """Largest font size (binary search) whose word-wrapped ``text`` fits ``box_w`` x ``box_h``.

    ``family`` names an installed family; ``font_file`` is the caller's own uploaded font, preferred when it
    has the glyphs (see :func:`atelier_renderer.fonts.font_path`).

    If not even ``min_size`` fits, the lines that fit are kept and the last one ends with "…"
    (``truncated=True``) — the block never overflows the box."""
    box_w, box_h = max(1, int(box_w)), max(1, int(box_h))
    text = " ".join(text.split())

    def attempt(size: int) -> tuple[bool, TextFit]:
        font = load_font(size, text=text, bold=bold, family=family, font_file=font_file)
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
        last = "".join(_clusters(last)[:-1]).rstrip()
    lines[-1] = last + "…"
    w, h, pitch = _block(lines, font, line_spacing)
    return TextFit(font, fit.size, lines, pitch, w, h, truncated=True)


def draw_text_block(draw: ImageDraw.ImageDraw, fit: TextFit, box: tuple[int, int, int, int], color: RGB | str,
                    align: str = "center", valign: str = "center") -> tuple[int, int, int, int]:
    """Draw fitted lines inside ``box``; returns the block's pixel rectangle.

    Right-to-left text (Arabic, Hebrew) mirrors the alignment: its lines start at the right edge."""
    x1, y1, x2, y2 = box
    if is_rtl(" ".join(fit.lines)):
        align = {"left": "right", "right": "left"}.get(align, align)
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
    ground: str | None = None  # the colour drawn behind the text (button or underlay), None = the backdrop
    font: str = ""


@dataclass
class AdReport:
    width: int
    height: int
    product_box: tuple[int, int, int, int] | None = None
    product_rect: tuple[int, int, int, int] | None = None
    texts: list[TextReport] = field(default_factory=list)
    backdrop: str = "generated"
    safe_zone: tuple[int, int, int, int] = (0, 0, 0, 0)


def _level(box: Box, index_among_taglines: int) -> str:
    head = box.caption.split(":", 1)[0].strip().lower()
    if box.role == "cta":
        return "cta"
    if head in ("headline", "sub"):
        return head
    return "headline" if index_among_taglines == 0 else "sub"


def _text_for(level: str, box: Box, taglines: list[Tagline], nth: int = 0) -> str:
    """The ``nth`` tagline of ``level`` (the n-th box of a level shows the n-th line), else the box caption."""
    same = [t.text for t in taglines if t.level == level]
    if nth < len(same):
        return same[nth]
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


# the channel rules of the planner's safe-zone table (atelier_planner/data/safe_zones.json), mirrored here
# because services never import each other: (name, test, left, top, right, bottom) as fractions of the canvas
SAFE_ZONES: tuple[tuple[str, Any, float, float, float, float], ...] = (
    ("vertical-fullscreen", lambda w, h: h / w >= 1.6, 0.06, 0.14, 0.08, 0.20),  # Stories, Reels, Shorts, TikTok
    ("banner", lambda w, h: w / h >= 4.0, 0.03, 0.08, 0.03, 0.08),  # leaderboards, billboards
    ("title-safe", lambda w, h: True, 0.04, 0.04, 0.04, 0.04),  # feeds, display ads, everything else
)


def safe_zone(width: int, height: int) -> tuple[int, int, int, int]:
    """The rectangle text must stay in for the channel a size is meant for.

    Full-screen vertical placements (9:16) are covered by the app's own UI: about 14% at the top (profile,
    progress bar), 20% at the bottom (caption, reply bar, call-to-action) and the side buttons; every other
    size keeps a title-safe margin."""
    for _name, test, left, top, right, bottom in SAFE_ZONES:
        if test(width, height):
            return (round(left * width), round(top * height), width - round(right * width),
                    height - round(bottom * height))
    return 0, 0, width, height


def _clamp_box(rect: tuple[int, int, int, int], safe: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """``rect`` cut to the safe zone; a box that lies (almost) outside it is moved inside instead."""
    x1, y1, x2, y2 = max(rect[0], safe[0]), max(rect[1], safe[1]), min(rect[2], safe[2]), min(rect[3], safe[3])
    w, h = rect[2] - rect[0], rect[3] - rect[1]
    if x2 - x1 < max(8, w // 3):
        x1 = min(max(rect[0], safe[0]), safe[2] - w)
        x2 = min(safe[2], x1 + w)
    if y2 - y1 < max(8, h // 3):
        y1 = min(max(rect[1], safe[1]), safe[3] - h)
        y2 = min(safe[3], y1 + h)
    return x1, y1, x2, y2


def _draw_text(canvas: Image.Image, rect: tuple[int, int, int, int], text: str, level: str, style: TextStyle | None,
               brand: dict[str, Any], report: AdReport, max_size: int | None = None,
               font_file: Path | None = None, min_size: int = 6) -> None:
    W, H = canvas.size
    x1, y1, x2, y2 = rect
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
        fit = fit_text(text, inner[2] - inner[0], inner[3] - inner[1], bold=True, family=family, min_size=min_size,
                       font_file=font_file)
        block = draw_text_block(ImageDraw.Draw(canvas), fit, inner, color, align="center")
        report.texts.append(TextReport("cta", level, text, (x1, y1, x2, y2), block, fit.size, fit.lines, color,
                                       contrast_ratio(color, fill), switched, True, fit.truncated, fill,
                                       font=_font_name(fit)))
        return
    pad = max(1, round(0.04 * min(x2 - x1, y2 - y1)))
    inner = (x1 + pad, y1 + pad, x2 - pad, y2 - pad)
    align = style.align if style else "center"
    fit = fit_text(text, inner[2] - inner[0], inner[3] - inner[1], bold=(level == "headline"), family=family,
                   min_size=min_size, max_size=max(min_size, max_size) if max_size else None, font_file=font_file)
    # where the block will land, to test the pixels really under the text
    probe = draw_text_block(ImageDraw.Draw(Image.new("RGB", (1, 1))), fit, inner, "#000000", align=align)
    region = canvas.convert("RGB").crop(probe)
    planned = style.color if style else palette[0]
    color, contrast, switched = _choose_text_colour(planned, region, palette)
    underlay = False
    under_hex: str | None = None
    if contrast < WCAG_AA:
        # no colour reads on this background: an opaque underlay behind the block
        wanted = [style.underlay_color] if style and style.underlay_color else []
        options = [c.upper() for c in [*wanted, *palette, "#000000", "#FFFFFF"]]
        under = next((u for u in options if contrast_ratio(planned, u) >= WCAG_AA),
                     max(options, key=lambda u: contrast_ratio(planned, u)))  # brand colours first
        color = planned.upper() if contrast_ratio(planned, under) >= WCAG_AA else max(
            _candidates(palette), key=lambda c: contrast_ratio(c, under))
        m = max(2, pad // 2 + fit.size // 6)
        rect_u = (max(0, probe[0] - m), max(0, probe[1] - m), min(W, probe[2] + m), min(H, probe[3] + m))
        _rounded(canvas, rect_u, hex_to_rgb(under), radius=max(2, fit.size // 4))
        contrast, switched, underlay, under_hex = contrast_ratio(color, under), color != planned.upper(), True, under
    block = draw_text_block(draw, fit, inner, color, align=align)
    report.texts.append(TextReport("tagline", level, text, (x1, y1, x2, y2), block, fit.size, fit.lines, color, contrast,
                                   switched, underlay, fit.truncated, under_hex, font=_font_name(fit)))


def _font_name(fit: TextFit) -> str:
    return str(getattr(fit.font, "path", "") or "default").rsplit("/", 1)[-1]


# ---------------------------------------------------------------- studio backdrop


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def studio_colours(palette: list[str]) -> tuple[RGB, RGB]:
    """(wall, floor) of a studio sweep in the brand's palette: its lightest colour, kept light."""
    lightest = max((hex_to_rgb(c) for c in palette), key=relative_luminance)
    wall = _mix(lightest, (255, 255, 255), 0.25 if relative_luminance(lightest) > 0.5 else 0.8)
    floor = _mix(wall, lightest if lightest != wall else (0, 0, 0), 0.35 if lightest != wall else 0.08)
    return wall, floor


def studio_backdrop(width: int, height: int, palette: list[str], *, horizon: float = 0.72) -> Image.Image:
    """A seamless studio sweep in brand colours: a lit wall curving into the floor at ``horizon``
    (fraction of the height), with a soft vignette. Rendered on CPU; needs no GPU background."""
    wall, floor = studio_colours(palette)
    y = np.linspace(0.0, 1.0, height)[:, None]
    # smoothstep across the sweep, so there is no hard floor line
    band = 0.12
    t = np.clip((y - (horizon - band)) / (2 * band), 0.0, 1.0)
    t = t * t * (3 - 2 * t)
    wall_a, floor_a = np.array(wall, dtype=np.float64), np.array(floor, dtype=np.float64)
    light = 1.04 - 0.08 * y  # light from above
    img = ((1 - t)[..., None] * wall_a + t[..., None] * floor_a) * light[..., None]
    xs = np.linspace(-1.0, 1.0, width)[None, :]
    ys = np.linspace(-1.0, 1.0, height)[:, None]
    vignette = 1.0 - 0.10 * np.clip(xs ** 2 + 0.6 * ys ** 2, 0.0, 1.6)
    img = np.clip(img * vignette[..., None], 0, 255).astype(np.uint8)
    return Image.fromarray(np.broadcast_to(img, (height, width, 3)).copy(), "RGB")


def floor_shadow(canvas: Image.Image, product: Image.Image, pos: tuple[int, int]) -> None:
    """A soft elliptical floor shadow under a product standing at ``pos`` (its top-left)."""
    w, h = product.size
    px, py = pos
    alpha = np.asarray(product.getchannel("A")) if product.mode == "RGBA" else np.full((h, w), 255, np.uint8)
    cols = np.where(alpha[max(0, h - max(2, h // 12)):].max(axis=0) > 32)[0]
    left, right = (int(cols.min()), int(cols.max())) if cols.size else (0, w - 1)
    foot_w = max(4, right - left + 1)
    cx, base = px + (left + right) // 2, py + h
    spread = max(6.0, 0.55 * foot_w)
    overlay = Image.new("L", canvas.size, 0)
    d = ImageDraw.Draw(overlay)
    ry = max(2, round(0.09 * spread))
    d.ellipse((cx - spread, base - ry, cx + spread, base + ry), fill=110)  # wide soft penumbra
    d.ellipse((cx - 0.42 * foot_w, base - ry * 0.45, cx + 0.42 * foot_w, base + ry * 0.45), fill=170)  # contact
    overlay = overlay.filter(ImageFilter.GaussianBlur(max(2.0, 0.06 * spread)))
    shade = Image.new("RGBA", canvas.size, (20, 16, 12, 0))
    shade.putalpha(overlay)
    canvas.alpha_composite(shade)


def compose_ad_with_report(*, background: Image.Image | None, product: Image.Image | None, variant: AdVariant,
                           taglines: list[Tagline], brand: dict[str, Any], logo: Image.Image | None = None,
                           backdrop: str = "generated", font_file: Path | None = None,
                           min_text_px: int = 6) -> tuple[Image.Image, AdReport]:
    """:func:`compose_ad` plus a report of every text box (size, lines, colour, contrast, underlay).

    ``font_file`` is this ad's uploaded brand font (fetched for its job by the render stage): every text box
    is drawn in it when it has the glyphs. ``brand["font"]`` and the styles' ``font`` name installed families
    only; an uploaded font is never looked up by its family name.

    ``min_text_px``: the placement's minimum text height (``atelier_contracts.placements``); text that does not fit
    its box at that size keeps the lines that fit and ends with "…" (the report says ``truncated``) rather than
    shrinking below what the placement can show legibly.

    ``backdrop="studio"`` ignores ``background`` and draws a brand-palette studio sweep with a floor
    shadow under the product; ``"generated"`` covers the canvas with the (GPU) background."""
    W, H = variant.target.w, variant.target.h
    palette = [str(c) for c in brand.get("palette") or ["#1F2937", "#F9FAFB"]]
    boxes = sorted(variant.layout.boxes, key=lambda b: b.z)  # stable: equal z keeps plan order
    product_box = next((b for b in boxes if b.role == "product"), None)
    if backdrop == "studio" or background is None:
        horizon = product_box.bbox[3] - 0.04 if product_box is not None else 0.72
        canvas = studio_backdrop(W, H, palette, horizon=min(0.95, max(0.3, horizon))).convert("RGBA")
    else:
        canvas = cover(background.convert("RGB"), W, H).convert("RGBA")
    report = AdReport(width=W, height=H, backdrop="studio" if backdrop == "studio" or background is None else "generated",
                      safe_zone=safe_zone(W, H))

    for b in boxes:
        if b.role == "product" and product is not None:
            rect = b.to_pixels(W, H)
            img, (px, py) = fit_into(cutout(product), rect, valign="bottom")
            if report.backdrop == "studio":
                floor_shadow(canvas, img, (px, py))
            canvas.alpha_composite(img, (px, py))
            report.product_box, report.product_rect = rect, (px, py, px + img.width, py + img.height)
    text_styles = [s for s in variant.text_styles if s.box_role in ("tagline", "cta")]
    under_color = next((s.underlay_color for s in text_styles if s.box_role == "tagline" and s.underlay_color), None)
    for b in boxes:
        if b.role == "underlay" and under_color:
            x1, y1, x2, y2 = _clamp_box(b.to_pixels(W, H), report.safe_zone)
            _rounded(canvas, (x1, y1, x2 - 1, y2 - 1), hex_to_rgb(under_color), radius=round(0.04 * min(x2 - x1, y2 - y1)))
    text_boxes = [b for b in variant.layout.boxes if b.role in ("tagline", "cta")]
    n_tag = 0
    seen: dict[str, int] = {}
    for b, style in zip(text_boxes, _styles_for(text_boxes, text_styles), strict=True):
        level = _level(b, n_tag)
        n_tag += b.role == "tagline"
        text = _text_for(level, b, taglines, seen.get(level, 0))
        seen[level] = seen.get(level, 0) + 1
        headline = next((t.size for t in report.texts if t.level == "headline"), None)
        # hierarchy: a sub line never outgrows the headline drawn before it
        cap = max(6, round(0.75 * headline)) if level == "sub" and headline else None
        if text.strip():
            rect = _clamp_box(b.to_pixels(W, H), report.safe_zone)
            _draw_text(canvas, rect, text, level, style, brand, report, max_size=cap, font_file=font_file,
                       min_size=min_text_px)
    for b in boxes:
        if b.role == "logo" and logo is not None:
            img, pos = fit_into(cutout(logo), b.to_pixels(W, H))
            canvas.alpha_composite(img, pos)
    return canvas.convert("RGB"), report


def compose_ad(*, background: Image.Image | None, product: Image.Image | None, variant: AdVariant,
               taglines: list[Tagline], brand: dict[str, Any], logo: Image.Image | None = None,
               backdrop: str = "generated", font_file: Path | None = None) -> Image.Image:
    """The finished ad at exactly the variant's target size (RGB)."""
    return compose_ad_with_report(background=background, product=product, variant=variant, taglines=taglines,
                                  brand=brand, logo=logo, backdrop=backdrop, font_file=font_file)[0]
