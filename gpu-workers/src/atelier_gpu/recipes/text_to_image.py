"""Text-to-image: a prompt and a seed per image, on an SDXL, FLUX, SD3 or PixArt-Sigma pipeline.

The recipe is deliberately flat (diffusers' PHILOSOPHY: readable over abstract):

1. ``check_inputs`` says exactly which argument is wrong and how to fix it.
2. ``generation_size`` picks the size to generate for a target size: same aspect ratio, longest
   side capped, both sides multiples of 16 (SDXL's VAE downsamples 8x; FLUX also packs latents 2x2).
3. ``run_batch`` seeds one CPU ``torch.Generator`` per image (same seed → same image on any device,
   alone or batched), calls the pipeline once, and reports every finished step through
   ``on_step(step, total)``. Whatever ``on_step`` raises (a cancel, for instance) stops the
   denoising loop. ``run`` is ``run_batch`` with one seed.

FLUX.1 is guidance-distilled: ``guidance`` goes into its guidance embedding and there is no negative
branch, so ``negative_prompt`` is ignored for the ``flux`` family. PixArt runs without its resolution
binning (the size is chosen here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from atelier_contracts.errors import StageError

from .. import prompt_encoding
from .common import (
    FAMILIES,
    MIN_SIDE,
    NEGATIVE_FAMILIES,
    check_common,
    generators,
    rgb_images,
    sampling_kwargs,
    step_callback,
    text_kwargs,
)

__all__ = ["FAMILIES", "check_inputs", "generation_size", "run", "run_batch"]


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
                 guidance: Any, seed: Any = 0, on_step: Any = None, multiple: int = 16,
                 seeds: Any = None) -> None:
    """Raise ``StageError(retryable=False)`` naming the first bad argument; return None if all are fine."""
    check_common("text_to_image", pipe, family=family, width=width, height=height, steps=steps, guidance=guidance,
                 seeds=[seed] if seeds is None else seeds, on_step=on_step, multiple=multiple)
    prompts = prompt if isinstance(prompt, list) else [prompt]
    if not prompts:
        raise _fail("prompt", "must be a non-empty string")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise _fail("prompt", "must be a non-empty string")
    if isinstance(prompt, list) and seeds is not None and len(prompt) != len(seeds):
        raise _fail("prompt", f"has {len(prompt)} prompts for {len(seeds)} seeds; give one prompt or one per seed")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise _fail("negative_prompt", f"must be a string or None, got {type(negative_prompt).__name__}")


def run_batch(pipe: Any, *, family: str, prompt: str | list[str], negative_prompt: str | None = "", width: int,
              height: int, steps: int, guidance: float, seeds: list[int],
              on_step: Callable[[int, int], None] | None = None, timesteps: list[int] | None = None,
              eta: float | None = None, report: dict[str, Any] | None = None) -> list[Any]:
    """Generate ``len(seeds)`` images in one pipeline call, image ``i`` from ``seeds[i]``.

    Args:
        pipe: a loaded SDXL, FLUX, SD3 or PixArt-Sigma pipeline (``family``).
        family: ``sdxl``, ``flux``, ``sd3`` or ``pixart``.
        prompt: one prompt for every image, or one per seed.
        negative_prompt: what to avoid (ignored by FLUX, which has no negative branch).
        width, height: output size in pixels, multiples of 16 (see ``generation_size``).
        steps: denoising steps (ignored when ``timesteps`` is given).
        guidance: CFG scale (<= 1 disables the negative branch); FLUX's guidance embedding.
        seeds: one seed per image; the same seed, inputs and model give the same image alone or batched.
        on_step: called as ``on_step(step, total)`` after each step; whatever it raises stops the run.
        timesteps, eta: few-step preset values (``atelier_gpu.presets``), SDXL only.
        report: filled with what the prompt encoding saw (``atelier_gpu.prompt_encoding``: token counts per
            tokenizer, and the words an encoder's window dropped) when given.

    SDXL and FLUX prompts are encoded by compel (weights, prompts longer than CLIP's 77 tokens in chunks); the
    other families use their pipelines' own encoding.

    Returns:
        ``len(seeds)`` RGB ``PIL.Image.Image`` of ``width`` x ``height``.
    """
    check_inputs(pipe, family=family, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                 steps=steps, guidance=guidance, seeds=seeds, on_step=on_step)
    n = len(seeds)
    prompts = prompt if isinstance(prompt, list) else [prompt] * n
    call: dict[str, Any] = {
        "prompt": prompts, "width": width, "height": height, "generator": generators(seeds),
        "callback_on_step_end": step_callback(on_step, len(timesteps) if timesteps else steps),
        "callback_on_step_end_tensor_inputs": ["latents"], "output_type": "pil",
        **sampling_kwargs(family, steps=steps, guidance=guidance, timesteps=timesteps, eta=eta),
        **text_kwargs(pipe, family),
    }
    if family in NEGATIVE_FAMILIES:
        call["negative_prompt"] = [negative_prompt or ""] * n if negative_prompt else None
    encoded = prompt_encoding.encode(pipe, family, prompts, negative_prompt if family in NEGATIVE_FAMILIES else None,
                                     count=report is not None)
    if encoded is not None:  # embeddings instead of text: nothing is cut at 77 tokens, weights are weights
        call.pop("prompt")
        call.pop("negative_prompt", None)
        call.update(encoded.kwargs)
        if report is not None:
            report.update(encoded.report())
    elif report is not None:
        report.update(encoder="pipeline", tokens=prompt_encoding.token_counts(pipe, prompts))
    return rgb_images(pipe(**call))


def run(pipe: Any, *, family: str, prompt: str, negative_prompt: str | None = "", width: int, height: int,
        steps: int, guidance: float, seed: int, on_step: Callable[[int, int], None] | None = None,
        timesteps: list[int] | None = None, eta: float | None = None, report: dict[str, Any] | None = None) -> Any:
    """Generate one image (``run_batch`` with one seed); an RGB ``PIL.Image.Image`` of ``width`` x ``height``."""
    check_inputs(pipe, family=family, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                 steps=steps, guidance=guidance, seed=seed, on_step=on_step)
    return run_batch(pipe, family=family, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                     steps=steps, guidance=guidance, seeds=[seed], on_step=on_step, timesteps=timesteps, eta=eta,
                     report=report)[0]
