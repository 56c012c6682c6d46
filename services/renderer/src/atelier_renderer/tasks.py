"""Celery stage tasks of the render queue: ``render.ad``, ``render.storybook`` and ``deliver``."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from atelier_shared.errors import NotFound, StageError
from atelier_shared.plans import AdPlan, StoryPlan
from atelier_shared.stage_runner import StageContext, stage_task
from atelier_shared.tasks import (
    S_AD_LAYOUT,
    S_BACKGROUND,
    S_DELIVER,
    S_RENDER_AD,
    S_SCENE,
    S_SCENES,
    S_STORYBOOK,
    S_WATERMARK,
)
from PIL import Image, UnidentifiedImageError

from . import fonts
from .book import Book, BookPage, build_html, build_pdf
from .checks import check_ad
from .compose import compose_ad_with_report
from .storybook import render_page_with_layout

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000
PAGE_SIZE = (1024, 1280)
MAX_FONT_BYTES = 30 * 1024 * 1024


def upload_key(tenant_id: str, upload_id: str) -> str:
    """Where an upload lives (the API stores every upload as PNG)."""
    return f"tenants/{tenant_id}/uploads/{upload_id}.png"


def font_key(tenant_id: str, font_id: str) -> str:
    """Where a brand kit's font lives (``POST /v1/brands/{id}/fonts`` writes it; a contract like upload_key)."""
    return f"tenants/{tenant_id}/fonts/{font_id}.font"


def brand_font_family(ctx: StageContext, brand: dict[str, Any]) -> str | None:
    """Fetch the brand kit's font file once per process and register it under the brand's font family."""
    font_id = brand.get("font_artifact")
    if not font_id:
        return brand.get("font")
    family = str(brand.get("font") or f"brand-{font_id}")
    try:
        data = ctx.get(font_key(ctx.task.tenant_id, str(font_id)))
    except NotFound as exc:
        raise StageError(f"brand font {font_id} not found", retryable=False) from exc
    if len(data) > MAX_FONT_BYTES:
        raise StageError(f"brand font {font_id} is larger than {MAX_FONT_BYTES} bytes", retryable=False)
    cache = Path(tempfile.gettempdir()) / "atelier-fonts"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{hashlib.sha256(data).hexdigest()}.font"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    try:
        fonts.font_from_bytes(data, 12)
    except OSError as exc:
        raise StageError(f"brand font {font_id} is not a readable TrueType/OpenType font: {exc}", retryable=False) from exc
    fonts.register_font_file(family, path)
    return family


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def read_image(ctx: StageContext, key: str, *, what: str) -> Image.Image:
    """Decode an image from storage with a pixel cap; missing or broken inputs fail the stage for good."""
    try:
        data = ctx.get(key)
    except NotFound as exc:
        raise StageError(f"{what} {key} not found", retryable=False) from exc
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise StageError(f"{what} {key} is larger than {MAX_PIXELS} pixels", retryable=False)
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise StageError(f"{what} {key} is not a readable image: {exc}", retryable=False) from exc
    return img


def _per_item(ctx: StageContext, stage: str, field: str) -> dict[str, Any]:
    """Upstream output of a per-item dependency (or this item's entry of a fanned-out one)."""
    up = ctx.task.upstream.get(stage)
    if isinstance(up, dict) and field in up:
        return up
    if isinstance(up, dict) and isinstance(up.get(ctx.task.item), dict) and field in up[ctx.task.item]:
        return up[ctx.task.item]  # type: ignore[no-any-return]
    raise StageError(f"{ctx.task.stage} {ctx.task.item}: upstream {stage} has no {field!r}", retryable=False)


def parse_ad_item(item: str) -> tuple[str, int]:
    """``"1080x1080-v2"`` → ``("1080x1080", 2)``; a bare size is variant 0."""
    m = re.fullmatch(r"(\d+x\d+)(?:-v(\d+))?", item)
    if not m:
        raise StageError(f"render.ad item {item!r} is not SIZE-vN", retryable=False)
    return m.group(1), int(m.group(2) or 0)


@stage_task(S_RENDER_AD)
def render_ad(ctx: StageContext) -> dict[str, Any]:
    size, variant_no = parse_ad_item(ctx.task.item)
    layout_out = ctx.task.upstream.get(S_AD_LAYOUT) or {}
    plan = AdPlan.model_validate(layout_out.get("plan"))
    variant = next((v for v in plan.variants if v.target.name == size), None)
    if variant is None:
        raise StageError(f"AdPlan has no variant for size {size}", retryable=False)
    spec = ctx.task.spec
    backdrop = str(spec.get("backdrop") or "generated")
    background = None
    if backdrop != "studio":  # a studio backdrop is drawn here; the GPU background is not needed
        bg = _per_item(ctx, S_BACKGROUND, "background_key")
        background = read_image(ctx, str(bg["background_key"]), what="background")
    product_id = (spec.get("product") or {}).get("image")
    product = read_image(ctx, upload_key(ctx.task.tenant_id, product_id), what="product image") if product_id else None
    brand = dict(spec.get("brand") or {})
    logo = read_image(ctx, upload_key(ctx.task.tenant_id, brand["logo"]), what="logo") if brand.get("logo") else None
    family = brand_font_family(ctx, brand)
    if family:
        brand["font"] = family
        for style in variant.text_styles:
            style.font = family
    ctx.check_canceled()
    img, report = compose_ad_with_report(background=background, product=product, variant=variant,
                                         taglines=plan.taglines, brand=brand, logo=logo, backdrop=backdrop)
    ctx.progress(1, 2)
    gates = [g.as_dict() for g in check_ad(img, report, ocr_enabled=ctx.settings.render_ocr,
                                            max_cer=ctx.settings.render_ocr_max_cer)]
    texts = [{"level": t.level, "text": t.text, "lines": t.lines, "font": t.font, "size": t.size, "color": t.color,
              "contrast": round(t.contrast, 2), "underlay": t.underlay, "truncated": t.truncated, "box": list(t.box),
              "block": list(t.block)} for t in report.texts]
    taglines = [t.text for t in plan.taglines if t.level != "cta"]
    meta = {"size": size, "variant": variant_no, "backdrop": report.backdrop, "taglines": taglines,
            "cta": next((t.text for t in plan.taglines if t.level == "cta"), None), "gates": gates, "texts": texts,
            "safe_zone": list(report.safe_zone)}
    rec = ctx.put(name=ctx.task.item, data=png_bytes(img), ext="png", content_type="image/png", kind="render",
                  width=img.width, height=img.height, meta=meta)
    failed = [g["name"] for g in gates if g["passed"] is False]
    return {"render_key": rec.key, "width": img.width, "height": img.height, "size": size, "variant": variant_no,
            "gates_passed": not failed, "gates_failed": failed}


def parse_scene_item(item: str) -> int:
    m = re.fullmatch(r"s(\d+)", item)
    if not m:
        raise StageError(f"render.storybook item {item!r} is not sN", retryable=False)
    return int(m.group(1))


def page_layout_key(prefix: str, item: str) -> str:
    """The JSON next to a storybook page: its narration, title, language and where the image is."""
    return f"{prefix}/{S_STORYBOOK}/{item}.json"


@stage_task(S_STORYBOOK)
def render_storybook(ctx: StageContext) -> dict[str, Any]:
    index = parse_scene_item(ctx.task.item)
    plan = StoryPlan.model_validate((ctx.task.upstream.get(S_SCENES) or {}).get("plan"))
    scene = next((s for s in plan.scenes if s.index == index), None)
    if scene is None:
        raise StageError(f"StoryPlan has no scene {index}", retryable=False)
    scene_out = _per_item(ctx, S_SCENE, "scene_key")
    image = read_image(ctx, str(scene_out["scene_key"]), what="scene image")
    page, layout = render_page_with_layout(scene_image=image, narration=scene.narration, page_number=index + 1,
                                           title=plan.title if index == 0 else None, size=PAGE_SIZE)
    rec = ctx.put(name=ctx.task.item, data=png_bytes(page), ext="png", content_type="image/png", kind="page",
                  width=page.width, height=page.height, meta={"page": index + 1, "language": plan.language})
    sidecar = {"page": index + 1, "title": plan.title, "language": plan.language, "narration": scene.narration,
               "pages": len(plan.scenes), **layout}
    ctx.put(name=ctx.task.item, data=json.dumps(sidecar, ensure_ascii=False, sort_keys=True).encode("utf-8"), ext="json",
            content_type="application/json", kind="page-layout", meta={"page": index + 1})
    return {"render_key": rec.key, "width": page.width, "height": page.height, "page": index + 1}


def _natural(item: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", item)]


def sign_document(ctx: StageContext, data: bytes, *, content_type: str, title: str) -> tuple[bytes, dict[str, Any]]:
    """Sign a delivered document (the storybook PDF) with C2PA, like the images (``atelier_shared.provenance``).

    The manifest says who made it (``c2pa.created``, trainedAlgorithmicMedia) and carries the Atelier assertion
    (job, kind); the signed bytes are verified before they are stored. Without the provenance module (or
    its C2PA library) the document is delivered unsigned and its state says why."""
    try:
        prov = importlib.import_module("atelier_shared.provenance")
        credentials = prov.load_credentials(ctx.settings)
        generation = {"job_id": ctx.task.job_id, "kind": ctx.task.kind, "document": "storybook"}
        signed = prov.sign_pdf(data, credentials=credentials, title=title, generation=generation)
        check = prov.read_manifest(signed, content_type, anchors=credentials.anchors_pem)
    except ImportError as exc:
        return data, {"state": "unsigned", "reason": f"C2PA signing is not installed: {exc}"}
    except Exception as exc:  # noqa: BLE001 - an unsigned book beats a failed job; the state says why
        log.warning("signing %s failed: %s", content_type, exc)
        return data, {"state": "unsigned", "reason": f"signing failed: {exc}"}
    if not check.valid:
        return data, {"state": "unsigned", "reason": f"the signed PDF did not verify: {check.failures}"}
    return signed, {"state": check.state, "signer": check.signer.get("common_name"),
                    "credentials": credentials.source, "signed_at": check.generation.get("signed_at")}


def _storybook(ctx: StageContext, entries: list[dict[str, Any]], images: dict[str, bytes]) -> list[dict[str, Any]]:
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


@stage_task(S_DELIVER)
def deliver(ctx: StageContext) -> dict[str, Any]:
    marks = ctx.task.upstream.get(S_WATERMARK) or {}
    if "asset_key" in marks:  # a single, not fanned-out, watermark output
        marks = {ctx.task.item or "asset": marks}
    entries = []
    images: dict[str, bytes] = {}
    for item in sorted(marks, key=_natural):
        out = marks[item]
        key = str(out["asset_key"])
        try:
            data = ctx.get(key)
        except NotFound as exc:
            raise StageError(f"deliver: asset {key} of {item} not found", retryable=False) from exc
        images[item] = data
        width, height = out.get("width"), out.get("height")
        if width is None or height is None:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
        entries.append({"item": item, "key": key, "sha256": hashlib.sha256(data).hexdigest(), "width": width,
                        "height": height, "watermark": out.get("watermark") or {}})
    if not entries:
        raise StageError("deliver: no watermarked assets upstream", retryable=False)
    documents = _storybook(ctx, entries, images) if ctx.task.kind == "story" else []
    manifest = {"job_id": ctx.task.job_id, "kind": ctx.task.kind, "count": len(entries), "assets": entries,
                "documents": documents}
    rec = ctx.put(name="manifest", data=json.dumps(manifest, sort_keys=True, indent=2).encode("utf-8"), ext="json",
                  content_type="application/json", kind="manifest", meta={"count": len(entries)})
    return {"manifest_key": rec.key, "assets": [e["key"] for e in entries], "count": len(entries),
            "documents": [d["key"] for d in documents]}
