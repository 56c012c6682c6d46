"""Font lookup per script: the brand's font when it has the glyphs, a Noto font for the script, DejaVu, else Pillow's.

Scripts are detected from the text; Devanagari, Tamil, Arabic, Hebrew, CJK and the other Indic scripts get
their Noto family (Debian ``fonts-noto-core`` / ``fonts-noto-cjk``). A brand font is used only when its
character map covers every character of the text, so a Latin-only brand font never draws tofu for a Hindi
tagline. Text is laid out by RAQM (HarfBuzz shaping, FriBiDi ordering) whenever Pillow has it.

Two kinds of brand font, kept apart on purpose:

* an **installed family** (``family="NotoSerif"``) is looked up by name among the machine's font files;
* an **uploaded font** is a file the caller fetched for *its own job* (``font_file=``, see
  :func:`atelier_renderer.brand.fetch_brand_font`). It is passed down on every call and never given a name
  here: there is no process-wide table from family names to uploaded files, so one tenant's upload can
  never answer another job's lookup of a family name (an upload called "NotoSans" does not shadow the
  installed Noto Sans for anyone).
"""

from __future__ import annotations

import io
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

from fontTools.ttLib import TTFont
from PIL import ImageFont, features

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
DEJAVU_DIR = Path("/usr/share/fonts/truetype/dejavu")
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# script name → (pattern, Noto families first, then other common families)
_SCRIPTS: list[tuple[str, re.Pattern[str], tuple[str, ...]]] = [
    ("devanagari", re.compile(r"[\u0900-\u097F\uA8E0-\uA8FF]"), ("NotoSansDevanagari", "Lohit-Devanagari", "gargi")),
    ("tamil", re.compile(r"[\u0B80-\u0BFF]"), ("NotoSansTamil-", "NotoSansTamil", "Lohit-Tamil")),
    ("bengali", re.compile(r"[\u0980-\u09FF]"), ("NotoSansBengali", "Lohit-Bengali")),
    ("gurmukhi", re.compile(r"[\u0A00-\u0A7F]"), ("NotoSansGurmukhi", "Lohit-Gurmukhi")),
    ("gujarati", re.compile(r"[\u0A80-\u0AFF]"), ("NotoSansGujarati", "Lohit-Gujarati")),
    ("telugu", re.compile(r"[\u0C00-\u0C7F]"), ("NotoSansTelugu", "Lohit-Telugu")),
    ("kannada", re.compile(r"[\u0C80-\u0CFF]"), ("NotoSansKannada", "Lohit-Kannada")),
    ("malayalam", re.compile(r"[\u0D00-\u0D7F]"), ("NotoSansMalayalam", "Lohit-Malayalam")),
    ("arabic", re.compile(r"[\u0600-\u06FF\u0750-\u077F\u08A0-\u08FF\uFB50-\uFDFF\uFE70-\uFEFF]"),
     ("NotoSansArabic", "NotoNaskhArabic", "NotoKufiArabic")),
    ("hebrew", re.compile(r"[\u0590-\u05FF\uFB1D-\uFB4F]"), ("NotoSansHebrew", "NotoSerifHebrew")),
    ("thai", re.compile(r"[\u0E00-\u0E7F]"), ("NotoSansThai", "NotoSerifThai")),
    ("cjk", re.compile(r"[\u3000-\u30FF\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF\uFF00-\uFFEF\uAC00-\uD7AF]"),
     ("NotoSansCJK", "NotoSansJP", "NotoSerifCJK")),
]
RTL_SCRIPTS = frozenset({"arabic", "hebrew"})
# characters a font need not have: joiners and marks that shaping consumes, spaces
_IGNORABLE = frozenset({0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0xFE0F, 0x2060})


def detect_script(text: str) -> str:
    """The first non-Latin script found in ``text`` (``latin`` when there is none)."""
    for name, pattern, _families in _SCRIPTS:
        if pattern.search(text):
            return name
    return "latin"


def is_rtl(text: str) -> bool:
    return detect_script(text) in RTL_SCRIPTS


def _norm(name: str) -> str:
    return name.lower().replace(" ", "").replace("-", "").replace("_", "")


@lru_cache(maxsize=1)
def _installed() -> tuple[Path, ...]:
    found: list[Path] = []
    for d in FONT_DIRS:
        if d.is_dir():
            found.extend(p for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf", ".ttc"))
    return tuple(sorted(found))


def _find(stem_prefix: str, bold: bool) -> Path | None:
    want = _norm(stem_prefix)
    exact_dash = stem_prefix.endswith("-")  # "NotoSansTamil-" must not match NotoSansTamilSupplement
    matches = [p for p in _installed() if (p.stem.lower().startswith(stem_prefix.lower()) if exact_dash
                                           else _norm(p.stem).startswith(want))]
    if not matches:
        return None
    style = [p for p in matches if ("bold" in p.stem.lower()) == bold and "italic" not in p.stem.lower()
             and "oblique" not in p.stem.lower()]
    regular = [p for p in style if p.stem.lower().endswith(("regular", "bold")) or "-" not in p.stem]
    # prefer the plain family over its UI/Display/Condensed cuts
    plain = sorted(regular or style or matches, key=lambda p: (len(p.stem), p.name))
    return plain[0]


@lru_cache(maxsize=64)
def _cmap(path: str) -> frozenset[int]:
    try:
        font = TTFont(path, fontNumber=0, lazy=True) if path.lower().endswith(".ttc") else TTFont(path, lazy=True)
        cmap = font.getBestCmap() or {}
        font.close()
        return frozenset(cmap)
    except Exception:  # noqa: BLE001 - an unreadable cmap means "unknown coverage": do not prefer the font
        return frozenset()


def covers(path: Path, text: str) -> bool:
    """True when the font file has a glyph for every character of ``text`` that needs one."""
    cmap = _cmap(str(path))
    for ch in set(text):
        cp = ord(ch)
        if ch.isspace() or cp in _IGNORABLE or unicodedata.category(ch) in ("Cc", "Cf"):
            continue
        if cp not in cmap:
            return False
    return True


def font_path(text: str = "", *, bold: bool = False, family: str | None = None,
              font_file: Path | None = None) -> Path | None:
    """Best font file for ``text``: the call's own ``font_file`` (an uploaded brand font) if it covers the text,
    else the installed ``family`` if it covers it, else a font for the text's script, else DejaVu.

    ``family`` only ever names installed fonts: an uploaded font reaches this function as ``font_file`` for the
    one call that passes it, so its family name means nothing here."""
    if font_file is not None:
        upload = Path(font_file)
        if not text or covers(upload, text):
            return upload
    if family:
        brand = _find(family, bold) or _find(family, False)
        if brand is not None and (not text or covers(brand, text)):
            return brand
    script = detect_script(text)
    for name, _pattern, families in _SCRIPTS:
        if name == script:
            for fam in families:
                p = _find(fam, bold) or _find(fam, False)
                if p is not None:
                    return p
            break
    dejavu = DEJAVU_DIR / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    return dejavu if dejavu.is_file() else None


@lru_cache(maxsize=512)
def _load(path: str | None, size: int) -> Font:
    if path is not None:
        layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
        return ImageFont.truetype(path, size, layout_engine=layout)
    return ImageFont.load_default(size)


def load_font(size: int, *, text: str = "", bold: bool = False, family: str | None = None,
              font_file: Path | None = None) -> Font:
    """A font of ``size`` px for ``text`` (cached by file path and size); Pillow's default font when no file is
    found. ``family`` and ``font_file`` as in :func:`font_path`."""
    p = font_path(text, bold=bold, family=family, font_file=font_file)
    return _load(str(p) if p else None, max(1, int(size)))


def font_from_bytes(data: bytes, size: int) -> ImageFont.FreeTypeFont:
    """Open font bytes (TTF/OTF) with FreeType; raises OSError when they are not a font."""
    return ImageFont.truetype(io.BytesIO(data), size)
