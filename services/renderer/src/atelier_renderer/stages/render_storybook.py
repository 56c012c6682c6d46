"""``render.storybook``: one storybook page — the scene (as the identity gate kept it) and its narration in the
story's language — with a JSON sidecar of its layout, from which ``deliver`` builds the PDF and HTML."""

from __future__ import annotations

import json

from atelier_contracts import items
from atelier_contracts.catalogue import S_STORYBOOK
from atelier_contracts.errors import StageError
from atelier_contracts.stage_io import RenderPageOutput, StorybookInputs
from atelier_runtime.images import png_bytes
from atelier_runtime.stage_runner import StageContext, stage_task

from ..storybook import render_page_with_layout

PAGE_SIZE = (1024, 1280)
MAX_PIXELS = 40_000_000


@stage_task(S_STORYBOOK)
def render_storybook(ctx: StageContext) -> RenderPageOutput:
    up = ctx.inputs(StorybookInputs)
    index = ctx.parsed_item(items.parse_scene)
    plan = up.scenes.plan
    scene = next((s for s in plan.scenes if s.index == index), None)
    if scene is None:
        raise StageError(f"StoryPlan has no scene {index}", retryable=False)
    image = ctx.get_image(up.scene.scene_key, "scene image", max_pixels=MAX_PIXELS)
    page, layout = render_page_with_layout(scene_image=image, narration=scene.narration, page_number=index + 1,
                                           title=plan.title if index == 0 else None, size=PAGE_SIZE)
    rec = ctx.put(name=ctx.task.item, data=png_bytes(page), ext="png", content_type="image/png", kind="page",
                  width=page.width, height=page.height, meta={"page": index + 1, "language": plan.language})
    sidecar = {"page": index + 1, "title": plan.title, "language": plan.language, "narration": scene.narration,
               "pages": len(plan.scenes), **layout}
    ctx.put(name=ctx.task.item, data=json.dumps(sidecar, ensure_ascii=False, sort_keys=True).encode("utf-8"),
            ext="json", content_type="application/json", kind="page-layout", meta={"page": index + 1})
    return RenderPageOutput(render_key=rec.key, width=page.width, height=page.height, page=index + 1)
