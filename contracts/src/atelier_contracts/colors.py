"""Colour maths every service agrees on: ``#RRGGBB`` parsing and WCAG 2.x contrast (text must reach 4.5:1).

The planner picks text and underlay colours with it; the renderer checks what it drew against the pixels
under the text with the same formula, so a plan that passes here passes there.
"""

from __future__ import annotations

WCAG_AA = 4.5
RGB = tuple[int, int, int]


def hex_to_rgb(value: str) -> RGB:
    v = value.lstrip("#")
    if len(v) != 6:
        raise ValueError(f"colour {value!r} is not #RRGGBB")
    return int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16)


def rgb_to_hex(rgb: RGB) -> str:
    return "#{:02X}{:02X}{:02X}".format(*rgb)


def channel_luminance(c: float) -> float:
    """One sRGB channel (0..255) linearised, as WCAG defines it."""
    s = c / 255.0
    return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4


def relative_luminance(rgb: RGB) -> float:
    r, g, b = rgb
    return 0.2126 * channel_luminance(r) + 0.7152 * channel_luminance(g) + 0.0722 * channel_luminance(b)


def luminance_contrast(l1: float, l2: float) -> float:
    """WCAG contrast ratio of two relative luminances (1.0 .. 21.0)."""
    hi, lo = max(l1, l2), min(l1, l2)
    return (hi + 0.05) / (lo + 0.05)


def contrast_ratio(a: RGB | str, b: RGB | str) -> float:
    """WCAG contrast ratio of two colours (1.0 .. 21.0)."""
    ra = hex_to_rgb(a) if isinstance(a, str) else a
    rb = hex_to_rgb(b) if isinstance(b, str) else b
    return luminance_contrast(relative_luminance(ra), relative_luminance(rb))


def black_or_white(bg: str) -> str:
    """Near-black or white, whichever reads better on ``bg``; pure black where near-black falls short.

    max(contrast(black, c), contrast(white, c)) >= 4.58 for every colour c, so this always passes AA."""
    light = "#FFFFFF"
    for dark in ("#111111", "#000000"):
        if contrast_ratio(dark, bg) >= max(WCAG_AA, contrast_ratio(light, bg)):
            return dark
    return light if contrast_ratio(light, bg) >= contrast_ratio("#000000", bg) else "#000000"


def first_passing(palette: list[str], bg: str, minimum: float = WCAG_AA) -> str | None:
    """The first palette colour (brand priority order) with contrast >= ``minimum`` against ``bg``."""
    for c in palette:
        if contrast_ratio(c, bg) >= minimum:
            return c
    return None


def best_pair(palette: list[str], minimum: float = WCAG_AA) -> tuple[str, str] | None:
    """(underlay, text) from the palette with the highest contrast, if it reaches ``minimum``."""
    best: tuple[float, str, str] | None = None
    for u in palette:
        for t in palette:
            if u == t:
                continue
            c = contrast_ratio(u, t)
            if best is None or c > best[0]:
                best = (c, u, t)
    if best is None or best[0] < minimum:
        return None
    return best[1], best[2]
