"""A story's delivered documents: the storybook PDF (C2PA-signed) and HTML, from the watermarked pages."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from atelier_contracts.catalogue import S_STORYBOOK
from atelier_contracts.errors import NotFound
from atelier_contracts.keys import stage_key
from atelier_provenance import manifests
from atelier_runtime.stage_runner import StageContext
from PIL import Image

from .book import Book, BookPage, build_html, build_pdf

log = logging.getLogger(__name__)


def page_layout_key(prefix: str, item: str) -> str:
    """The JSON next to a storybook page: its narration, title, language and where the image is."""
    return stage_key(prefix, S_STORYBOOK, item, "json")


def sign_document(ctx: StageContext, data: bytes, *, content_type: str, title: str) -> tuple[bytes, dict[str, Any]]:
    """Sign a delivered document (the storybook PDF) with C2PA, like the images (``atelier_provenance``).

    The manifest says who made it (``c2pa.created``, trainedAlgorithmicMedia) and carries the Atelier assertion
    (job, kind); the signed bytes are verified before they are stored. A failure delivers the document unsigned
    and its state says why."""
    try:
        credentials = manifests.load_credentials(ctx.settings)
        generation = {"job_id": ctx.task.job_id, "kind": ctx.task.kind, "document": "storybook"}
        signed = manifests.sign_pdf(data, credentials=credentials, title=title, generation=generation)
        check = manifests.read_manifest(signed, content_type, anchors=credentials.anchors_pem)
    except Exception as exc:  # noqa: BLE001 - an unsigned book beats a failed job; the state says why
        log.warning("signing %s failed: %s", content_type, exc)
        return data, {"state": "unsigned", "reason": f"signing failed: {exc}"}
    if not check.valid:
        return data, {"state": "unsigned", "reason": f"the signed PDF did not verify: {check.failures}"}
    return signed, {"state": check.state, "signer": check.signer.get("common_name"),
                    "credentials": credentials.source, "signed_at": check.generation.get("signed_at")}


def storybook(ctx: StageContext, entries: list[dict[str, Any]], images: dict[str, bytes]) -> list[dict[str, Any]]:
    """Build the storybook PDF and HTML from the watermarked pages and their layout sidecars."""
    pages: list[BookPage] = []
    title, language = "", "en"
    for e in entries:
        try:
            side = json.loads(ctx.get(page_layout_key(ctx.task.key_prefix, e["item"])))
        except NotFound:
            side = {}
        with Image.open(io.BytesIO(images[e["item"]])) as im:
            page_img = im.convert("RGB")
        rect = side.get("image_rect")
        # the illustration as it was watermarked: cut from the delivered page, narration kept as real text
        illustration = page_img.crop(tuple(rect)) if rect else page_img
        number = int(side.get("page") or len(pages) + 1)
        title = title or str(side.get("title") or "")
        language = str(side.get("language") or language)
        pages.append(BookPage(number=number, narration=str(side.get("narration") or ""), image=illustration))
    book = Book(title=title or "Storybook", language=language, pages=sorted(pages, key=lambda p: p.number))
    pdf, c2pa = sign_document(ctx, build_pdf(book), content_type="application/pdf", title=f"{book.title}.pdf")
    out = []
    pdf_rec = ctx.put(name="storybook", data=pdf, ext="pdf", content_type="application/pdf", kind="document",
                      meta={"pages": len(book.pages) + 1, "language": book.language, "title": book.title,
                            "fonts_embedded": True, "c2pa": c2pa})
    out.append({"item": "storybook.pdf", "key": pdf_rec.key, "sha256": pdf_rec.sha256, "c2pa": c2pa})
    html_rec = ctx.put(name="storybook", data=build_html(book).encode("utf-8"), ext="html",
                       content_type="text/html; charset=utf-8", kind="document",
                       meta={"pages": len(book.pages) + 1, "language": book.language, "title": book.title})
    out.append({"item": "storybook.html", "key": html_rec.key, "sha256": html_rec.sha256})
    return out
