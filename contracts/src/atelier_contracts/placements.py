"""Ad placements: the standard sizes a campaign may name, with their safe-zone channel and minimum text size.

A campaign's ``sizes`` take ``WIDTHxHEIGHT`` or a placement name (``iab-medium-rectangle``, ``social-story``);
a name is stored as its ``WxH`` so items, artifacts and the manifest read the same either way. Every size,
named or not, has a :class:`Placement`: the named ones name their safe-zone channel (the planner's
``data/safe_zones.json`` holds the margins: a story keeps the top 14% and bottom 20% clear of the app's own
interface, a skyscraper only a thin border) and a minimum text height; a free ``WxH`` leaves the channel to the
planner's aspect-ratio rules.

What is refused at submit (a 422 naming ``sizes[i]``): an unknown name, a side outside
[``MIN_SIDE``, ``MAX_SIDE``], fewer than ``MIN_AREA`` pixels, or an aspect ratio beyond ``MAX_ASPECT`` — a
canvas where a tagline at the minimum text height cannot be set legibly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SIZE_RE = re.compile(r"^(\d{2,4})x(\d{2,4})$")
MIN_SIDE, MAX_SIDE = 32, 4096
# 234x60 (IAB half banner, 14,040 px) is the smallest standard display unit we render; 120x60 buttons and 88x31
# micro bars carry a logo, not a tagline
MIN_AREA = 12_000
MAX_ASPECT = 12.0  # 970x90 (super leaderboard) is 10.8:1
# text lower than this many pixels is not set (IAB's display guidance: no text under ~10 px)
DISPLAY_MIN_TEXT_PX = 10
SOCIAL_MIN_TEXT_PX = 28  # 1080-wide feeds are viewed at ~1/3 scale on a phone: ~9-10 CSS px


@dataclass(frozen=True)
class Placement:
    """One ad placement. ``channel``: its rule in the planner's safe zones (None: chosen by aspect ratio);
    ``max_bytes``: the platform's usual file-size cap (None: no cap)."""

    name: str | None
    width: int
    height: int
    family: str  # "iab" (display), "social", or "custom"
    channel: str | None
    min_text_px: int
    max_bytes: int | None = None

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"



_IAB_CAP = 150_000  # IAB's initial-load guidance for display units
_IAB = "display"  # a thin border: nothing of a publisher's page covers a display unit
_BANNER = "banner"  # leaderboards: 4:1 and wider
_FEED = "title-safe"
_STORY = "vertical-fullscreen"  # the app's header and reply bar cover the top ~250 px and bottom ~340 px

_NAMED = (
    Placement("iab-medium-rectangle", 300, 250, "iab", _IAB, DISPLAY_MIN_TEXT_PX, _IAB_CAP),
    Placement("iab-leaderboard", 728, 90, "iab", _BANNER, DISPLAY_MIN_TEXT_PX, _IAB_CAP),
    Placement("iab-mobile-leaderboard", 320, 50, "iab", _BANNER, DISPLAY_MIN_TEXT_PX, _IAB_CAP),
    Placement("iab-wide-skyscraper", 160, 600, "iab", _IAB, DISPLAY_MIN_TEXT_PX, _IAB_CAP),
    Placement("iab-half-page", 300, 600, "iab", _IAB, DISPLAY_MIN_TEXT_PX, _IAB_CAP),
    Placement("iab-billboard", 970, 250, "iab", _IAB, DISPLAY_MIN_TEXT_PX, _IAB_CAP),
    Placement("iab-large-mobile-banner", 320, 100, "iab", _IAB, DISPLAY_MIN_TEXT_PX, _IAB_CAP),
    Placement("social-square", 1080, 1080, "social", _FEED, SOCIAL_MIN_TEXT_PX),
    Placement("social-portrait", 1080, 1350, "social", _FEED, SOCIAL_MIN_TEXT_PX),
    Placement("social-story", 1080, 1920, "social", _STORY, SOCIAL_MIN_TEXT_PX),
    Placement("social-link", 1200, 628, "social", _FEED, SOCIAL_MIN_TEXT_PX),
    Placement("social-landscape", 1600, 900, "social", _FEED, SOCIAL_MIN_TEXT_PX),
)
PLACEMENTS: dict[str, Placement] = {p.name: p for p in _NAMED if p.name}
# names people use for the same units
ALIASES: dict[str, str] = {
    "medium-rectangle": "iab-medium-rectangle", "mrec": "iab-medium-rectangle", "leaderboard": "iab-leaderboard",
    "mobile-leaderboard": "iab-mobile-leaderboard", "mobile-banner": "iab-mobile-leaderboard",
    "wide-skyscraper": "iab-wide-skyscraper", "skyscraper": "iab-wide-skyscraper", "half-page": "iab-half-page",
    "billboard": "iab-billboard", "large-mobile-banner": "iab-large-mobile-banner",
    "instagram-square": "social-square", "instagram-portrait": "social-portrait", "instagram-story": "social-story",
    "tiktok": "social-story", "reels": "social-story", "facebook-link": "social-link", "linkedin-link": "social-link",
    "og-image": "social-link", "x-post": "social-landscape", "youtube-thumbnail": "social-landscape",
}
_BY_SIZE: dict[str, Placement] = {p.size: p for p in _NAMED}


def names() -> list[str]:
    """Every accepted placement name (canonical names first, then aliases)."""
    return [*PLACEMENTS, *ALIASES]


def parse_size(value: str) -> tuple[int, int]:
    """``"1080x1920"`` → ``(1080, 1920)``; a ValueError saying why for anything else (names are not sizes here)."""
    m = SIZE_RE.match(value)
    if not m:
        raise ValueError(f"size {value!r} is not WIDTHxHEIGHT (e.g. '1080x1080') or a placement name "
                         f"(e.g. 'iab-medium-rectangle', 'social-story')")
    w, h = int(m.group(1)), int(m.group(2))
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise ValueError(f"size {value!r}: each side must be between {MIN_SIDE} and {MAX_SIDE} pixels")
    if w * h < MIN_AREA:
        raise ValueError(f"size {value!r} has {w * h} pixels; a tagline needs at least {MIN_AREA} to be set at "
                         f"{DISPLAY_MIN_TEXT_PX} px (234x60 is the smallest standard unit)")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise ValueError(f"size {value!r} is {max(w, h) / min(w, h):.1f}:1; at most {MAX_ASPECT:g}:1 leaves room to "
                         f"set text at {DISPLAY_MIN_TEXT_PX} px")
    return w, h


def resolve(value: str) -> str:
    """A size as given (``WxH`` or a placement name, any case) → its canonical ``WxH``; ValueError if neither."""
    key = value.strip().lower()
    name = ALIASES.get(key, key)
    if name in PLACEMENTS:
        return PLACEMENTS[name].size
    if not SIZE_RE.match(key):
        close = [n for n in names() if key and (key in n or n in key)][:4]
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known names: {', '.join(PLACEMENTS)}"
        raise ValueError(f"size {value!r} is neither WIDTHxHEIGHT nor a known placement name{hint}")
    w, h = parse_size(key)
    return f"{w}x{h}"


def placement(size: str) -> Placement:
    """The placement of a canonical ``WxH``: the named one with that size, else a custom one."""
    known = _BY_SIZE.get(size)
    if known is not None:
        return known
    w, h = parse_size(size)
    return Placement(None, w, h, "custom", None, SOCIAL_MIN_TEXT_PX if min(w, h) >= 600 else DISPLAY_MIN_TEXT_PX)
