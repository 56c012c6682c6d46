from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from atelier_contracts.errors import StageError
from atelier_contracts.plans import AdPlan, LayoutPlan, RegionalPlan, StoryPlan
from atelier_contracts.tasks import T_STAGE_DONE
from atelier_planner import worker
from atelier_planner.stages.ad_layout import ad_layout as ad_layout_stage
from atelier_planner.stages.ad_prompts import ad_prompts as ad_prompts_stage
from atelier_planner.stages.characters import characters as characters_stage
from atelier_planner.stages.culture import culture as culture_stage
from atelier_planner.stages.scene_layout import scene_layout as scene_layout_stage
from atelier_planner.stages.scenes import scenes as scenes_stage
from atelier_planner.stages.story import story as story_stage
from atelier_runtime.stage_runner import StageContext, run_stage

CAMPAIGN = {
    "brand": {"name": "Glow", "palette": ["#0F766E", "#F0FDFA"]},
    "product": {"name": "Glow Serum", "description": "A vitamin C serum for bright skin.", "image": "up-1"},
    "taglines": ["Bright skin, every day"], "cta": "Try it", "sizes": ["1080x1080", "1200x628", "1080x1920"],
    "variants": 2,
}
STORY = {"premise": "A boy and his grandmother make mochi for the new year.", "culture": "Japan", "language": "en",
         "pages": 3}
MakeCtx = Callable[..., StageContext]


def _stored_plan(ctx: StageContext, name: str) -> Any:
    rec = next(a for a in ctx.artifacts if a.name == name)
    assert rec.kind == "plan" and rec.content_type == "application/json"
    assert rec.key == f"{ctx.task.key_prefix}/{ctx.task.stage}/{name}.json"
    return json.loads(ctx.get(rec.key))


def test_campaign_chain(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(stage="plan.ad_prompts", kind="campaign", spec=CAMPAIGN)
    prompts = ad_prompts_stage.stage_fn(ctx)
    assert {"prompts", "negative_prompt", "regional", "planner", "metrics"} <= set(prompts)
    assert prompts["planner"]["backend"] == "rules" and prompts["metrics"]["regional"]["covers_canvas_exactly_once"]
    RegionalPlan.model_validate(prompts["regional"])
    assert _stored_plan(ctx, "ad_prompts") == prompts

    ctx2 = make_ctx(stage="plan.ad_layout", kind="campaign", spec=CAMPAIGN, upstream={"plan.ad_prompts": prompts})
    out = ad_layout_stage.stage_fn(ctx2)
    plan = AdPlan.model_validate(out["plan"])
    assert plan.prompts.background == prompts["prompts"]["background"]
    assert [v.target.name for v in plan.variants] == CAMPAIGN["sizes"]
    assert plan.planner.model_dump() == {"backend": "rules", "model": "rules-v1", "prompt_version": "rules-1"}
    assert _stored_plan(ctx2, "ad_layout") == out


def test_story_chain(make_ctx: MakeCtx) -> None:
    up: dict[str, Any] = {}
    ctx = make_ctx(stage="plan.culture", kind="story", spec=STORY)
    up["plan.culture"] = culture_stage.stage_fn(ctx)
    assert up["plan.culture"]["culture"]["key"] == "japan" and up["plan.culture"]["culture_notes"]

    ctx = make_ctx(stage="plan.story", kind="story", spec=STORY, upstream={"plan.culture": up["plan.culture"]})
    up["plan.story"] = story_stage.stage_fn(ctx)
    assert {"title", "story", "language"} <= set(up["plan.story"])

    ctx = make_ctx(stage="plan.characters", kind="story", spec=STORY,
                   upstream={k: up[k] for k in ("plan.story", "plan.culture")})
    up["plan.characters"] = characters_stage.stage_fn(ctx)
    ids = [c["id"] for c in up["plan.characters"]["characters"]]
    assert ids[:2] == ["c0", "c1"] and len(ids) <= 3

    ctx = make_ctx(stage="plan.scenes", kind="story", spec=STORY,
                   upstream={k: up[k] for k in ("plan.story", "plan.characters", "plan.culture")})
    scenes = scenes_stage.stage_fn(ctx)
    plan = StoryPlan.model_validate(scenes["plan"])
    assert len(plan.scenes) == 3 and plan.story == up["plan.story"]["story"]
    assert [c.model_dump() for c in plan.characters] == up["plan.characters"]["characters"]

    sheets = {cid: {"sheet_key": f"tenants/t1/jobs/job-1/gpu.character_sheet/{cid}.png", "seed": 1} for cid in ids}
    ctx = make_ctx(stage="plan.scene_layout", kind="story", spec=STORY,
                   upstream={"plan.scenes": scenes, "gpu.character_sheet": sheets})
    out = scene_layout_stage.stage_fn(ctx)
    layouts = [LayoutPlan.model_validate(lp) for lp in out["layouts"]]
    assert len(layouts) == 3
    for lp in layouts:
        chars = [b for b in lp.boxes if b.role == "character"]
        assert chars and all(b.ref_artifact in {s["sheet_key"] for s in sheets.values()} for b in chars)
        assert any(b.role == "background" for b in lp.boxes)
    assert _stored_plan(ctx, "scene_layout") == out


def test_scene_layout_without_sheet_fails_clearly(make_ctx: MakeCtx) -> None:
    scenes = scenes_stage.stage_fn(make_ctx(stage="plan.scenes", kind="story", spec=STORY))
    ctx = make_ctx(stage="plan.scene_layout", kind="story", spec=STORY, upstream={"plan.scenes": scenes})
    with pytest.raises(StageError, match="c0"):
        scene_layout_stage.stage_fn(ctx)


def test_same_job_writes_same_bytes(make_ctx: MakeCtx) -> None:
    a = make_ctx(stage="plan.culture", kind="story", spec=STORY)
    culture_stage.stage_fn(a)
    first = a.get(a.artifacts[0].key)
    b = make_ctx(stage="plan.culture", kind="story", spec=STORY)
    culture_stage.stage_fn(b)
    assert b.artifacts[0].key == a.artifacts[0].key and b.get(b.artifacts[0].key) == first


def test_run_stage_reports_bad_spec_as_non_retryable(make_ctx: MakeCtx, app_stub: Any) -> None:
    ctx = make_ctx(stage="plan.ad_prompts", kind="campaign", spec={"brand": {}})
    result = run_stage(app_stub, ctx.task.model_dump(mode="json"), ad_prompts_stage.stage_fn)
    assert result.status == "failed" and result.error is not None and result.error.retryable is False
    # it ended inside started_notice_after_s: the result alone (the orchestrator records the start from it)
    assert [name for name, _ in app_stub.sent] == [T_STAGE_DONE]


def test_tasks_registered_under_stage_names() -> None:
    assert ad_prompts_stage.name == "atelier.stage.plan.ad_prompts"
    assert scene_layout_stage.name == "atelier.stage.plan.scene_layout"


def test_backend_comes_from_settings_once_per_worker(make_ctx: MakeCtx, resources: Any) -> None:
    from atelier_planner.backends.rules import RulesBackend

    ctx = make_ctx(stage="plan.culture", kind="story", spec=STORY)
    first = worker.backend_for(ctx)
    assert isinstance(first, RulesBackend) and worker.backend_for(make_ctx(stage="plan.story", kind="story",
                                                                          spec=STORY)) is first
    assert resources.extras[worker.BACKEND_KEY] is first


def test_every_stage_output_records_planner_and_metrics(make_ctx: MakeCtx) -> None:
    out = ad_layout_stage.stage_fn(make_ctx(stage="plan.ad_layout", kind="campaign", spec=CAMPAIGN))
    assert out["planner"] == {"backend": "rules", "engine": "rules", "model": "rules-v1", "prompt_version": "rules-1",
                              "fallback": None}
    assert set(out["metrics"]) == set(CAMPAIGN["sizes"]) == set(out["layouts"])
    assert out["layouts"]["1080x1920"]["safe_zone"]["top"] == 0.14
    ctx = make_ctx(stage="plan.story", kind="story", spec=STORY)
    story = story_stage.stage_fn(ctx)
    assert story["metrics"]["words"] <= 250 and story["metrics"]["reading_grade"] is not None
    assert ctx.artifacts[0].meta == {"planner": story["planner"], "metrics": story["metrics"]}
    scenes = scenes_stage.stage_fn(make_ctx(stage="plan.scenes", kind="story", spec=STORY))
    assert len(scenes["metrics"]["scenes"]) == STORY["pages"]


def test_a_story_language_the_rules_planner_cannot_write_fails_its_stage_for_good(make_ctx: MakeCtx) -> None:
    spec = {**STORY, "language": "de"}
    ctx = make_ctx(stage="plan.culture", kind="story", spec=spec)
    culture = culture_stage.stage_fn(ctx)
    ctx = make_ctx(stage="plan.story", kind="story", spec=spec, upstream={"plan.culture": culture})
    with pytest.raises(StageError, match="cannot write 'de'") as err:
        story_stage.stage_fn(ctx)
    assert err.value.retryable is False and err.value.field == "spec.language"


def test_an_llm_plan_that_fell_back_to_rules_is_a_warning_not_only_metadata() -> None:
    from atelier_planner.backends.rules import rules_run

    fallback = {"from": "openai", "model": "atelier-llm", "error": "LLMError: connection refused"}
    (w,) = worker.fallback_warnings("plan.story", rules_run(fallback=fallback))
    assert w.startswith("plan.story: the LLM planner (openai:atelier-llm) failed (LLMError: connection refused)")
    per_item = {"backend": "llm", "fallback": None, "items": {"1080x1080": rules_run(fallback=fallback),
                                                              "1200x628": {"backend": "llm", "fallback": None}}}
    assert [x.split(":")[0] for x in worker.fallback_warnings("plan.ad_layout", per_item)] == ["plan.ad_layout[1080x1080]"]
    assert worker.fallback_warnings("plan.story", rules_run()) == []
