"""``gpu.scene``: one story scene (item ``s<index>``) from its ``LayoutPlan`` (``plan.scene_layout``), the cast
kept recognisable by the identity path the settings allow (``recipes/identity.py``: InstantID, IP-Adapter, or
the weight-free reference-only attention on the character sheets). A gate's regeneration offsets the seed and
is stored under its own name (``s2.r1``)."""

from __future__ import annotations

from typing import Any

from atelier_contracts import items
from atelier_contracts.catalogue import S_SCENE, S_SCENE_LAYOUT
from atelier_contracts.errors import StageError
from atelier_contracts.plans import LayoutPlan
from atelier_contracts.stage_io import SceneInputs, SceneOutput
from atelier_runtime.stage_runner import StageContext, stage_task
from PIL import Image

from .. import serving
from ..generation import REGIONAL_FAMILIES, generate, model_and_size, registry, request
from ..recipes import identity as identity_recipe


def _scene_generator(layout: LayoutPlan) -> Any:
    """The ``generate`` the identity path calls for the scene's pixels: the layout recipe on the scene's boxes."""

    def generate_scene(ctx: StageContext, *, prompt: str, negative_prompt: str, target: tuple[int, int], seed: int
                       ) -> tuple[Image.Image, dict[str, Any]]:
        model_id, spec, steps, (width, height) = model_and_size(ctx, target)
        if spec.family not in REGIONAL_FAMILIES:
            return generate(ctx, prompt=prompt, negative_prompt=negative_prompt, target=target, seed=seed)
        # the scene prompt (characters, poses, backdrop) is the base prompt; the boxes ground the cast
        plan = layout.model_copy(update={"global_caption": prompt}).model_dump(mode="json")
        req = request(ctx, recipe="layout", target=target, seed=seed, prompt=prompt,
                      negative_prompt=negative_prompt, params={"plan": plan}, kind="scene", output_key="scene_key")
        outcome = serving.execute(registry(ctx.res), [req], max_batch=1)[id(req)]
        if outcome.error is not None:
            raise outcome.error
        info = {"width": width, "height": height, "seed": seed, "model": model_id, "steps": steps}
        return outcome.image, {**info, **outcome.info}

    return generate_scene


@stage_task(S_SCENE)
def scene(ctx: StageContext) -> SceneOutput:
    """One story scene, sized and seeded by its layout plan."""
    up = ctx.inputs(SceneInputs)
    scene_index = ctx.parsed_item(items.parse_scene)
    plan = up.scenes.plan
    ordered = sorted(plan.scenes, key=lambda s: s.index)
    position = next((i for i, s in enumerate(ordered) if s.index == scene_index), None)
    if position is None:
        raise StageError(f"gpu.scene: the story plan has no scene {scene_index}", retryable=False, field="item")
    layouts = up.scene_layout.layouts
    if position >= len(layouts):
        raise StageError(f"gpu.scene: upstream.{S_SCENE_LAYOUT}.layouts has no layout for scene {scene_index}",
                         retryable=False)
    layout = layouts[position]
    prompt = ordered[position].scene_prompt
    image, info = identity_recipe.generate_scene(
        ctx, generate=_scene_generator(layout), prompt=prompt,
        negative_prompt=layout.negative_prompt or plan.negative_prompt, target=(layout.width, layout.height),
        seed=identity_recipe.scene_seed(layout.seed, ctx.task.regeneration),
        cast=list(dict.fromkeys(c.character_id for c in ordered[position].cast)), layout=layout)
    key = identity_recipe.put_scene(ctx, image, info=info, prompt=prompt)
    return SceneOutput.model_validate({"scene_key": key, **info})
