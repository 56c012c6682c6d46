"""Colour words for prompts: plain colour names and the mood of a palette (contrast maths: atelier_contracts.colors)."""

from __future__ import annotations

from atelier_contracts.colors import RGB, hex_to_rgb, relative_luminance

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
