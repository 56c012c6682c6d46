"""``plan.scenes`` (KAHANI): the story plan — one scene per page with narration, backdrop, cast and prompt."""

from __future__ import annotations

from atelier_contracts.catalogue import S_SCENES
from atelier_contracts.stage_io import ScenesInputs, ScenesOutput
from atelier_runtime.stage_runner import StageContext, stage_task

from .. import kahani
from ..worker import backend_for, plan, story_spec


@stage_task(S_SCENES)
def scenes(ctx: StageContext) -> ScenesOutput:
    up = ctx.inputs(ScenesInputs)
    spec = story_spec(ctx)
    # the story's own page layouts (spec.layouts) place the cast of their pages, whichever backend planned it
    return plan(ctx, ScenesOutput, lambda: kahani.apply_page_layouts(backend_for(ctx).scenes(
        spec, job_id=ctx.task.job_id, story_output=up.story,
        characters_output=up.characters, culture_output=up.culture), spec))
