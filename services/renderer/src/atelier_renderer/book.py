"""The storybook as documents: a PDF with embedded fonts and a self-contained HTML file.

Both have a cover (the first illustration and the title) and one page per scene: the illustration, the
narration as real text in the story's language and script, and the page number. The PDF is written
with fpdf2: its fonts are the Noto (or brand) TrueType/OpenType files, embedded as subsets, and its text
is shaped by HarfBuzz (uharfbuzz) with bidirectional ordering, so Devanagari, Tamil, Arabic and Hebrew
come out joined and ordered, and the text can be searched and copied. The HTML file inlines its images
(data URIs), sets ``lang`` and ``dir``, and names the Noto family for the script.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fpdf import FPDF
from PIL import Image

from .fonts import detect_script, font_path, is_rtl

PDF_PAGE_PT = (576.0, 720.0)  # 8 x 10 in, the 4:5 of the rendered pages
MARGIN_PT = 36.0
_CSS_FAMILIES = {"devanagari": "Noto Sans Devanagari", "tamil": "Noto Sans Tamil", "arabic": "Noto Sans Arabic",
                 "hebrew": "Noto Sans Hebrew", "cjk": "Noto Sans CJK JP", "bengali": "Noto Sans Bengali",
                 "malayalam": "Noto Sans Malayalam", "telugu": "Noto Sans Telugu", "kannada": "Noto Sans Kannada",
                 "gujarati": "Noto Sans Gujarati", "gurmukhi": "Noto Sans Gurmukhi", "thai": "Noto Sans Thai"}


@dataclass
class BookPage:
    number: int
    narration: str
    image: Image.Image


@dataclass
class Book:
    title: str
    language: str
    pages: list[BookPage] = field(default_factory=list)

    @property
    def all_text(self) -> str:
        return " ".join([self.title, *(p.narration for p in self.pages)])

    @property
    def rtl(self) -> bool:
        return is_rtl(self.all_text)


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


# ---------------------------------------------------------------- PDF


def build_pdf(book: Book, *, created: datetime | None = None) -> bytes:
    """The storybook as PDF bytes: cover + one page per scene, fonts embedded (subset), text shaped."""
    W, H = PDF_PAGE_PT
    text = book.all_text
    regular, bold = font_path(text), font_path(text, bold=True)
    if regular is None:
        raise RuntimeError("no TrueType/OpenType font found for the story's text (install fonts-noto-core)")
    pdf = FPDF(unit="pt", format=(W, H))
    pdf.set_auto_page_break(False)
    pdf.set_margins(MARGIN_PT, MARGIN_PT, MARGIN_PT)
    pdf.set_title(book.title)
    pdf.set_lang(book.language)
    pdf.set_creator("Atelier")
    pdf.set_producer("Atelier renderer (fpdf2)")
    pdf.set_creation_date(created or datetime.now(UTC))
    pdf.add_font("Body", "", str(regular))
    pdf.add_font("Body", "B", str(bold or regular))
    pdf.set_text_shaping(use_shaping_engine=True, direction="rtl" if book.rtl else "ltr")
    align = "R" if book.rtl else "L"
    inner_w = W - 2 * MARGIN_PT

    # cover: the first illustration, the title under it
    pdf.add_page()
    pdf.set_fill_color(251, 247, 239)
    pdf.rect(0, 0, W, H, style="F")
    top = MARGIN_PT
    if book.pages:
        _image(pdf, book.pages[0].image, MARGIN_PT, top, inner_w, H * 0.58)
        top = MARGIN_PT + H * 0.58 + 24
    _fitted_text(pdf, book.title, MARGIN_PT, top, inner_w, H - top - MARGIN_PT, style="B", start=40, smallest=14,
                 align="C", color=(43, 33, 24), line=1.2)

    for page in book.pages:
        pdf.add_page()
        pdf.set_fill_color(251, 247, 239)
        pdf.rect(0, 0, W, H, style="F")
        img_h = H * 0.6
        _image(pdf, page.image, MARGIN_PT, MARGIN_PT, inner_w, img_h)
        text_top = MARGIN_PT + img_h + 18
        footer = 28.0
        if page.narration.strip():
            _fitted_text(pdf, page.narration, MARGIN_PT, text_top, inner_w, H - text_top - MARGIN_PT - footer,
                         style="", start=16, smallest=7, align=align, color=(43, 33, 24), line=1.4)
        pdf.set_font("Body", "", 10)
        pdf.set_text_color(122, 106, 88)
        pdf.set_xy(MARGIN_PT, H - MARGIN_PT - 12)
        pdf.cell(inner_w, 12, str(page.number), align="C")
    out = pdf.output()
    return bytes(out)


def _image(pdf: object, img: Image.Image, x: float, y: float, w: float, h: float) -> None:
    """Place ``img`` centred in the box (aspect kept), as a JPEG stream."""
    scale = min(w / img.width, h / img.height)
    iw, ih = img.width * scale, img.height * scale
    pdf.image(io.BytesIO(_jpeg(img)), x=x + (w - iw) / 2, y=y, w=iw, h=ih)  # type: ignore[attr-defined]


def _fitted_text(pdf: object, text: str, x: float, y: float, w: float, h: float, *, style: str, start: float,
                 smallest: float, align: str, color: tuple[int, int, int], line: float) -> float:
    """Write ``text`` in the box at the largest size from ``start`` down that fits; returns the size."""
    size = start
    while True:
        pdf.set_font("Body", style, size)  # type: ignore[attr-defined]
        lines = pdf.multi_cell(w, size * line, text, align=align, dry_run=True, output="LINES")  # type: ignore[attr-defined]
        if len(lines) * size * line <= h or size <= smallest:
            break
        size = max(smallest, size - 1)
    pdf.set_text_color(*color)  # type: ignore[attr-defined]
    pdf.set_xy(x, y)  # type: ignore[attr-defined]
    pdf.multi_cell(w, size * line, text, align=align, max_line_height=size * line)  # type: ignore[attr-defined]
    return size


# ---------------------------------------------------------------- HTML


def build_html(book: Book) -> str:
    """The storybook as one self-contained HTML file (images inlined)."""
    script = detect_script(book.all_text)
    family = _CSS_FAMILIES.get(script, "Noto Sans")
    direction = "rtl" if book.rtl else "ltr"
    lang = html.escape(book.language, quote=True)

    def img_tag(img: Image.Image, alt: str) -> str:
        data = base64.b64encode(_jpeg(img, quality=88)).decode()
        return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(alt, quote=True)}" width="{img.width}" ' \
               f'height="{img.height}">'

    parts = [
        "<!doctype html>",
        f'<html lang="{lang}" dir="{direction}">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="Atelier">',
        f"<title>{html.escape(book.title)}</title>",
        "<style>",
        f"body{{margin:0;background:#EFE8DC;color:#2B2118;font-family:'{family}','Noto Sans','DejaVu Sans',sans-serif}}",
        ".page{max-width:44rem;margin:2rem auto;padding:2rem;background:#FBF7EF;box-shadow:0 2px 12px #0002;"
        "break-after:page}",
        ".page img{display:block;width:100%;height:auto;border-radius:4px}",
        ".cover h1{font-size:2.4rem;text-align:center;margin:1.5rem 0 .5rem}",
        ".narration{font-size:1.25rem;line-height:1.6;margin:1.25rem 0}",
        ".number{text-align:center;color:#7A6A58;font-size:.9rem}",
        "</style>",
        "</head>",
        "<body>",
        '<section class="page cover">',
    ]
    if book.pages:
        parts.append(img_tag(book.pages[0].image, book.title))
    parts += [f"<h1>{html.escape(book.title)}</h1>", "</section>"]
    for page in book.pages:
        parts += [
            f'<section class="page" id="page-{page.number}">',
            img_tag(page.image, f"Illustration, page {page.number}"),
            f'<p class="narration">{html.escape(page.narration)}</p>',
            f'<p class="number">{page.number}</p>',
            "</section>",
        ]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
