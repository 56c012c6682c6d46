"""``plan.ad_prompts`` (PAID stage 1): product and brand → foreground and background captions, and the
background caption recaptioned into RPG regional prompts. With a VLM, the product photo is shown to it; its
aspect ratio (else the category's usual one) is recorded for the layouts."""

from __future__ import annotations

from typing import Any

from atelier_contracts.catalogue import S_AD_PROMPTS
from atelier_contracts.stage_io import AdPromptsOutput, NoInputs
from atelier_runtime.stage_runner import StageContext, stage_task

from .. import paid
from ..worker import backend_for, campaign_spec, plan, product_image


@stage_task(S_AD_PROMPTS)
def ad_prompts(ctx: StageContext) -> AdPromptsOutput:
    ctx.inputs(NoInputs)
    spec = campaign_spec(ctx)
    backend = backend_for(ctx)
    photo = product_image(ctx, spec)
    vlm_photo = photo if getattr(backend, "vlm", None) is not None else None

    def call() -> dict[str, Any]:
        out = backend.ad_prompts(spec, job_id=ctx.task.job_id, product_image=vlm_photo)
        # the product's own shape, measured on its photo (else its category's): the layouts shape its box to it
        return {**out, "product_aspect": paid.image_aspect(photo) or paid.category_aspect(spec)}

    return plan(ctx, AdPromptsOutput, call)
