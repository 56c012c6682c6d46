"""GPU stage tasks: backgrounds, character sheets, scenes (text-to-image) and the watermark.

Each task is a thin edge: read its upstream plan from the payload, pick prompt, seed and size, call
one recipe, write one PNG artifact under the stage's deterministic key, return a small JSON output.
Registered under ``atelier.stage.<stage>`` by ``atelier_shared.stage_runner.stage_task``; Celery
imports this module for the ``gpu.*`` roles (``atelier_shared.celeryapp.ROLE_MODULES``).
"""

from __future__ import annotations

import io
import time
from typing import Any

from atelier_shared.errors import StageError
from atelier_shared.plans import AdPlan, Character, LayoutPlan, StoryPlan
from atelier_shared.stage_runner import StageContext, WorkerResources, stage_task
from atelier_shared.tasks import (
    S_AD_LAYOUT,
    S_BACKGROUND,
    S_CHARACTER_SHEET,
    S_CHARACTERS,
    S_RENDER_AD,
    S_SCENE,
    S_SCENE_LAYOUT,
    S_SCENES,
    S_STORYBOOK,
)
from PIL import Image
from pydantic import BaseModel, ValidationError

from .recipes import text_to_image

RENDER_STAGES = (S_RENDER_AD, S_STORYBOOK)
_REGISTRY_KEY = "atelier_gpu.registry"


# --- helpers shared by the diffusion stages -------------------------------------------------------

def registry(res: WorkerResources) -> Any:
    """The worker's model registry, built once per process from the settings."""
    reg = res.extras.get(_REGISTRY_KEY)
    if reg is None:
        with res.lock:
            reg = res.extras.get(_REGISTRY_KEY)
            if reg is None:
                from .registry import ModelRegistry

                reg = ModelRegistry(res.settings.resolved_models_file(), cache_size=res.settings.model_cache_size)
                res.extras[_REGISTRY_KEY] = reg
    return reg


def _upstream(ctx: StageContext, stage: str, key: str) -> Any:
    try:
        return ctx.task.upstream[stage][key]
    except (KeyError, TypeError):
        raise StageError(f"{ctx.task.stage}: upstream output {stage}.{key} is missing", retryable=False,
                         field=f"upstream.{stage}.{key}") from None


def _parse(model: type[BaseModel], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise StageError(f"{where} is not a valid {model.__name__}: {exc}", retryable=False, field=where) from exc


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _generate(ctx: StageContext, *, prompt: str, negative_prompt: str, target: tuple[int, int], seed: int
              ) -> tuple[Image.Image, dict[str, Any]]:
    """Pick model, steps and size from spec + settings, run text-to-image, count the pipeline seconds."""
    reg = registry(ctx.res)
    model_id = ctx.task.spec.get("model") or ctx.settings.default_model
    spec = reg.spec(model_id)
    steps = ctx.settings.gen_steps or spec.steps
    max_side = min(ctx.settings.gen_max_side, spec.max_side or ctx.settings.gen_max_side)
    width, height = text_to_image.generation_size(target[0], target[1], max_side)
    pipe = reg.load(model_id)
    started = time.perf_counter()
    try:
        image = text_to_image.run(
            pipe, family=spec.family, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
            steps=steps, guidance=spec.guidance, seed=seed, on_step=ctx.progress,
        )
    finally:
        ctx.gpu_seconds += time.perf_counter() - started
    return image, {"width": width, "height": height, "seed": seed, "model": model_id, "steps": steps}


def _put_image(ctx: StageContext, image: Image.Image, *, kind: str, info: dict[str, Any], prompt: str) -> str:
    rec = ctx.put(name=ctx.task.item or kind, data=_png(image), ext="png", content_type="image/png", kind=kind,
                  width=image.width, height=image.height, meta={**info, "prompt": prompt})
    return rec.key


def parse_background_item(item: str) -> tuple[str, int]:
    """``"1080x1080-v0"`` → ``("1080x1080", 0)``."""
    size, sep, variant = item.rpartition("-v")
    if not sep or not size or not variant.isdigit():
        raise StageError(f"gpu.background: item {item!r} is not '<size>-v<variant>', e.g. '1080x1080-v0'",
                         retryable=False, field="item")
    return size, int(variant)


def background_seed(plan_seed: int, variant_index: int, size_index: int) -> int:
    return (plan_seed + 1000 * variant_index + size_index) % 2**32


# --- stages ---------------------------------------------------------------------------------------

@stage_task(S_BACKGROUND)
def background(ctx: StageContext) -> dict[str, Any]:
    """One ad background for one size x variant (item ``<size>-v<variant>``)."""
    plan: AdPlan = _parse(AdPlan, _upstream(ctx, S_AD_LAYOUT, "plan"), f"upstream.{S_AD_LAYOUT}.plan")
    size_name, variant_index = parse_background_item(ctx.task.item)
    index = next((i for i, v in enumerate(plan.variants) if v.target.name == size_name), None)
    if index is None:
        known = ", ".join(v.target.name for v in plan.variants)
        raise StageError(f"gpu.background: the ad plan has no variant for size {size_name!r} (has: {known})",
                         retryable=False, field="item")
    variant = plan.variants[index]
    seed = background_seed(plan.seed, variant_index, index)
    image, info = _generate(ctx, prompt=plan.prompts.background, negative_prompt=plan.negative_prompt,
                            target=(variant.target.w, variant.target.h), seed=seed)
    key = _put_image(ctx, image, kind="background", info=info, prompt=plan.prompts.background)
    return {"background_key": key, **info}


@stage_task(S_CHARACTER_SHEET)
def character_sheet(ctx: StageContext) -> dict[str, Any]:
    """The canonical square reference image of one character (item = character id)."""
    characters = _upstream(ctx, S_CHARACTERS, "characters")
    if not isinstance(characters, list):
        raise StageError(f"upstream.{S_CHARACTERS}.characters must be a list", retryable=False)
    found = [c for c in characters if isinstance(c, dict) and c.get("id") == ctx.task.item]
    if not found:
        raise StageError(f"gpu.character_sheet: no character with id {ctx.task.item!r} upstream", retryable=False,
                         field="item")
    character: Character = _parse(Character, found[0], f"upstream.{S_CHARACTERS}.characters[{ctx.task.item}]")
    side = ctx.settings.gen_max_side
    image, info = _generate(ctx, prompt=character.sheet_prompt, negative_prompt="", target=(side, side),
                            seed=character.seed % 2**32)
    key = _put_image(ctx, image, kind="character_sheet", info=info, prompt=character.sheet_prompt)
    return {"sheet_key": key, **info}


@stage_task(S_SCENE)
def scene(ctx: StageContext) -> dict[str, Any]:
    """One story scene (item ``s<index>``), sized and seeded by its layout plan."""
    item = ctx.task.item
    if not (item.startswith("s") and item[1:].isdigit()):
        raise StageError(f"gpu.scene: item {item!r} is not 's<scene index>', e.g. 's0'", retryable=False, field="item")
    scene_index = int(item[1:])
    plan: StoryPlan = _parse(StoryPlan, _upstream(ctx, S_SCENES, "plan"), f"upstream.{S_SCENES}.plan")
    ordered = sorted(plan.scenes, key=lambda s: s.index)
    position = next((i for i, s in enumerate(ordered) if s.index == scene_index), None)
    if position is None:
        raise StageError(f"gpu.scene: the story plan has no scene {scene_index}", retryable=False, field="item")
    layouts = _upstream(ctx, S_SCENE_LAYOUT, "layouts")
    if not isinstance(layouts, list) or position >= len(layouts):
        raise StageError(f"gpu.scene: upstream.{S_SCENE_LAYOUT}.layouts has no layout for scene {scene_index}",
                         retryable=False)
    layout: LayoutPlan = _parse(LayoutPlan, layouts[position], f"upstream.{S_SCENE_LAYOUT}.layouts[{position}]")
    prompt = ordered[position].scene_prompt
    image, info = _generate(ctx, prompt=prompt, negative_prompt=layout.negative_prompt or plan.negative_prompt,
                            target=(layout.width, layout.height), seed=layout.seed)
    key = _put_image(ctx, image, kind="scene", info=info, prompt=prompt)
    return {"scene_key": key, **info}


# the watermark stage lives in its own module (identity/provenance work grows there)
from . import watermark_tasks  # noqa: E402,F401
