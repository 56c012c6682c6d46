"""``plan.story`` (KAHANI): the story, in the requested language, grounded in the culture notes."""

from __future__ import annotations

from atelier_contracts.catalogue import S_STORY
from atelier_contracts.stage_io import StoryInputs, StoryOutput
from atelier_runtime.stage_runner import StageContext, stage_task

from ..worker import backend_for, plan, story_spec


@stage_task(S_STORY)
def story(ctx: StageContext) -> StoryOutput:
    up = ctx.inputs(StoryInputs)
    spec = story_spec(ctx)
    return plan(ctx, StoryOutput, lambda: backend_for(ctx).story(
        spec, job_id=ctx.task.job_id, culture_output=up.culture))
