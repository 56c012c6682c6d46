"""Text-to-image: one prompt, one seed, one image, on an SDXL or FLUX pipeline.

The recipe is deliberately flat (diffusers' PHILOSOPHY: readable over abstract):

1. ``check_inputs`` says exactly which argument is wrong and how to fix it.
2. ``generation_size`` picks the size to generate for a target size: same aspect ratio, longest
   side capped, both sides multiples of 16 (SDXL's VAE downsamples 8x; FLUX also packs latents 2x2).
3. ``run`` seeds a CPU ``torch.Generator`` (same seed → same image on any device), calls the
   pipeline, and reports every finished step through ``on_step(step, total)``. Whatever ``on_step``
   raises (a cancel, for instance) stops the denoising loop and leaves ``run`` unchanged.

FLUX.1 is guidance-distilled: ``guidance`` goes into its guidance embedding and there is no negative
branch, so ``negative_prompt`` is ignored for the ``flux`` family.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from atelier_shared.errors import StageError

FAMILIES = ("sdxl", "flux")
MIN_SIDE = 32
MAX_SIDE = 4096
MAX_STEPS = 200
MAX_SEED = 2**32 - 1


def _fail(argument: str, detail: str) -> StageError:
    return StageError(f"text_to_image: `{argument}` {detail}", retryable=False, field=argument)


def generation_size(target_w: int, target_h: int, max_side: int, multiple: int = 16) -> tuple[int, int]:
    """Size to generate for a ``target_w`` x ``target_h`` output.

    Keeps the aspect ratio, never upscales, keeps the longest side <= ``max_side``, rounds each side to
    a multiple of ``multiple`` and keeps each side >= 32 (a 32x1000 banner becomes 32 x <=max_side).
    """
    for name, value in (("target_w", target_w), ("target_h", target_h), ("max_side", max_side), ("multiple", multiple)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(name, f"must be a positive integer, got {value!r}")
    floor_side = math.ceil(MIN_SIDE / multiple) * multiple
    cap = (max_side // multiple) * multiple
    if cap < floor_side:
        raise _fail("max_side", f"is {max_side}; it must allow at least {floor_side} pixels at multiples of {multiple}")
    scale = min(1.0, max_side / max(target_w, target_h))

    def side(value: int) -> int:
        # half-up rounding (Python's round() goes to even, which makes 72 → 64 but 88 → 96)
        return max(floor_side, min(cap, math.floor(value * scale / multiple + 0.5) * multiple))

    return side(target_w), side(target_h)


def check_inputs(pipe: Any, *, family: str, prompt: Any, negative_prompt: Any, width: Any, height: Any, steps: Any,
                 guidance: Any, seed: Any, on_step: Any = None, multiple: int = 16) -> None:
    """Raise ``StageError(retryable=False)`` naming the first bad argument; return None if all are fine."""
    if family not in FAMILIES:
        raise _fail("family", f"is {family!r}; expected one of {', '.join(FAMILIES)}")
    denoiser = "unet" if family == "sdxl" else "transformer"
    if getattr(pipe, denoiser, None) is None:
        raise _fail("pipe", f"is a {type(pipe).__name__} without a `{denoiser}`; it is not a {family} pipeline")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _fail("prompt", "must be a non-empty string")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise _fail("negative_prompt", f"must be a string or None, got {type(negative_prompt).__name__}")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(name, f"must be an integer, got {value!r}")
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise _fail(name, f"is {value}; it must be between {MIN_SIDE} and {MAX_SIDE}")
        if value % multiple:
            raise _fail(name, f"is {value}; it must be a multiple of {multiple} (use generation_size())")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
        raise _fail("steps", f"is {steps!r}; it must be an integer between 1 and {MAX_STEPS}")
    if not isinstance(guidance, int | float) or isinstance(guidance, bool) or not 0.0 <= guidance <= 50.0:
        raise _fail("guidance", f"is {guidance!r}; it must be a number between 0 and 50")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise _fail("seed", f"is {seed!r}; it must be an integer between 0 and 2**32-1")
    if on_step is not None and not callable(on_step):
        raise _fail("on_step", "must be callable as on_step(step, total) or None")


def run(pipe: Any, *, family: str, prompt: str, negative_prompt: str | None = "", width: int, height: int,
        steps: int, guidance: float, seed: int, on_step: Callable[[int, int], None] | None = None) -> Any:
    """Generate one image.

    Args:
        pipe: a loaded ``StableDiffusionXLPipeline`` (family ``sdxl``) or ``FluxPipeline`` (``flux``).
        family: ``sdxl`` or ``flux``.
        prompt: what to draw.
        negative_prompt: what to avoid (SDXL classifier-free guidance; ignored by FLUX).
        width, height: output size in pixels, multiples of 16 (see ``generation_size``).
        steps: denoising steps.
        guidance: CFG scale for SDXL (<= 1 disables the negative branch); guidance embedding for FLUX.
        seed: 0..2**32-1; the same seed, inputs and model give the same image.
        on_step: called as ``on_step(step, total)`` after each denoising step, ``step`` from 1.
            Anything it raises propagates out of ``run`` and ends the generation.

    Returns:
        An RGB ``PIL.Image.Image`` of ``width`` x ``height``.
    """
    import torch

    check_inputs(pipe, family=family, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                 steps=steps, guidance=guidance, seed=seed, on_step=on_step)
    # A CPU generator gives the same starting noise on every device.
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def on_step_end(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None:
            total = getattr(pipeline, "num_timesteps", None) or steps
            on_step(step + 1, total)
        return {}

    common: dict[str, Any] = {
        "prompt": prompt, "width": width, "height": height, "num_inference_steps": steps,
        "guidance_scale": float(guidance), "generator": generator, "callback_on_step_end": on_step_end,
        "callback_on_step_end_tensor_inputs": ["latents"], "output_type": "pil",
    }
    if family == "sdxl":
        output = pipe(negative_prompt=negative_prompt or None, **common)
    else:
        output = pipe(**common)
    image = output.images[0]
    return image if image.mode == "RGB" else image.convert("RGB")
