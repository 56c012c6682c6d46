"""``plan.ad_layout`` (PAID stage 2, CreatiLayout for the background objects): one layout per target size —
product, logo, taglines, underlay, CTA and background-object boxes — inside each channel's safe zone."""

from __future__ import annotations

from atelier_contracts.catalogue import S_AD_LAYOUT
from atelier_contracts.stage_io import AdLayoutInputs, AdLayoutOutput
from atelier_runtime.stage_runner import StageContext, stage_task

from ..worker import backend_for, campaign_spec, plan


@stage_task(S_AD_LAYOUT)
def ad_layout(ctx: StageContext) -> AdLayoutOutput:
    up = ctx.inputs(AdLayoutInputs)
    spec = campaign_spec(ctx)
    return plan(ctx, AdLayoutOutput, lambda: backend_for(ctx).ad_layout(
        spec, job_id=ctx.task.job_id, prompts_output=up.ad_prompts))
