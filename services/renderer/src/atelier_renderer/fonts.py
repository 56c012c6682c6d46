"""Font lookup: the brand's font when installed, a script-capable font for the text, DejaVu, else Pillow's default."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
DEJAVU_DIR = Path("/usr/share/fonts/truetype/dejavu")
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# scripts DejaVu does not cover, and the Noto family that does (Debian fonts-noto-core / -cjk)
_SCRIPT_FONTS: list[tuple[re.Pattern[str], tuple[str, ...]]] = [
    (re.compile(r"[\u0900-\u097F]"), ("NotoSansDevanagari", "Lohit-Devanagari", "gargi")),
    (re.compile(r"[\u0B80-\u0BFF]"), ("NotoSansTamil", "Lohit-Tamil")),
    (re.compile(r"[\u0D00-\u0D7F]"), ("NotoSansMalayalam", "Lohit-Malayalam")),
    (re.compile(r"[\u0A00-\u0A7F]"), ("NotoSansGurmukhi", "Lohit-Gurmukhi")),
    (re.compile(r"[\u3040-\u30FF\u4E00-\u9FFF]"), ("NotoSansCJK", "NotoSansJP", "NotoSerifCJK")),
]


@lru_cache(maxsize=1)
def _installed() -> tuple[Path, ...]:
    found: list[Path] = []
    for d in FONT_DIRS:
        if d.is_dir():
            found.extend(p for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf", ".ttc"))
    return tuple(sorted(found))


def _find(stem_prefix: str, bold: bool) -> Path | None:
    want = stem_prefix.lower().replace(" ", "")
    matches = [p for p in _installed() if p.stem.lower().replace(" ", "").replace("-", "").startswith(want.replace("-", ""))]
    if not matches:
        return None
    style = [p for p in matches if ("bold" in p.stem.lower()) == bold and "italic" not in p.stem.lower()
             and "oblique" not in p.stem.lower()]
    regular = [p for p in style if p.stem.lower().endswith(("regular", "bold")) or "-" not in p.stem]
    return (regular or style or matches)[0]


def font_path(text: str = "", *, bold: bool = False, family: str | None = None) -> Path | None:
    """Best font file for ``text``: brand family if installed, a font for the text's script, else DejaVu Sans."""
    for pattern, families in _SCRIPT_FONTS:
        if pattern.search(text):
            for fam in families:
                p = _find(fam, bold) or _find(fam, False)
                if p is not None:
                    return p
            break
    if family:
        p = _find(family, bold)
        if p is not None:
            return p
    dejavu = DEJAVU_DIR / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    return dejavu if dejavu.is_file() else None


@lru_cache(maxsize=256)
def _load(path: str | None, size: int) -> Font:
    if path is not None:
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def load_font(size: int, *, text: str = "", bold: bool = False, family: str | None = None) -> Font:
    """A font of ``size`` px for ``text`` (cached); Pillow's default font when no file is found."""
    p = font_path(text, bold=bold, family=family)
    return _load(str(p) if p else None, max(1, int(size)))
