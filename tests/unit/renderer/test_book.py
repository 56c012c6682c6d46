"""Storybook documents: the deliver stage writes a PDF with embedded fonts and real text, and an HTML file."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest
from atelier_renderer.book import Book, BookPage, build_html, build_pdf
from atelier_renderer.documents import page_layout_key
from atelier_renderer.stages.deliver import deliver
from atelier_renderer.storybook import render_page_with_layout
from atelier_runtime.stage_runner import StageContext
from PIL import Image

pypdf = pytest.importorskip("pypdf")
MakeCtx = Callable[..., StageContext]

HINDI = ["अम्मू ने अपनी दादी के साथ कागज़ की नाव बनाई।", "बारिश में नाव तेज़ी से तैरने लगी।"]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _fonts(reader: object) -> list[tuple[str, list[str]]]:
    """(BaseFont, FontFile* keys of its descriptor) of every font the pages use."""
    out = []
    for page in reader.pages:  # type: ignore[attr-defined]
        for ref in page["/Resources"]["/Font"].values():
            font = ref.get_object()
            desc = font["/DescendantFonts"][0].get_object()["/FontDescriptor"].get_object()
            out.append((str(font["/BaseFont"]), [k for k in desc if k.startswith("/FontFile")]))
    return out


def test_deliver_builds_the_storybook_from_watermarked_pages(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(stage="deliver", kind="story", spec={})
    marks = {}
    colours = [(200, 40, 40), (40, 160, 60)]
    for i, narration in enumerate(HINDI):
        page, layout = render_page_with_layout(scene_image=Image.new("RGB", (256, 192), colours[i]), narration=narration,
                                               page_number=i + 1, title="कागज़ की नाव" if i == 0 else None,
                                               size=(512, 640))
        key = f"tenants/t1/jobs/job-1/gpu.watermark/s{i}.png"
        ctx.store.put(key, _png(page), "image/png")
        marks[f"s{i}"] = {"asset_key": key, "width": 512, "height": 640}
        side = {"page": i + 1, "title": "कागज़ की नाव", "language": "hi", "narration": narration, **layout}
        ctx.store.put(page_layout_key("tenants/t1/jobs/job-1", f"s{i}"), json.dumps(side).encode(), "application/json")
    ctx.task.upstream = {"gpu.watermark": marks}
    out = deliver.stage_fn(ctx)
    pdf_key, html_key = out["documents"]
    reader = pypdf.PdfReader(io.BytesIO(ctx.get(pdf_key)))
    assert len(reader.pages) == 3  # cover + 2 pages
    assert reader.metadata.title == "कागज़ की नाव"
    # the narration is real, searchable text in the PDF, in a Devanagari font embedded as a subset
    # (control characters dropped: the ToUnicode map of a reordered vowel sign can yield a stray one)
    text = "".join(ch for p in reader.pages for ch in p.extract_text() if ch.isprintable() and not ch.isspace())
    assert HINDI[0].replace(" ", "") in text and HINDI[1].replace(" ", "") in text
    fonts = _fonts(reader)
    assert fonts and all("NotoSansDevanagari" in name and files for name, files in fonts), fonts
    # every image in the PDF is a crop of the watermarked page (the illustration, not the narration)
    imgs = [im.image.convert("RGB") for p in reader.pages[1:] for im in p.images]
    assert len(imgs) == 2
    for img, colour in zip(imgs, colours, strict=True):
        px = img.getpixel((img.width // 2, img.height // 2))
        assert all(abs(a - b) <= 12 for a, b in zip(px, colour, strict=True))  # JPEG-encoded
    html = ctx.get(html_key).decode()
    assert '<html lang="hi" dir="ltr">' in html and HINDI[1] in html and "Noto Sans Devanagari" in html
    assert html.count("data:image/jpeg;base64,") == 3  # cover + 2 pages, self-contained
    docs = [a for a in ctx.artifacts if a.kind == "document"]
    assert {d.content_type for d in docs} == {"application/pdf", "text/html; charset=utf-8"}
    # signed like the images: a C2PA manifest that verifies on the stored bytes
    c2pa_state = next(d for d in docs if d.content_type == "application/pdf").meta["c2pa"]
    assert c2pa_state["state"] in ("trusted", "untrusted"), c2pa_state
    from atelier_provenance import manifests as provenance

    report = provenance.read_manifest(ctx.get(pdf_key), "application/pdf",
                                      anchors=provenance.trust_anchors(ctx.settings))
    assert report.valid and report.generation["job_id"] == "job-1" and report.generation["document"] == "storybook"


def test_arabic_storybook_is_right_to_left() -> None:
    book = Book(title="قارب من ورق", language="ar",
                pages=[BookPage(number=1, narration="صنعت الفتاة وجدتها قاربًا ورقيًا.", image=Image.new("RGB", (64, 48)))])
    assert book.rtl
    html = build_html(book)
    assert '<html lang="ar" dir="rtl">' in html and "Noto Sans Arabic" in html
    reader = pypdf.PdfReader(io.BytesIO(build_pdf(book)))
    assert "قارب" in reader.pages[0].extract_text()
    assert all("Arabic" in name and files for name, files in _fonts(reader))


def test_long_narration_shrinks_to_fit_the_page() -> None:
    long = "Once upon a time there was a paper boat. " * 40
    reader = pypdf.PdfReader(io.BytesIO(build_pdf(Book(title="T", language="en", pages=[
        BookPage(number=1, narration=long, image=Image.new("RGB", (64, 48)))]))))
    assert len(reader.pages) == 2  # it stays on its own page
    assert " ".join(reader.pages[1].extract_text().split()).count("paper boat") == 40
