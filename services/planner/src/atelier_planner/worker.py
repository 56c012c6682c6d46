"""What the planning worker's stages share: the process's backend, the job spec, storing a plan.

The backend comes from settings (``ATELIER_PLANNER_BACKEND``) and is built once per worker process. Every
planning stage stores its output as a JSON artifact (kind ``plan``) named after the stage without the
``plan.`` prefix, e.g. ``tenants/t/jobs/j/plan.ad_layout/ad_layout.json``; the artifact's meta carries the
output's ``planner`` (backend, engine, model, prompt version, fallback) and ``metrics``; a planning output with
prompts also carries ``prompt_tokens``, each prompt's length in CLIP tokens (:mod:`atelier_planner.tokens`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from atelier_contracts.errors import NotFound, StageError, StorageError
from atelier_contracts.keys import upload_key
from atelier_contracts.specs import CampaignSpec, StorySpec
from atelier_contracts.stage_io import StageOutput, read_output
from atelier_runtime.stage_runner import StageContext, WorkerResources
from pydantic import ValidationError

from .backends import PlannerBackend, backend_from_settings
from .kahani import UnsupportedLanguage
from .llm.errors import EngineUnavailable, LLMError
from .tokens import with_prompt_tokens

BACKEND_KEY = "atelier_planner.backend"
O = TypeVar("O", bound=StageOutput)  # noqa: E741


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


def campaign_spec(ctx: StageContext) -> CampaignSpec:
    try:
        return CampaignSpec.model_validate(ctx.task.spec)
    except ValidationError as exc:
        raise StageError(f"campaign spec is invalid: {exc}", retryable=False) from exc


def story_spec(ctx: StageContext) -> StorySpec:
    try:
        return StorySpec.model_validate(ctx.task.spec)
    except ValidationError as exc:
        raise StageError(f"story spec is invalid: {exc}", retryable=False) from exc


def plan_json(data: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, UTF-8): the same plan always writes the same bytes."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False, indent=2).encode("utf-8")


def plan(ctx: StageContext, model: type[O], call: Callable[[], dict[str, Any]]) -> O:
    """Run a backend call, read its JSON as the stage's output ``model`` and store it as the stage's plan artifact.

    LLM failures that reach here (fallback disabled) become stage errors: retryable unless the engine is
    unavailable (a setting, which a retry does not change).
    """
    try:
        raw = call()
    except EngineUnavailable as exc:
        raise StageError(f"{ctx.task.stage}: {exc}", retryable=False) from exc
    except LLMError as exc:
        raise StageError(f"{ctx.task.stage}: {exc}", retryable=True) from exc
    except UnsupportedLanguage as exc:  # the rules templates (directly, or as the LLM's fallback) cannot write it
        raise StageError(f"{ctx.task.stage}: {exc}", retryable=False, field="spec.language") from exc
    raw = with_prompt_tokens(raw)  # every prompt's length in CLIP tokens, whichever backend wrote it
    warnings = fallback_warnings(ctx.task.stage, raw.get("planner"))
    if warnings:  # said as job.warning events (dashboard, webhooks), not only kept in the plan's metadata
        raw = {**raw, "warnings": [*raw.get("warnings", []), *warnings]}
    output = read_output(model, raw, stage=ctx.task.stage)
    data = output.to_json()
    meta = {"planner": data.get("planner"), "metrics": data.get("metrics")}
    ctx.put(name=ctx.task.stage.removeprefix("plan."), data=plan_json(data), ext="json",
            content_type="application/json", kind="plan", meta={k: v for k, v in meta.items() if v is not None})
    return output


def fallback_warnings(stage: str, run: Any) -> list[str]:
    """One warning per LLM plan that fell back to the rules planner (the run record of ``backends.llm``; per-item
    runs under ``items``)."""
    if not isinstance(run, dict):
        return []
    runs = {"": run, **{str(k): v for k, v in (run.get("items") or {}).items() if isinstance(v, dict)}}
    out = []
    for item, r in runs.items():
        fb = r.get("fallback")
        if isinstance(fb, dict) and (item or not run.get("items")):
            where = f"{stage}[{item}]" if item else stage
            out.append(f"{where}: the LLM planner ({fb.get('from')}:{fb.get('model')}) failed "
                       f"({str(fb.get('error') or 'no reason given')[:200]}); the rules planner made this plan")
    return out


def product_image(ctx: StageContext, spec: CampaignSpec) -> bytes | None:
    """The product photo for a VLM, read from storage (None without one, or when it cannot be read)."""
    if not spec.product.image:
        return None
    try:
        return ctx.get(upload_key(ctx.task.tenant_id, spec.product.image))
    except (NotFound, StorageError):
        return None
