"""``plan.ad_prompts`` (PAID stage 1): product and brand → foreground and background captions, and the
background caption recaptioned into RPG regional prompts. With a VLM, the product photo is shown to it."""

from __future__ import annotations

from atelier_contracts.catalogue import S_AD_PROMPTS
from atelier_contracts.stage_io import AdPromptsOutput, NoInputs
from atelier_runtime.stage_runner import StageContext, stage_task

from ..worker import backend_for, campaign_spec, plan, product_image


@stage_task(S_AD_PROMPTS)
def ad_prompts(ctx: StageContext) -> AdPromptsOutput:
    ctx.inputs(NoInputs)
    spec = campaign_spec(ctx)
    backend = backend_for(ctx)
    photo = product_image(ctx, spec) if getattr(backend, "vlm", None) is not None else None
    return plan(ctx, AdPromptsOutput, lambda: backend.ad_prompts(spec, job_id=ctx.task.job_id, product_image=photo))
