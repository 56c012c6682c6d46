"""The ``gate.critic`` stage: the critic's report as a quality gate's output, on a real chat-completions double."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from atelier_contracts.errors import StageError
from atelier_contracts.plans import AdPlan, LayoutPlan, RegionalPlan
from atelier_contracts.specs import CampaignSpec
from atelier_planner import critic_gate
from atelier_planner.backends import get_backend
from atelier_planner.critic import CriticReport, RegionVerdict
from atelier_planner.critic_gate import background_plan, gate_output, repair_hint, variant_layout
from atelier_planner.stages.gate_critic import critic_gate as critic_gate_stage
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext, WorkerResources
from llm_double import ChatDouble, data_of, images_of
from PIL import Image

MakeCtx = Callable[..., StageContext]
CAMPAIGN = {"brand": {"name": "Lumen", "palette": ["#3B2416", "#F5E6D3"]},
            "product": {"name": "Cold Brew", "description": "A bottle of cold brew coffee"},
            "taglines": ["Slow steeped."], "cta": "Shop now", "sizes": ["1080x1080", "1200x628"], "variants": 2}
RED, BLUE = (200, 30, 30), (30, 60, 200)


def verdict(index: int, role: str, *, ok: bool = True, confidence: int = 90, error: str | None = None
            ) -> RegionVerdict:
    return RegionVerdict(index=index, role=role, caption=f"caption {index}", bbox=(0, 0, 1, 1),
                         present=None if error else ok, matches=None if error else ok,
                         confidence=None if error else confidence, reason="" if error else f"reason {index}",
                         error=error)


def report(status: str, verdicts: list[RegionVerdict], passed: bool | None = None) -> CriticReport:
    return CriticReport(status=status, passed=passed, model="openai:v", prompt_version="critic.region/v1",  # type: ignore[arg-type]
                        reason=f"{status} reason", verdicts=verdicts)


# ---------------------------------------------------------------- the gate output (pure)


def test_every_region_matching_passes_with_score_one() -> None:
    out = gate_output(report("ok", [verdict(0, "background"), verdict(3, "product")], passed=True), artifact_key="k")
    assert out["passed"] is True and out["score"] == 1.0 and out["regenerate"] is False and out["warnings"] == []
    assert out["gates"] == [{"name": "critic", "score": 1.0, "passed": True, "detail": out["detail"]}]
    assert out["detail"] == "2 of 2 regions match their captions" and out["artifact_key"] == "k"
    assert out["strict"] is False and out["critic_status"] == "ok"
    assert [v["index"] for v in out["report"]["verdicts"]] == [0, 3] and out["report"]["failed_regions"] == []


def test_a_failing_region_asks_for_a_regeneration_and_is_named() -> None:
    rep = report("ok", [verdict(0, "background"), verdict(1, "entity"), verdict(3, "product", ok=False),
                        verdict(4, "entity", ok=True, confidence=20)], passed=False)
    out = gate_output(rep, artifact_key="k", extra={"regeneration": 2})
    # score: the fraction of checked regions that pass; a low-confidence "match" fails as in critique()
    assert out["score"] == 0.5 and out["passed"] is False and out["regenerate"] is True
    assert out["detail"] == "2 of 4 regions match their captions; failed: 3, 4"
    assert len(out["warnings"]) == 2
    assert out["warnings"][0].startswith("region 3 (product 'caption 3') does not match: reason 3")
    assert "confidence=20" in out["warnings"][1]
    assert out["report"]["failed_regions"] == [3, 4] and out["regeneration"] == 2


def test_absent_error_and_empty_are_never_a_pass() -> None:
    absent = gate_output(CriticReport(status="absent", passed=None, reason="no VLM is configured (set "
                                      "ATELIER_VLM_MODEL): the image was not judged"), artifact_key="k")
    errored = gate_output(report("error", [verdict(0, "background"), verdict(2, "product", error="EngineError: 500")]),
                          artifact_key="k")
    empty = gate_output(report("ok", [], passed=True), artifact_key="k")  # critique() calls nothing checked a match
    skipped = gate_output(CriticReport(status="ok", passed=None), artifact_key=None, not_judged="no image")
    for out in (absent, errored, empty, skipped):
        assert out["passed"] is False and out["regenerate"] is False and out["score"] is None
        assert out["gates"][0]["passed"] is False and out["warnings"]
    assert absent["detail"].startswith("critic absent:") and "ATELIER_VLM_MODEL" in absent["warnings"][0]
    assert errored["critic_status"] == "error" and errored["warnings"] == [
        "critic could not judge region 2 (product 'caption 2'): EngineError: 500"]
    assert "no region" in empty["detail"] and skipped["critic_status"] == "not_judged"


# ---------------------------------------------------------------- what is checked


@pytest.fixture(scope="module")
def ad() -> tuple[dict[str, Any], dict[str, Any]]:
    """Rules plans of CAMPAIGN: (plan.ad_prompts output, plan.ad_layout output)."""
    spec = CampaignSpec.model_validate(CAMPAIGN)
    rules = get_backend("rules")
    prompts = rules.ad_prompts(spec, job_id="job-1")
    return prompts, rules.ad_layout(spec, job_id="job-1", prompts_output=prompts)


def test_the_plan_checked_follows_the_recipe(ad: tuple[dict[str, Any], dict[str, Any]]) -> None:
    prompts, layout_out = ad
    plan = AdPlan.model_validate(layout_out["plan"])
    wide = variant_layout(plan, "1200x628-v0")
    assert wide is plan.variants[1].layout and wide.width == 1200
    # v1 is the mirrored composition: the critic judges the background against the layout it was drawn from
    mirrored = variant_layout(plan, "1200x628-v1")
    boxes = {b.role: b.bbox for b in wide.boxes}
    assert {b.role: b.bbox for b in mirrored.boxes}["product"] == pytest.approx(
        (1 - boxes["product"][2], boxes["product"][1], 1 - boxes["product"][0], boxes["product"][3]))
    for recipe in ("layout", "inpaint", None):
        checked, roles, what = background_plan(recipe, wide, prompts["regional"])
        assert checked is wide and "product" in roles and "tagline" not in roles and what == "layout"
    regional, roles, what = background_plan("regional", wide, prompts["regional"])
    assert isinstance(regional, RegionalPlan) and roles == ("region",) and what == "regional"
    assert background_plan("text_to_image", wide, None)[1:] == (("background",), "layout:background")
    with pytest.raises(StageError, match="no variant for size '640x640'"):
        variant_layout(plan, "640x640-v0")
    with pytest.raises(StageError, match="is not '<size>-v<variant>'"):
        variant_layout(plan, "1080x1080")


# ---------------------------------------------------------------- the stage on a chat-completions double


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def painted(layout: LayoutPlan, product: tuple[int, int, int], rest: tuple[int, int, int] = BLUE) -> Image.Image:
    """A small background: ``rest`` everywhere, ``product`` in the product box."""
    img = Image.new("RGB", (128, round(128 * layout.height / layout.width)), rest)
    (box,) = [b for b in layout.boxes if b.role == "product"]
    x1, y1, x2, y2 = box.bbox
    img.paste(product, (round(x1 * img.width), round(y1 * img.height), round(x2 * img.width), round(y2 * img.height)))
    return img


def blue_judge(body: dict[str, Any]) -> dict[str, Any]:
    """A VLM that sees blue as right and red as wrong, whatever the caption."""
    px = list(images_of(body)[0].convert("RGB").resize((8, 8)).getdata())
    red, blue = (sum(p[k] for p in px) for k in (0, 2))
    ok = blue > red
    return {"present": ok, "matches": ok, "confidence": 90, "reason": "mostly blue" if ok else "mostly red"}


def vlm_settings(double: ChatDouble, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, llm_base_url=double.base_url, vlm_model="double-vlm", llm_timeout_s=2,
                    llm_max_retries=0)


def gate_ctx(make_ctx: MakeCtx, ad: tuple[dict[str, Any], dict[str, Any]], image: Image.Image, *,
             item: str = "1080x1080-v0", recipe: str = "layout", regeneration: int = 0) -> StageContext:
    prompts, layout_out = ad
    bg_ctx = make_ctx(stage="gpu.background", kind="campaign", spec=CAMPAIGN, item=item)
    name = item if not regeneration else f"{item}.r{regeneration}"
    rec = bg_ctx.put(name=name, data=png(image), ext="png", content_type="image/png", kind="background")
    ctx = make_ctx(stage="gate.critic", kind="campaign", spec=CAMPAIGN, item=item, upstream={
        "plan.ad_prompts": prompts, "plan.ad_layout": layout_out,
        "gpu.background": {"background_key": rec.key, "recipe": recipe, "seed": 7}})
    ctx.task.regeneration = regeneration
    return ctx


def test_the_stage_judges_the_background_region_by_region(
        llm_double: ChatDouble, make_ctx: MakeCtx, resources: WorkerResources, tmp_path: Path,
        ad: tuple[dict[str, Any], dict[str, Any]]) -> None:
    resources.settings = vlm_settings(llm_double, tmp_path)
    llm_double.script = [blue_judge] * 20
    layout = variant_layout(AdPlan.model_validate(ad[1]["plan"]), "1080x1080-v0")
    ctx = gate_ctx(make_ctx, ad, painted(layout, RED), regeneration=1)
    out = critic_gate_stage.stage_fn(ctx)
    checked = [b for b in layout.boxes if b.role in ("background", "entity", "product")]
    product = next(i for i, b in enumerate(layout.boxes) if b.role == "product")
    asked = llm_double.chat_requests("critic_region")
    assert len(asked) == len(checked) and all(r["model"] == "double-vlm" for r in asked)
    assert [data_of(r)["region_caption"] for r in asked] == [b.caption for b in checked]  # no tagline, no CTA
    assert out["passed"] is False and out["regenerate"] is True
    assert out["score"] == round((len(checked) - 1) / len(checked), 4)
    assert out["report"]["failed_regions"] == [product] and out["report"]["model"] == "openai:double-vlm"
    assert out["artifact_key"] == ctx.task.upstream["gpu.background"]["background_key"]
    assert (out["regeneration"], out["recipe"], out["checked"]) == (1, "layout", "layout")
    assert "mostly red" in out["warnings"][0] and "(product '" in out["warnings"][0]
    (rec,) = ctx.artifacts  # the attempt's report, stored under its own name
    assert (rec.kind, rec.name) == ("gate_report", "1080x1080-v0.r1")
    assert rec.meta == {"gate": "critic", "score": out["score"], "passed": False, "regeneration": 1,
                        "background_key": out["artifact_key"]}
    assert json.loads(ctx.get(rec.key)) == out
    # the product was drawn from its caption: the gate asks to repaint its box in place, once
    repair = out["repair"]
    assert repair["artifact_key"] == out["artifact_key"] and repair["regeneration"] == 1
    assert [(r["index"], r["role"]) for r in repair["regions"]] == [(product, "product")]
    assert repair["regions"][0]["bbox"] == list(layout.boxes[product].bbox)
    assert repair["regions"][0]["prompt"] == layout.boxes[product].caption

    llm_double.requests.clear()
    ok = critic_gate_stage.stage_fn(gate_ctx(make_ctx, ad, painted(layout, BLUE)))
    assert ok["passed"] is True and ok["score"] == 1.0 and ok["regenerate"] is False and ok["warnings"] == []


def test_a_regional_background_is_judged_cell_by_cell(
        llm_double: ChatDouble, make_ctx: MakeCtx, resources: WorkerResources, tmp_path: Path,
        ad: tuple[dict[str, Any], dict[str, Any]]) -> None:
    resources.settings = vlm_settings(llm_double, tmp_path)
    llm_double.script = [blue_judge] * 20
    layout = variant_layout(AdPlan.model_validate(ad[1]["plan"]), "1080x1080-v0")
    out = critic_gate_stage.stage_fn(gate_ctx(make_ctx, ad, painted(layout, BLUE), recipe="regional"))
    cells = [r["prompt"] for r in ad[0]["regional"]["regions"]]
    assert [data_of(r)["region_caption"] for r in llm_double.chat_requests("critic_region")] == cells
    assert out["checked"] == "regional" and out["passed"] is True


def test_without_a_vlm_on_the_worker_the_gate_reports_absent(
        make_ctx: MakeCtx, ad: tuple[dict[str, Any], dict[str, Any]]) -> None:
    layout = variant_layout(AdPlan.model_validate(ad[1]["plan"]), "1080x1080-v0")
    out = critic_gate_stage.stage_fn(gate_ctx(make_ctx, ad, painted(layout, BLUE)))
    assert out["critic_status"] == "absent" and out["passed"] is False and out["regenerate"] is False
    assert out["score"] is None and "ATELIER_VLM_MODEL" in out["detail"]


def test_a_failing_or_unreachable_vlm_is_an_error_never_a_pass(
        llm_double: ChatDouble, make_ctx: MakeCtx, resources: WorkerResources, tmp_path: Path,
        ad: tuple[dict[str, Any], dict[str, Any]]) -> None:
    layout = variant_layout(AdPlan.model_validate(ad[1]["plan"]), "1080x1080-v0")
    resources.settings = vlm_settings(llm_double, tmp_path)
    llm_double.script = ["http400"] * 20
    out = critic_gate_stage.stage_fn(gate_ctx(make_ctx, ad, painted(layout, BLUE)))
    assert out["critic_status"] == "error" and out["passed"] is False and out["regenerate"] is False
    assert out["score"] is None and all("HTTP 400" in w for w in out["warnings"])

    unconfigured = WorkerResources(Settings(home=tmp_path, vlm_model="v"))  # a model but no endpoint
    assert isinstance(critic_gate.worker_vlm(unconfigured), Exception)
    resources.settings = unconfigured.settings
    resources.extras.pop(critic_gate.VLM_KEY)
    out = critic_gate_stage.stage_fn(gate_ctx(make_ctx, ad, painted(layout, BLUE)))
    assert out["critic_status"] == "error" and out["passed"] is False and "ATELIER_VLM_BASE_URL" in out["detail"]


def test_bad_upstream_fails_the_stage(make_ctx: MakeCtx, ad: tuple[dict[str, Any], dict[str, Any]]) -> None:
    ctx = make_ctx(stage="gate.critic", kind="campaign", spec=CAMPAIGN, item="1080x1080-v0",
                   upstream={"plan.ad_layout": ad[1], "gpu.background": {"seed": 1}})
    with pytest.raises(StageError, match="no background_key"):
        critic_gate_stage.stage_fn(ctx)
    ctx.task.upstream["gpu.background"] = {"background_key": "tenants/t1/jobs/job-1/gpu.background/nope.png"}
    with pytest.raises(StageError, match="not in storage"):
        critic_gate_stage.stage_fn(ctx)
    ctx.task.upstream["gpu.background"] = {"skipped": "studio backdrop: drawn by the renderer"}
    out = critic_gate_stage.stage_fn(ctx)
    assert out["passed"] is False and out["artifact_key"] is None and "skipped" in out["detail"]


def _boxed(index: int, role: str, bbox: tuple[float, float, float, float], *, ok: bool) -> RegionVerdict:
    return RegionVerdict(index=index, role=role, caption=f"caption {index}", bbox=bbox, present=ok, matches=ok,
                         confidence=90, reason="r")


def test_a_repair_is_asked_once_for_the_regions_a_mask_can_redraw() -> None:
    lemon = _boxed(2, "entity", (0.1, 0.6, 0.4, 0.9), ok=False)
    rep = report("ok", [_boxed(0, "background", (0, 0, 1, 1), ok=True), lemon,
                        _boxed(3, "product", (0.5, 0.2, 0.9, 0.9), ok=True)])
    out = gate_output(rep, artifact_key="k")
    hint = repair_hint(out, rep, regeneration=0, repaired=False, product_image=True)
    assert hint == {"gate": "gate.critic", "artifact_key": "k", "regeneration": 0,
                    "regions": [{"index": 2, "role": "entity", "bbox": [0.1, 0.6, 0.4, 0.9], "prompt": "caption 2"}]}
    # a repair that still fails gets a new seed; so does a failed full-canvas background
    assert repair_hint(out, rep, regeneration=1, repaired=True, product_image=True) is None
    whole = report("ok", [_boxed(0, "background", (0, 0, 1, 1), ok=False), lemon])
    assert repair_hint(gate_output(whole, artifact_key="k"), whole, regeneration=0, repaired=False,
                       product_image=False) is None
    # a product photo is exact pixels (never repainted); a product drawn from its caption can be
    photo = report("ok", [_boxed(3, "product", (0.5, 0.2, 0.9, 0.9), ok=False)])
    out = gate_output(photo, artifact_key="k")
    assert repair_hint(out, photo, regeneration=0, repaired=False, product_image=True) is None
    assert repair_hint(out, photo, regeneration=0, repaired=False, product_image=False)["regions"][0]["index"] == 3
    # failed regions over half the canvas: a new image
    big = report("ok", [_boxed(1, "entity", (0, 0, 0.8, 0.8), ok=False)])
    assert repair_hint(gate_output(big, artifact_key="k"), big, regeneration=0, repaired=False,
                       product_image=False) is None
    passed = report("ok", [lemon.__class__(**{**lemon.__dict__, "present": True, "matches": True})])
    assert repair_hint(gate_output(passed, artifact_key="k"), passed, regeneration=0, repaired=False,
                       product_image=False) is None
