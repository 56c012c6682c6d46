"""Celery stage tasks of the render queue: ``render.ad``, ``render.storybook`` and ``deliver``."""

from __future__ import annotations

import hashlib
import io
import json
import re
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

from .compose import compose_ad
from .storybook import render_page

MAX_PIXELS = 40_000_000
PAGE_SIZE = (1024, 1280)


def upload_key(tenant_id: str, upload_id: str) -> str:
    """Where an upload lives (the API stores every upload as PNG)."""
    return f"tenants/{tenant_id}/uploads/{upload_id}.png"


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
    bg = _per_item(ctx, S_BACKGROUND, "background_key")
    background = read_image(ctx, str(bg["background_key"]), what="background")
    spec = ctx.task.spec
    product_id = (spec.get("product") or {}).get("image")
    product = read_image(ctx, upload_key(ctx.task.tenant_id, product_id), what="product image") if product_id else None
    brand = dict(spec.get("brand") or {})
    logo = read_image(ctx, upload_key(ctx.task.tenant_id, brand["logo"]), what="logo") if brand.get("logo") else None
    ctx.check_canceled()
    img = compose_ad(background=background, product=product, variant=variant, taglines=plan.taglines, brand=brand,
                     logo=logo)
    rec = ctx.put(name=ctx.task.item, data=png_bytes(img), ext="png", content_type="image/png", kind="render",
                  width=img.width, height=img.height, meta={"size": size, "variant": variant_no})
    return {"render_key": rec.key, "width": img.width, "height": img.height, "size": size, "variant": variant_no}


def parse_scene_item(item: str) -> int:
    m = re.fullmatch(r"s(\d+)", item)
    if not m:
        raise StageError(f"render.storybook item {item!r} is not sN", retryable=False)
    return int(m.group(1))


@stage_task(S_STORYBOOK)
def render_storybook(ctx: StageContext) -> dict[str, Any]:
    index = parse_scene_item(ctx.task.item)
    plan = StoryPlan.model_validate((ctx.task.upstream.get(S_SCENES) or {}).get("plan"))
    scene = next((s for s in plan.scenes if s.index == index), None)
    if scene is None:
        raise StageError(f"StoryPlan has no scene {index}", retryable=False)
    scene_out = _per_item(ctx, S_SCENE, "scene_key")
    image = read_image(ctx, str(scene_out["scene_key"]), what="scene image")
    page = render_page(scene_image=image, narration=scene.narration, page_number=index + 1,
                       title=plan.title if index == 0 else None, size=PAGE_SIZE)
    rec = ctx.put(name=ctx.task.item, data=png_bytes(page), ext="png", content_type="image/png", kind="page",
                  width=page.width, height=page.height, meta={"page": index + 1, "language": plan.language})
    return {"render_key": rec.key, "width": page.width, "height": page.height, "page": index + 1}


def _natural(item: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", item)]


@stage_task(S_DELIVER)
def deliver(ctx: StageContext) -> dict[str, Any]:
    marks = ctx.task.upstream.get(S_WATERMARK) or {}
    if "asset_key" in marks:  # a single, not fanned-out, watermark output
        marks = {ctx.task.item or "asset": marks}
    entries = []
    for item in sorted(marks, key=_natural):
        out = marks[item]
        key = str(out["asset_key"])
        try:
            data = ctx.get(key)
        except NotFound as exc:
            raise StageError(f"deliver: asset {key} of {item} not found", retryable=False) from exc
        width, height = out.get("width"), out.get("height")
        if width is None or height is None:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
        entries.append({"item": item, "key": key, "sha256": hashlib.sha256(data).hexdigest(), "width": width,
                        "height": height, "watermark": out.get("watermark") or {}})
    if not entries:
        raise StageError("deliver: no watermarked assets upstream", retryable=False)
    manifest = {"job_id": ctx.task.job_id, "kind": ctx.task.kind, "count": len(entries), "assets": entries}
    rec = ctx.put(name="manifest", data=json.dumps(manifest, sort_keys=True, indent=2).encode("utf-8"), ext="json",
                  content_type="application/json", kind="manifest", meta={"count": len(entries)})
    return {"manifest_key": rec.key, "assets": [e["key"] for e in entries], "count": len(entries)}
