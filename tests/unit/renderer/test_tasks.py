from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atelier_contracts import items
from atelier_contracts.errors import StageError
from atelier_contracts.keys import font_key
from atelier_contracts.plans import (
    AdPlan,
    AdPrompts,
    AdVariant,
    Box,
    CastMember,
    Character,
    LayoutPlan,
    PlannerInfo,
    Scene,
    StoryPlan,
    Tagline,
    Target,
    TextStyle,
)
from atelier_renderer.stages.deliver import deliver
from atelier_renderer.stages.render_ad import render_ad
from atelier_renderer.stages.render_storybook import render_storybook
from atelier_runtime.stage_runner import StageContext
from PIL import Image

MakeCtx = Callable[..., StageContext]
PLANNER = PlannerInfo(backend="rules", model="rules-v1", prompt_version="rules-1")
SPEC = {"brand": {"name": "B", "palette": ["#1F2937", "#F9FAFB"], "logo": "logo-1"},
        "product": {"name": "P", "description": "d", "image": "up-1"}, "taglines": ["Hello"], "cta": "Buy",
        "sizes": ["1080x1080", "1200x628"], "variants": 2}


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def ad_plan() -> AdPlan:
    variants = []
    for w, h in [(1080, 1080), (1200, 628)]:
        boxes = [Box(bbox=(0, 0, 1, 1), caption="bg", role="background"),
                 Box(bbox=(0.55, 0.1, 0.95, 0.9), caption="P", role="product", z=2),
                 Box(bbox=(0.05, 0.1, 0.5, 0.4), caption="headline: Hello", role="tagline", z=4),
                 Box(bbox=(0.05, 0.6, 0.4, 0.75), caption="cta: Buy", role="cta", z=4),
                 Box(bbox=(0.05, 0.85, 0.2, 0.95), caption="logo: B", role="logo", z=4)]
        variants.append(AdVariant(
            target=Target(w=w, h=h, name=f"{w}x{h}"),
            layout=LayoutPlan(plan_id="p", seed=1, width=w, height=h, planner=PLANNER, global_caption="g", boxes=boxes),
            text_styles=[TextStyle(box_role="tagline", color="#1F2937"),
                         TextStyle(box_role="cta", color="#F9FAFB", underlay_color="#1F2937")]))
    return AdPlan(plan_id="a", seed=1, width=1080, height=1080, planner=PLANNER, product={"name": "P"},
                  taglines=[Tagline(text="Hello", level="headline"), Tagline(text="Buy", level="cta")],
                  prompts=AdPrompts(foreground="f", background="b"), variants=variants)


def test_render_ad(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(stage="render.ad", kind="campaign", spec=SPEC, item="1200x628-v1")
    ctx.store.put("tenants/t1/uploads/up-1.png", png(Image.new("RGBA", (50, 100), (200, 30, 30, 255))), "image/png")
    ctx.store.put("tenants/t1/uploads/logo-1.png", png(Image.new("RGB", (60, 30), (0, 180, 0))), "image/png")
    bg_key = "tenants/t1/jobs/job-1/gpu.background/1200x628-v1.png"
    ctx.store.put(bg_key, png(Image.new("RGB", (512, 256), (240, 240, 240))), "image/png")
    ctx.task.upstream = {"plan.ad_layout": {"plan": ad_plan().model_dump(mode="json")},
                         "gpu.background": {"background_key": bg_key, "width": 512, "height": 256}}
    out = render_ad.stage_fn(ctx)
    assert out == {"render_key": "tenants/t1/jobs/job-1/render.ad/1200x628-v1.png", "width": 1200, "height": 628,
                   "size": "1200x628", "variant": 1, "gates_passed": True, "gates_failed": []}
    img = Image.open(io.BytesIO(ctx.get(out["render_key"])))
    assert img.size == (1200, 628)
    assert img.convert("RGB").getpixel((int(0.75 * 1200), int(0.5 * 628))) == (200, 30, 30)  # product pasted
    rec = ctx.artifacts[0]
    assert rec.kind == "render" and (rec.width, rec.height) == (1200, 628) and rec.content_type == "image/png"
    # gate scores ride along in the artifact's meta: OCR per text box, contrast, canvas, safe zone
    gates = {g["name"]: g for g in rec.meta["gates"]}
    assert {"ocr.headline", "ocr.cta", "contrast.headline", "contrast.cta", "inside_canvas", "safe_zone"} <= set(gates)
    assert gates["ocr.headline"]["score"] == 0.0 and gates["ocr.headline"]["passed"] is True
    assert gates["contrast.headline"]["score"] >= 4.5 and gates["safe_zone"]["passed"] is True
    assert rec.meta["taglines"] == ["Hello"] and rec.meta["cta"] == "Buy" and rec.meta["backdrop"] == "generated"


def test_render_ad_studio_backdrop_needs_no_background(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(stage="render.ad", kind="campaign", spec=dict(SPEC, backdrop="studio"), item="1080x1080-v0")
    ctx.store.put("tenants/t1/uploads/up-1.png", png(Image.new("RGBA", (50, 100), (200, 30, 30, 255))), "image/png")
    ctx.store.put("tenants/t1/uploads/logo-1.png", png(Image.new("RGB", (60, 30), (0, 180, 0))), "image/png")
    # no gpu.background output at all: the renderer draws the backdrop itself
    ctx.task.upstream = {"plan.ad_layout": {"plan": ad_plan().model_dump(mode="json")}}
    out = render_ad.stage_fn(ctx)
    img = Image.open(io.BytesIO(ctx.get(out["render_key"]))).convert("RGB")
    assert img.size == (1080, 1080) and ctx.artifacts[0].meta["backdrop"] == "studio"
    assert out["gates_passed"] is True, ctx.artifacts[0].meta["gates"]


def test_render_ad_uses_the_brand_kit_font(make_ctx: MakeCtx) -> None:
    """The brand font comes from the store by artifact id and is drawn for this job (as a file, never under a family
    name another job could reach)."""
    src = Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf")
    if not src.is_file():
        pytest.skip("DejaVu Serif (fonts-dejavu-core) is not installed")
    spec = {**SPEC, "brand": {**SPEC["brand"], "font": "LumenSerif", "font_artifact": "art_font1"}}
    ctx = make_ctx(stage="render.ad", kind="campaign", spec=spec, item="1080x1080-v0")
    ctx.store.put("tenants/t1/uploads/up-1.png", png(Image.new("RGBA", (50, 100), (200, 30, 30, 255))), "image/png")
    ctx.store.put("tenants/t1/uploads/logo-1.png", png(Image.new("RGB", (60, 30), (0, 180, 0))), "image/png")
    ctx.store.put(font_key("t1", "art_font1"), src.read_bytes(), "font/ttf")
    bg_key = "tenants/t1/jobs/job-1/gpu.background/1080x1080-v0.png"
    ctx.store.put(bg_key, png(Image.new("RGB", (64, 64), (240, 240, 240))), "image/png")
    ctx.task.upstream = {"plan.ad_layout": {"plan": ad_plan().model_dump(mode="json")},
                         "gpu.background": {"background_key": bg_key}}
    render_ad.stage_fn(ctx)
    texts = ctx.artifacts[0].meta["texts"]
    assert {t["font"] for t in texts} == {f"{hashlib.sha256(src.read_bytes()).hexdigest()}.font"}


def test_render_ad_rejects_a_broken_brand_font(make_ctx: MakeCtx) -> None:
    spec = {**SPEC, "brand": {**SPEC["brand"], "font_artifact": "art_bad"}}
    ctx = make_ctx(stage="render.ad", kind="campaign", spec=spec, item="1080x1080-v0",
                   upstream={"plan.ad_layout": {"plan": ad_plan().model_dump(mode="json")},
                             "gpu.background": {"background_key": "k"}})
    ctx.store.put("k", png(Image.new("RGB", (8, 8))), "image/png")
    ctx.store.put("tenants/t1/uploads/up-1.png", png(Image.new("RGB", (8, 8))), "image/png")
    ctx.store.put("tenants/t1/uploads/logo-1.png", png(Image.new("RGB", (8, 8))), "image/png")
    ctx.store.put(font_key("t1", "art_bad"), b"not a font", "font/ttf")
    with pytest.raises(StageError, match="not a readable") as exc:
        render_ad.stage_fn(ctx)
    assert exc.value.retryable is False


def test_render_ad_unknown_size_fails_for_good(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(stage="render.ad", kind="campaign", spec=SPEC, item="300x250-v0",
                   upstream={"plan.ad_layout": {"plan": ad_plan().model_dump(mode="json")},
                             "gpu.background": {"background_key": "nope"}})
    with pytest.raises(StageError) as exc:
        render_ad.stage_fn(ctx)
    assert exc.value.retryable is False


def story_plan(n: int) -> StoryPlan:
    ch = Character(id="c0", name="Ammu", description="8-year-old girl", sheet_prompt="s", seed=1)
    box = Box(bbox=(0.3, 0.4, 0.6, 0.96), caption="Ammu", role="character")
    scenes = [Scene(index=i, narration=f"Narration of page {i + 1}.", backdrop="b", scene_prompt="p",
                    cast=[CastMember(character_id="c0", pose="standing", expression="happy", box=box)]) for i in range(n)]
    return StoryPlan(plan_id="s", seed=1, width=1024, height=768, planner=PLANNER, title="T", story="x",
                     culture_notes=[], language="en", characters=[ch], scenes=scenes)


def test_render_storybook(make_ctx: MakeCtx) -> None:
    key = "tenants/t1/jobs/job-1/gpu.scene/s2.png"
    ctx = make_ctx(stage="render.storybook", kind="story", spec={}, item="s2",
                   upstream={"plan.scenes": {"plan": story_plan(3).model_dump(mode="json")},
                             "gpu.scene": {"scene_key": key, "width": 1024, "height": 768}})
    ctx.store.put(key, png(Image.new("RGB", (1024, 768), (90, 90, 200))), "image/png")
    out = render_storybook.stage_fn(ctx)
    assert out == {"render_key": "tenants/t1/jobs/job-1/render.storybook/s2.png", "width": 1024, "height": 1280, "page": 3}
    assert ctx.artifacts[0].kind == "page"
    assert Image.open(io.BytesIO(ctx.get(out["render_key"]))).size == (1024, 1280)
    side = json.loads(ctx.get("tenants/t1/jobs/job-1/render.storybook/s2.json"))
    assert side["narration"] == "Narration of page 3." and side["title"] == "T" and side["page"] == 3
    x1, y1, x2, y2 = side["image_rect"]
    page = Image.open(io.BytesIO(ctx.get(out["render_key"]))).convert("RGB")
    assert page.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == (90, 90, 200)  # the rect is where the scene is


def test_deliver_writes_manifest(make_ctx: MakeCtx) -> None:
    marks: dict[str, Any] = {}
    ctx = make_ctx(stage="deliver", kind="story", spec={})
    for i in (10, 2, 1):
        key = f"tenants/t1/jobs/job-1/gpu.watermark/s{i}.png"
        ctx.store.put(key, png(Image.new("RGB", (40 + i, 30), (i, i, i))), "image/png")
        marks[f"s{i}"] = {"asset_key": key, "width": 40 + i, "height": 30, "watermark": {"bits": 48, "method": "dwtDctSvd"}}
    ctx.task.upstream = {"gpu.watermark": marks}
    out = deliver.stage_fn(ctx)
    assert out["count"] == 3 and out["manifest_key"] == "tenants/t1/jobs/job-1/deliver/manifest.json"
    assert [k.rsplit("/", 1)[1] for k in out["assets"]] == ["s1.png", "s2.png", "s10.png"]  # natural order
    manifest = json.loads(ctx.get(out["manifest_key"]))
    assert manifest["job_id"] == "job-1" and manifest["kind"] == "story" and manifest["count"] == 3
    first = manifest["assets"][0]
    assert first["item"] == "s1" and first["sha256"] == hashlib.sha256(ctx.get(first["key"])).hexdigest()
    assert first["watermark"]["method"] == "dwtDctSvd" and (first["width"], first["height"]) == (41, 30)
    # a story also gets its storybook as PDF and HTML, listed in the manifest
    assert [a.kind for a in ctx.artifacts] == ["document", "document", "manifest"]
    assert [d["item"] for d in manifest["documents"]] == ["storybook.pdf", "storybook.html"]
    assert ctx.get(manifest["documents"][0]["key"]).startswith(b"%PDF-")


def test_deliver_missing_asset_fails(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(stage="deliver", kind="campaign", spec={},
                   upstream={"gpu.watermark": {"1080x1080-v0": {"asset_key": "tenants/t1/jobs/job-1/x.png"}}})
    with pytest.raises(StageError, match="not found"):
        deliver.stage_fn(ctx)


def test_item_parsing() -> None:
    """One parser per item space (atelier_contracts.items): the renderer, the GPU stages and the gates agree."""
    assert items.parse_size_variant("1080x1920-v7") == ("1080x1920", 7)
    assert items.parse_size_variant(items.size_variant("300x250", 2)) == ("300x250", 2)
    assert items.parse_scene("s11") == 11 and items.parse_scene(items.scene(3)) == 3
    for bad in ("bad", "1080x1080"):  # a bare size is no item: every item is built with its variant
        with pytest.raises(ValueError, match="<size>-v<variant>"):
            items.parse_size_variant(bad)


def test_renders_what_the_rules_planner_plans(make_ctx: MakeCtx) -> None:
    """Contract check: the renderer honours the planner's box conventions for every size."""
    ad_prompts_stage = pytest.importorskip("atelier_planner.stages.ad_prompts").ad_prompts
    ad_layout_stage = pytest.importorskip("atelier_planner.stages.ad_layout").ad_layout
    spec = {"brand": {"name": "B", "palette": ["#0F766E", "#F0FDFA"]},
            "product": {"name": "Glow Serum", "description": "A vitamin C serum.", "image": "up-1"},
            "taglines": ["Bright skin, every single day of the year", "Dermatologist tested"], "cta": "Try it",
            "sizes": ["1080x1080", "1200x628", "1080x1920"], "variants": 1}
    prompts = ad_prompts_stage.stage_fn(make_ctx(stage="plan.ad_prompts", kind="campaign", spec=spec))
    layout = ad_layout_stage.stage_fn(make_ctx(stage="plan.ad_layout", kind="campaign", spec=spec,
                                                       upstream={"plan.ad_prompts": prompts}))
    rng = np.random.default_rng(3)
    for size in spec["sizes"]:
        w, h = (int(x) for x in size.split("x"))
        ctx = make_ctx(stage="render.ad", kind="campaign", spec=spec, item=f"{size}-v0")
        ctx.store.put("tenants/t1/uploads/up-1.png", png(Image.new("RGBA", (80, 160), (200, 30, 30, 255))), "image/png")
        noise = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).resize((w // 2, h // 2))
        bg_key = f"tenants/t1/jobs/job-1/gpu.background/{size}-v0.png"
        ctx.store.put(bg_key, png(noise), "image/png")
        ctx.task.upstream = {"plan.ad_layout": layout, "gpu.background": {"background_key": bg_key}}
        out = render_ad.stage_fn(ctx)
        img = Image.open(io.BytesIO(ctx.get(out["render_key"]))).convert("RGB")
        assert img.size == (w, h)
        variant = AdPlan.model_validate(layout["plan"]).variants[spec["sizes"].index(size)]
        product = next(b for b in variant.layout.boxes if b.role == "product").to_pixels(w, h)
        cx = (product[0] + product[2]) // 2
        assert img.getpixel((cx, product[3] - 5)) == (200, 30, 30)  # bottom-aligned product, exact pixels
