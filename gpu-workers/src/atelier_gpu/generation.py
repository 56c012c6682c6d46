"""What the diffusion stages share: the worker's model registry, picking model, steps and size, and the
``GenRequest`` whose ``finish`` stores the image under the stage's deterministic key."""

from __future__ import annotations

import time
from typing import Any

from atelier_contracts import items
from atelier_runtime.images import png_bytes
from atelier_runtime.stage_runner import StageContext, WorkerResources
from PIL import Image

from .recipes import text_to_image
from .registry import ModelRegistry
from .serving import GenRequest

REGISTRY_KEY = "atelier_gpu.registry"
REGIONAL_FAMILIES = ("sdxl", "flux")  # families with regional attention, inpainting and ControlNets here


def registry(res: WorkerResources) -> ModelRegistry:
    """The worker's model registry (its warm pipelines), built once per process from the settings."""
    reg = res.extras.get(REGISTRY_KEY)
    if reg is None:
        with res.lock:
            reg = res.extras.get(REGISTRY_KEY)
            if reg is None:
                budget = getattr(res.settings, "model_memory_gb", None)
                reg = ModelRegistry(res.settings.resolved_models_file(), cache_size=res.settings.model_cache_size,
                                    memory_budget_bytes=int(budget * 2**30) if budget else None)
                res.extras[REGISTRY_KEY] = reg
    return reg  # type: ignore[no-any-return]


def model_and_size(ctx: StageContext, target: tuple[int, int]) -> tuple[str, Any, int, tuple[int, int]]:
    """Model id, its spec, the step count and the generation size for ``target`` (spec + settings)."""
    reg = registry(ctx.res)
    model_id = ctx.task.spec.get("model") or ctx.settings.default_model
    spec = reg.spec(model_id)
    steps = len(spec.timesteps) if spec.timesteps else (ctx.settings.gen_steps or spec.steps)
    max_side = min(ctx.settings.gen_max_side, spec.max_side or ctx.settings.gen_max_side)
    return model_id, spec, steps, text_to_image.generation_size(target[0], target[1], max_side)


def generate(ctx: StageContext, *, prompt: str, negative_prompt: str, target: tuple[int, int], seed: int
             ) -> tuple[Image.Image, dict[str, Any]]:
    """Text-to-image in this call (not batched): model, steps and size from spec + settings; counts GPU seconds."""
    reg = registry(ctx.res)
    model_id, spec, steps, (width, height) = model_and_size(ctx, target)
    with reg.call_lock:  # one pipeline call at a time in this process
        pipe = reg.load(model_id)
        started = time.perf_counter()
        encoding: dict[str, Any] = {}
        try:
            image = text_to_image.run(
                pipe, family=spec.family, prompt=prompt, negative_prompt=negative_prompt, width=width,
                height=height, steps=steps, guidance=spec.guidance, seed=seed, on_step=ctx.progress,
                timesteps=list(spec.timesteps) if spec.timesteps else None, eta=spec.eta, report=encoding,
            )
        finally:
            ctx.gpu_seconds += time.perf_counter() - started
    return image, {"width": width, "height": height, "seed": seed, "model": model_id, "steps": steps,
                   "prompt_encoding": encoding}


def put_image(ctx: StageContext, image: Image.Image, *, kind: str, info: dict[str, Any], prompt: str) -> str:
    """Store one generated image (a gate's regeneration under its own name, ``1080x1080-v0.r1``); its key."""
    name = items.attempt_name(ctx.task.item, ctx.task.regeneration) if ctx.task.item else kind
    rec = ctx.put(name=name, data=png_bytes(image), ext="png", content_type="image/png", kind=kind,
                  width=image.width, height=image.height, meta={**info, "prompt": prompt})
    return rec.key


def request(ctx: StageContext, *, recipe: str, target: tuple[int, int], seed: int, prompt: str,
            negative_prompt: str, params: dict[str, Any], kind: str, output_key: str) -> GenRequest:
    """A GenRequest whose ``finish`` stores the PNG and returns the stage output under ``output_key``."""
    model_id, spec, steps, (width, height) = model_and_size(ctx, target)
    info = {"width": width, "height": height, "seed": seed, "model": model_id, "steps": steps}

    def finish(c: StageContext, image: Image.Image, extra: dict[str, Any]) -> dict[str, Any]:
        out = {**info, **extra}
        key = put_image(c, image, kind=kind, info=out, prompt=prompt)
        return {output_key: key, **out}

    return GenRequest(ctx=ctx, recipe=recipe, model=model_id, width=width, height=height, steps=steps,
                      guidance=spec.guidance, seed=seed, prompt=prompt, negative_prompt=negative_prompt or "",
                      params=params, timesteps=spec.timesteps, eta=spec.eta, finish=finish)
