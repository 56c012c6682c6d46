"""Celery stage tasks of the planning queue (thin edges: parse, call the backend, store, return).

Every stage also stores its output as a JSON artifact (kind ``plan``) named after the stage without
the ``plan.`` prefix, e.g. ``tenants/t/jobs/j/plan.ad_layout/ad_layout.json``. Outputs keep the keys the
GPU workers and renderer read (``plan``, ``prompts``, ``characters``, ``layouts``, ...) and add
``planner`` (backend, engine, model, prompt version, fallback) and ``metrics`` (layout quality); the
artifact's meta carries the same ``planner`` and ``metrics``.

The backend comes from settings (``ATELIER_PLANNER_BACKEND``) and is built once per worker process.
"""

from __future__ import annotations

import json
from typing import Any

from atelier_shared.errors import NotFound, StageError, StorageError
from atelier_shared.plans import StoryPlan
from atelier_shared.specs import CampaignSpec, StorySpec
from atelier_shared.stage_runner import StageContext, WorkerResources, resources, stage_task
from atelier_shared.tasks import (
    Q_PLANNING,
    S_AD_LAYOUT,
    S_AD_PROMPTS,
    S_CHARACTER_SHEET,
    S_CHARACTERS,
    S_CULTURE,
    S_SCENE_LAYOUT,
    S_SCENES,
    S_STORY,
)
from celery import shared_task
from pydantic import ValidationError

from .backends import PlannerBackend, backend_from_settings
from .llm.errors import EngineUnavailable, LLMError
from .preview import T_PREVIEW, answer_preview

BACKEND_KEY = "atelier_planner.backend"


def upload_key(tenant_id: str, upload_id: str) -> str:
    """Where an upload lives (the API stores every upload as PNG; the key format is a contract)."""
    return f"tenants/{tenant_id}/uploads/{upload_id}.png"


def worker_backend(res: WorkerResources) -> PlannerBackend:
    """This process's backend (built once from its settings; a test may put its own under BACKEND_KEY)."""
    with res.lock:
        backend = res.extras.get(BACKEND_KEY)
        if backend is None:
            backend = backend_from_settings(res.settings)
            res.extras[BACKEND_KEY] = backend
    return backend  # type: ignore[no-any-return]


def backend_for(ctx: StageContext) -> PlannerBackend:
    """The backend a stage uses: the worker's, from settings."""
    return worker_backend(ctx.res)


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
    meta = {"planner": output.get("planner"), "metrics": output.get("metrics")}
    ctx.put(name=name, data=plan_json(output), ext="json", content_type="application/json", kind="plan",
            meta={k: v for k, v in meta.items() if v is not None})
    return output


def _upstream(ctx: StageContext, stage: str) -> dict[str, Any] | None:
    value = ctx.task.upstream.get(stage)
    return value if isinstance(value, dict) else None


def _planned(ctx: StageContext, call: Any) -> dict[str, Any]:
    """Run a backend call; LLM failures that reach here (fallback disabled) become stage errors."""
    try:
        return call()  # type: ignore[no-any-return]
    except EngineUnavailable as exc:
        raise StageError(f"{ctx.task.stage}: {exc}", retryable=False) from exc
    except LLMError as exc:
        raise StageError(f"{ctx.task.stage}: {exc}", retryable=True) from exc


def product_image(ctx: StageContext, spec: CampaignSpec) -> bytes | None:
    """The product photo for a VLM, read from storage (None without one, or when it cannot be read)."""
    if not spec.product.image:
        return None
    try:
        return ctx.get(upload_key(ctx.task.tenant_id, spec.product.image))
    except (NotFound, StorageError):
        return None


@stage_task(S_AD_PROMPTS)
def ad_prompts(ctx: StageContext) -> dict[str, Any]:
    spec = _campaign(ctx)
    backend = backend_for(ctx)
    image = product_image(ctx, spec) if getattr(backend, "vlm", None) is not None else None
    return store_plan(ctx, _planned(ctx, lambda: backend.ad_prompts(spec, job_id=ctx.task.job_id, product_image=image)))


@stage_task(S_AD_LAYOUT)
def ad_layout(ctx: StageContext) -> dict[str, Any]:
    spec = _campaign(ctx)
    return store_plan(ctx, _planned(ctx, lambda: backend_for(ctx).ad_layout(
        spec, job_id=ctx.task.job_id, prompts_output=_upstream(ctx, S_AD_PROMPTS))))


@stage_task(S_CULTURE)
def culture(ctx: StageContext) -> dict[str, Any]:
    spec = _story(ctx)
    return store_plan(ctx, _planned(ctx, lambda: backend_for(ctx).culture(spec, job_id=ctx.task.job_id)))


@stage_task(S_STORY)
def story(ctx: StageContext) -> dict[str, Any]:
    spec = _story(ctx)
    return store_plan(ctx, _planned(ctx, lambda: backend_for(ctx).story(
        spec, job_id=ctx.task.job_id, culture_output=_upstream(ctx, S_CULTURE))))


@stage_task(S_CHARACTERS)
def characters(ctx: StageContext) -> dict[str, Any]:
    spec = _story(ctx)
    return store_plan(ctx, _planned(ctx, lambda: backend_for(ctx).characters(
        spec, job_id=ctx.task.job_id, story_output=_upstream(ctx, S_STORY), culture_output=_upstream(ctx, S_CULTURE))))


@stage_task(S_SCENES)
def scenes(ctx: StageContext) -> dict[str, Any]:
    spec = _story(ctx)
    return store_plan(ctx, _planned(ctx, lambda: backend_for(ctx).scenes(
        spec, job_id=ctx.task.job_id, story_output=_upstream(ctx, S_STORY),
        characters_output=_upstream(ctx, S_CHARACTERS), culture_output=_upstream(ctx, S_CULTURE))))


@stage_task(S_SCENE_LAYOUT)
def scene_layout(ctx: StageContext) -> dict[str, Any]:
    scenes_out = _upstream(ctx, S_SCENES)
    if not scenes_out or "plan" not in scenes_out:
        raise StageError(f"{S_SCENE_LAYOUT} needs the output of {S_SCENES}", retryable=False)
    plan = StoryPlan.model_validate(scenes_out["plan"])
    sheets_out = _upstream(ctx, S_CHARACTER_SHEET) or {}
    sheets = {cid: str(v["sheet_key"]) for cid, v in sheets_out.items() if isinstance(v, dict) and v.get("sheet_key")}
    try:
        out = _planned(ctx, lambda: backend_for(ctx).scene_layouts(plan, sheets=sheets, job_id=ctx.task.job_id))
    except KeyError as exc:
        raise StageError(f"{S_SCENE_LAYOUT}: {exc.args[0]} (upstream {S_CHARACTER_SHEET})", retryable=False) from exc
    return store_plan(ctx, out)


@shared_task(name=T_PREVIEW, bind=True, acks_late=True, ignore_result=True, queue=Q_PLANNING)
def preview(self: Any, request: dict[str, Any]) -> None:
    """``POST /v1/plans:preview``: plan a spec without a job and reply on the request's reply queue."""
    res = resources(self.app)
    tenant = str(request.get("tenant_id", ""))

    def image(upload_id: str) -> bytes | None:
        try:
            return res.store.get(upload_key(tenant, upload_id))
        except (NotFound, StorageError):
            return None

    backend = worker_backend(res)
    answer_preview(self.app, backend, request, product_image=image if getattr(backend, "vlm", None) else None)


# gate.critic (issue 3): the VLM critic as a quality gate, in its own module; imported here so the planning
# role registers it with the other planner stages
from . import critic_gate  # noqa: E402,F401
