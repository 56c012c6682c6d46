"""``plan.characters`` (KAHANI): the cast — at most three characters, each with a sheet prompt and a seed."""

from __future__ import annotations

from atelier_contracts.catalogue import S_CHARACTERS
from atelier_contracts.stage_io import CharactersInputs, CharactersOutput
from atelier_runtime.stage_runner import StageContext, stage_task

from ..worker import backend_for, plan, story_spec


@stage_task(S_CHARACTERS)
def characters(ctx: StageContext) -> CharactersOutput:
    up = ctx.inputs(CharactersInputs)
    spec = story_spec(ctx)
    return plan(ctx, CharactersOutput, lambda: backend_for(ctx).characters(
        spec, job_id=ctx.task.job_id, story_output=up.story, culture_output=up.culture))
