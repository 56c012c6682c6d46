"""``plan.culture`` (KAHANI): specific culture notes — setting, dress, food, festival, names — that ground the story."""

from __future__ import annotations

from atelier_contracts.catalogue import S_CULTURE
from atelier_contracts.stage_io import CultureOutput, NoInputs
from atelier_runtime.stage_runner import StageContext, stage_task

from ..worker import backend_for, plan, story_spec


@stage_task(S_CULTURE)
def culture(ctx: StageContext) -> CultureOutput:
    ctx.inputs(NoInputs)
    spec = story_spec(ctx)
    return plan(ctx, CultureOutput, lambda: backend_for(ctx).culture(spec, job_id=ctx.task.job_id))
