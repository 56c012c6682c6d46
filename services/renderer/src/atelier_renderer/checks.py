"""Checks on every rendered ad: OCR of each text box, contrast, canvas and safe-zone containment.

OCR is Tesseract (the ``tesseract`` command, Debian ``tesseract-ocr`` + language packs). Each text
block is cut out, turned into dark text on white by its known text colour, scaled to a size Tesseract
reads best, and read with the language pack of the text's script. The score is the character error
rate (Levenshtein distance / length of the intended text) after Unicode NFC, with zero-width joiners
removed (Tesseract drops U+200C in Tamil) and whitespace ignored (line breaks are layout, not text).
A script with no installed pack, or no ``tesseract`` at all, gives a skipped gate (``passed: null``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import unicodedata
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from atelier_runtime.images import png_bytes
from PIL import Image

from .compose import WCAG_AA, AdReport, TextReport, hex_to_rgb
from .fonts import detect_script

OCR_MAX_CER = 0.05
OCR_TIMEOUT_S = 30.0
# script → Tesseract language pack
OCR_LANGS = {"latin": "eng", "devanagari": "hin", "tamil": "tam", "arabic": "ara", "cjk": "jpn", "hebrew": "heb",
             "bengali": "ben", "gujarati": "guj", "gurmukhi": "pan", "telugu": "tel", "kannada": "kan",
             "malayalam": "mal", "thai": "tha"}
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
# CJK characters whose glyphs are the same shape in Noto Sans CJK (kanji vs katakana look-alikes); OCR cannot
# tell them apart from pixels, so both sides are folded before counting errors
_CJK_LOOKALIKES = str.maketrans({"ー": "一", "ロ": "口", "エ": "工", "カ": "力", "タ": "夕", "ニ": "二", "ハ": "八",
                                 "ト": "卜", "〇": "○"})


@dataclass
class Gate:
    """One check's result, as stored in the render artifact's ``meta.gates``."""

    name: str
    score: float | None
    passed: bool | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- OCR


@lru_cache(maxsize=1)
def tesseract_path() -> str | None:
    return shutil.which("tesseract")


@lru_cache(maxsize=1)
def ocr_languages() -> frozenset[str]:
    """Installed Tesseract language packs (empty when Tesseract is missing)."""
    exe = tesseract_path()
    if exe is None:
        return frozenset()
    try:
        out = subprocess.run([exe, "--list-langs"], capture_output=True, text=True, timeout=OCR_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(line.strip() for line in out.stdout.splitlines()[1:] if line.strip())


def ocr_language_for(text: str) -> str | None:
    """The installed Tesseract pack for the script of ``text``, or None."""
    lang = OCR_LANGS.get(detect_script(text))
    return lang if lang in ocr_languages() else None


def ocr(image: Image.Image, lang: str, *, single_line: bool = False) -> str:
    """Text Tesseract reads in ``image`` with the ``lang`` pack."""
    exe = tesseract_path()
    if exe is None:
        raise RuntimeError("tesseract is not installed (Debian package tesseract-ocr)")
    env = dict(os.environ, OMP_THREAD_LIMIT="1")  # one thread: the renderer shares the machine
    out = subprocess.run([exe, "stdin", "stdout", "-l", lang, "--psm", "7" if single_line else "6"], input=png_bytes(image),
                         capture_output=True, timeout=OCR_TIMEOUT_S, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"tesseract failed: {out.stderr.decode(errors='replace')[-300:]}")
    return out.stdout.decode("utf-8", errors="replace").strip()


def text_mask(region: Image.Image, color: str, *, ground: str | None = None) -> Image.Image:
    """Dark text on white: each pixel's distance to the text colour, relative to the ground's distance."""
    arr = np.asarray(region.convert("RGB"), dtype=np.float64)
    ink = np.array(hex_to_rgb(color), dtype=np.float64)
    dist = np.linalg.norm(arr - ink, axis=2)
    if ground is not None:
        far = float(np.linalg.norm(np.array(hex_to_rgb(ground), dtype=np.float64) - ink))
    else:
        far = float(np.percentile(dist, 90))
    far = max(far, 24.0)
    grey = np.clip(dist / (0.6 * far), 0.0, 1.0) * 255.0
    return Image.fromarray(grey.astype(np.uint8), "L")


def ocr_crop(canvas: Image.Image, t: TextReport, *, target_px: int = 56) -> Image.Image:
    """The text block of ``t`` as a clean, padded, resized greyscale image for Tesseract."""
    W, H = canvas.size
    m = max(2, t.size // 5)
    x1, y1, x2, y2 = t.block
    rect = (max(0, x1 - m), max(0, y1 - m), min(W, x2 + m), min(H, y2 + m))
    mask = text_mask(canvas.crop(rect), t.color, ground=t.ground)
    scale = min(4.0, max(0.3, target_px / max(1, t.size)))
    if abs(scale - 1.0) > 0.05:
        mask = mask.resize((max(1, round(mask.width * scale)), max(1, round(mask.height * scale))),
                           Image.Resampling.LANCZOS)
    pad = 24
    out = Image.new("L", (mask.width + 2 * pad, mask.height + 2 * pad), 255)
    out.paste(mask, (pad, pad))
    return out


def normalize_for_cer(text: str) -> str:
    """NFC, zero-width characters and the ellipsis dropped, whitespace removed (line breaks are layout),
    CJK look-alikes folded."""
    s = unicodedata.normalize("NFC", text).translate(_ZERO_WIDTH).replace("…", "")
    if detect_script(s) == "cjk":
        s = s.translate(_CJK_LOOKALIKES)
    return "".join(s.split())


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate of ``hypothesis`` against ``reference`` (both normalised)."""
    ref, hyp = normalize_for_cer(reference), normalize_for_cer(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return levenshtein(ref, hyp) / len(ref)


def drawn_text(t: TextReport) -> str:
    """What was actually drawn (the lines, without the ellipsis of a truncated block)."""
    return " ".join(t.lines).replace("…", "")


def ocr_gate(canvas: Image.Image, t: TextReport, *, max_cer: float = OCR_MAX_CER) -> Gate:
    name = f"ocr.{t.level}"
    intended = drawn_text(t)
    lang = ocr_language_for(intended)
    if lang is None:
        script = detect_script(intended)
        why = "tesseract is not installed" if tesseract_path() is None else f"no Tesseract pack for {script}"
        return Gate(name, None, None, f"skipped: {why}")
    try:
        read = ocr(ocr_crop(canvas, t), lang, single_line=len(t.lines) == 1)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return Gate(name, None, None, f"skipped: {exc}")
    score = cer(intended, read)
    return Gate(name, round(score, 4), score <= max_cer, f"cer {score:.3f} (max {max_cer}) lang={lang} read={read!r}")


# ---------------------------------------------------------------- geometry and contrast


def _inside_fraction(rect: tuple[int, int, int, int], area: tuple[int, int, int, int]) -> float:
    x1, y1, x2, y2 = rect
    total = max(1, (x2 - x1) * (y2 - y1))
    w = max(0, min(x2, area[2]) - max(x1, area[0]))
    h = max(0, min(y2, area[3]) - max(y1, area[1]))
    return w * h / total


def check_ad(canvas: Image.Image, report: AdReport, *, ocr_enabled: bool = True,
             max_cer: float = OCR_MAX_CER) -> list[Gate]:
    """Every gate of one rendered ad: per text box OCR and contrast, then canvas and safe-zone containment."""
    gates: list[Gate] = []
    for t in report.texts:
        if ocr_enabled:
            gates.append(ocr_gate(canvas, t, max_cer=max_cer))
        gates.append(Gate(f"contrast.{t.level}", round(t.contrast, 2), t.contrast >= WCAG_AA,
                          f"{t.color} on {t.ground or 'backdrop'}: {t.contrast:.2f}:1 (min {WCAG_AA}:1)"
                          + (", underlay added" if t.underlay and t.level != "cta" else "")
                          + (", colour switched" if t.switched else "")))
    rects = [(t.level, t.box if t.level == "cta" else t.block) for t in report.texts]
    canvas_rect = (0, 0, report.width, report.height)
    inside = min((_inside_fraction(r, canvas_rect) for _, r in rects), default=1.0)
    gates.append(Gate("inside_canvas", round(inside, 4), inside >= 1.0,
                      "every text block lies inside the canvas" if inside >= 1.0 else
                      "text outside the canvas: " + ", ".join(lv for lv, r in rects
                                                              if _inside_fraction(r, canvas_rect) < 1.0)))
    safe = min((_inside_fraction(r, report.safe_zone) for _, r in rects), default=1.0)
    gates.append(Gate("safe_zone", round(safe, 4), safe >= 1.0,
                      f"safe zone {list(report.safe_zone)}: " + ("all text inside" if safe >= 1.0 else
                      "outside: " + ", ".join(lv for lv, r in rects if _inside_fraction(r, report.safe_zone) < 1.0))))
    truncated = [t.level for t in report.texts if t.truncated]
    gates.append(Gate("text_complete", 0.0 if truncated else 1.0, not truncated,
                      "every text drawn in full" if not truncated else
                      f"shortened with an ellipsis to fit: {', '.join(truncated)}"))
    return gates
