"""Celery stage tasks of the planning queue (thin edges: parse, call the backend, store, return).

Every stage also stores its output as a JSON artifact (kind ``plan``) named after the stage without
the ``plan.`` prefix, e.g. ``tenants/t/jobs/j/plan.ad_layout/ad_layout.json``.
"""

from __future__ import annotations

import json
from typing import Any

from atelier_shared.errors import StageError
from atelier_shared.plans import StoryPlan
from atelier_shared.specs import CampaignSpec, StorySpec
from atelier_shared.stage_runner import StageContext, stage_task
from atelier_shared.tasks import (
    S_AD_LAYOUT,
    S_AD_PROMPTS,
    S_CHARACTER_SHEET,
    S_CHARACTERS,
    S_CULTURE,
    S_SCENE_LAYOUT,
    S_SCENES,
    S_STORY,
)
from pydantic import ValidationError

from .backends import PlannerBackend, get_backend


def backend_for(ctx: StageContext) -> PlannerBackend:
    """The backend a stage uses; LLM backends will be chosen here from settings/spec.model."""
    return get_backend("rules")


def _campaign(ctx: StageContext) -> CampaignSpec:
    try:
        return CampaignSpec.model_validate(ctx.task.spec)
    except ValidationError as exc:
        raise StageError(f"campaign spec is invalid: {exc}", retryable=False) from exc


def _story(ctx: StageContext) -> StorySpec:
    try:
        return StorySpec.model_validate(ctx.task.spec)
    except ValidationError as exc:
        raise StageError(f"story spec is invalid: {exc}", retryable=False) from exc


def plan_json(data: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, UTF-8): the same plan always writes the same bytes."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False, indent=2).encode("utf-8")


def store_plan(ctx: StageContext, output: dict[str, Any]) -> dict[str, Any]:
    name = ctx.task.stage.removeprefix("plan.")
    ctx.put(name=name, data=plan_json(output), ext="json", content_type="application/json", kind="plan",
            meta={"planner": backend_for(ctx).info.model_dump()})
    return output


def _upstream(ctx: StageContext, stage: str) -> dict[str, Any] | None:
    value = ctx.task.upstream.get(stage)
    return value if isinstance(value, dict) else None


@stage_task(S_AD_PROMPTS)
def ad_prompts(ctx: StageContext) -> dict[str, Any]:
    spec = _campaign(ctx)
    return store_plan(ctx, backend_for(ctx).ad_prompts(spec, job_id=ctx.task.job_id))


@stage_task(S_AD_LAYOUT)
def ad_layout(ctx: StageContext) -> dict[str, Any]:
    spec = _campaign(ctx)
    plan = backend_for(ctx).ad_layout(spec, job_id=ctx.task.job_id, prompts_output=_upstream(ctx, S_AD_PROMPTS))
    return store_plan(ctx, {"plan": plan.model_dump(mode="json")})


@stage_task(S_CULTURE)
def culture(ctx: StageContext) -> dict[str, Any]:
    spec = _story(ctx)
    return store_plan(ctx, backend_for(ctx).culture(spec, job_id=ctx.task.job_id))


@stage_task(S_STORY)
def story(ctx: StageContext) -> dict[str, Any]:
    spec = _story(ctx)
    return store_plan(ctx, backend_for(ctx).story(spec, job_id=ctx.task.job_id,
                                                  culture_output=_upstream(ctx, S_CULTURE)))


@stage_task(S_CHARACTERS)
def characters(ctx: StageContext) -> dict[str, Any]:
    spec = _story(ctx)
    return store_plan(ctx, backend_for(ctx).characters(spec, job_id=ctx.task.job_id,
                                                       story_output=_upstream(ctx, S_STORY),
                                                       culture_output=_upstream(ctx, S_CULTURE)))


@stage_task(S_SCENES)
def scenes(ctx: StageContext) -> dict[str, Any]:
    spec = _story(ctx)
    plan = backend_for(ctx).scenes(spec, job_id=ctx.task.job_id, story_output=_upstream(ctx, S_STORY),
                                   characters_output=_upstream(ctx, S_CHARACTERS),
                                   culture_output=_upstream(ctx, S_CULTURE))
    return store_plan(ctx, {"plan": plan.model_dump(mode="json")})


@stage_task(S_SCENE_LAYOUT)
def scene_layout(ctx: StageContext) -> dict[str, Any]:
    scenes_out = _upstream(ctx, S_SCENES)
    if not scenes_out or "plan" not in scenes_out:
        raise StageError(f"{S_SCENE_LAYOUT} needs the output of {S_SCENES}", retryable=False)
    plan = StoryPlan.model_validate(scenes_out["plan"])
    sheets_out = _upstream(ctx, S_CHARACTER_SHEET) or {}
    sheets = {cid: str(v["sheet_key"]) for cid, v in sheets_out.items() if isinstance(v, dict) and v.get("sheet_key")}
    try:
        layouts = backend_for(ctx).scene_layouts(plan, sheets=sheets, job_id=ctx.task.job_id)
    except KeyError as exc:
        raise StageError(f"{S_SCENE_LAYOUT}: {exc.args[0]} (upstream {S_CHARACTER_SHEET})", retryable=False) from exc
    return store_plan(ctx, {"layouts": [lp.model_dump(mode="json") for lp in layouts]})
