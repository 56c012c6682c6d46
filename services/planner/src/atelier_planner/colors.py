"""WCAG 2.x colour contrast and palette helpers (text colour must reach 4.5:1)."""

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


def _channel(c: int) -> float:
    s = c / 255.0
    return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4


def relative_luminance(rgb: RGB) -> float:
    r, g, b = rgb
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast_ratio(a: RGB | str, b: RGB | str) -> float:
    """WCAG contrast ratio of two colours (1.0 .. 21.0)."""
    ra = hex_to_rgb(a) if isinstance(a, str) else a
    rb = hex_to_rgb(b) if isinstance(b, str) else b
    la, lb = relative_luminance(ra), relative_luminance(rb)
    hi, lo = max(la, lb), min(la, lb)
    return (hi + 0.05) / (lo + 0.05)


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


_NAMED: list[tuple[str, RGB]] = [
    ("black", (20, 20, 20)), ("charcoal", (54, 54, 60)), ("slate grey", (100, 110, 125)), ("silver", (192, 192, 192)),
    ("white", (250, 250, 250)), ("cream", (245, 235, 210)), ("beige", (220, 200, 170)), ("sand", (200, 170, 120)),
    ("tan", (170, 130, 90)), ("brown", (110, 70, 40)), ("burgundy", (128, 20, 40)), ("red", (210, 40, 40)),
    ("coral", (250, 120, 100)), ("pink", (240, 160, 190)), ("orange", (240, 130, 30)), ("gold", (215, 170, 50)),
    ("yellow", (245, 215, 60)), ("olive", (120, 120, 40)), ("sage green", (150, 175, 140)), ("green", (40, 150, 70)),
    ("forest green", (30, 80, 45)), ("teal", (20, 130, 130)), ("mint", (170, 230, 200)), ("sky blue", (120, 190, 235)),
    ("blue", (40, 90, 200)), ("navy", (20, 35, 80)), ("lavender", (190, 170, 230)), ("purple", (110, 50, 150)),
]


def color_name(value: str) -> str:
    """Nearest plain colour name for a hex colour (for prompts: 'navy', 'coral', ...)."""
    r, g, b = hex_to_rgb(value)
    return min(_NAMED, key=lambda nc: (nc[1][0] - r) ** 2 * 0.3 + (nc[1][1] - g) ** 2 * 0.59 + (nc[1][2] - b) ** 2 * 0.11)[0]


def palette_mood(palette: list[str]) -> list[str]:
    """A few style words from a palette: light/dark, warm/cool, muted/vibrant."""
    rgbs = [hex_to_rgb(c) for c in palette]
    lum = sum(relative_luminance(c) for c in rgbs) / len(rgbs)
    sat = sum((max(c) - min(c)) / 255.0 for c in rgbs) / len(rgbs)
    warm = sum(c[0] - c[2] for c in rgbs) / len(rgbs)
    words = ["airy bright" if lum > 0.5 else "moody low-key" if lum < 0.12 else "balanced"]
    words.append("vibrant" if sat > 0.45 else "muted" if sat < 0.15 else "soft")
    words.append("warm" if warm > 25 else "cool" if warm < -25 else "neutral")
    return words
