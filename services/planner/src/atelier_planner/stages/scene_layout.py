"""``plan.scene_layout`` (CreatiLayout): character and backdrop boxes for every scene, each character's box
pointing at their sheet (``gpu.character_sheet``) as its reference."""

from __future__ import annotations

from atelier_contracts.catalogue import S_CHARACTER_SHEET, S_SCENE_LAYOUT
from atelier_contracts.errors import StageError
from atelier_contracts.stage_io import SceneLayoutInputs, SceneLayoutOutput
from atelier_runtime.stage_runner import StageContext, stage_task

from .. import kahani
from ..worker import backend_for, plan, story_spec


@stage_task(S_SCENE_LAYOUT)
def scene_layout(ctx: StageContext) -> SceneLayoutOutput:
    up = ctx.inputs(SceneLayoutInputs)
    sheets = {cid: sheet.sheet_key for cid, sheet in up.sheets.items()}
    try:
        return plan(ctx, SceneLayoutOutput, lambda: backend_for(ctx).scene_layouts(
            up.scenes.plan, sheets=sheets, job_id=ctx.task.job_id, pages=kahani.page_layouts(story_spec(ctx))))
    except KeyError as exc:
        raise StageError(f"{S_SCENE_LAYOUT}: {exc.args[0]} (upstream {S_CHARACTER_SHEET})", retryable=False) from exc
