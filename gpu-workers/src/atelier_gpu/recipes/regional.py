"""Regional (RPG): complementary regional diffusion from a ``RegionalPlan``.

The plan splits the canvas with RPG's ratio grammar (``"1,1,1;1,1,1"``: rows separated by ``;``, the
first number of a row its height, the rest its cell widths) and gives one prompt per cell, left to
right, top to bottom. At every step, in every cross/joint attention layer, each cell's prompt acts
inside its cell and is blended with the base prompt: ``(1 - base_ratio)·regional + base_ratio·base``
(``atelier_gpu.attention`` has the processors: SDXL through cross-attention processors, FLUX through
attention masks over ``[base text, region texts, image]``).

1. ``check_inputs`` says exactly what is wrong.
2. ``cell_masks`` turns the split ratio into one mask per cell on the latent grid (exact: cells tile it).
3. ``run_batch`` encodes each region prompt, installs the processors for this call only, runs the
   pipeline once for every seed, and restores the pipeline's own processors.

``generate_with_regions`` is the engine shared with the layout recipe (boxes instead of a grid, and
grounding for the first fraction of steps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from atelier_contracts.plans import RegionalPlan, split_ratio_to_boxes
from pydantic import ValidationError

from .. import prompt_encoding
from ..attention import RegionalState, flux_processors, installed, sdxl_processors
from .common import (
    NEGATIVE_FAMILIES,
    check_common,
    check_prompt,
    fail,
    generators,
    rgb_images,
    sampling_kwargs,
    step_callback,
    text_kwargs,
)

RECIPE = "regional"
FAMILIES = ("sdxl", "flux")
LATENT_FACTOR = 8
FLUX_TEXT_TOKENS = 256  # tokens per text chunk (base and each region) for FLUX


def parse_plan(plan: Any, recipe: str = RECIPE) -> RegionalPlan:
    if isinstance(plan, RegionalPlan):
        return plan
    try:
        return RegionalPlan.model_validate(plan)
    except ValidationError as exc:
        raise fail(recipe, "plan", f"is not a valid RegionalPlan: {exc}") from exc


def cell_masks(split_ratio: str, width: int, height: int) -> torch.Tensor:
    """(cells, height/8, width/8) 0/1 masks of the split ratio's cells, in BREAK order; they tile the grid."""
    h, w = height // LATENT_FACTOR, width // LATENT_FACTOR
    cells = split_ratio_to_boxes(split_ratio)
    masks = torch.zeros(len(cells), h, w)
    for i, (_, _, (x1, y1, x2, y2)) in enumerate(cells):
        last_col = x2 >= 1.0 - 1e-9
        last_row = y2 >= 1.0 - 1e-9
        c1, c2 = round(x1 * w), w if last_col else round(x2 * w)
        r1, r2 = round(y1 * h), h if last_row else round(y2 * h)
        masks[i, r1:r2, c1:c2] = 1.0
    return masks


def region_prompts(plan: RegionalPlan) -> list[str]:
    """Region prompts in cell order (plan regions are matched to cells by row and column)."""
    cells = split_ratio_to_boxes(plan.split_ratio)
    by_pos = {(r.row, r.col): r.prompt for r in plan.regions}
    if set(by_pos) != {(r, c) for r, c, _ in cells}:
        # plans written in BREAK order without matching row/col indices: take them in order
        return [r.prompt for r in plan.regions]
    return [by_pos[(r, c)] for r, c, _ in cells]


def check_inputs(pipe: Any, *, family: Any, plan: Any, width: Any, height: Any, steps: Any, guidance: Any,
                 seeds: Any, negative_prompt: Any = None, on_step: Any = None) -> RegionalPlan:
    """Raise ``StageError(retryable=False)`` naming the first bad argument; return the parsed plan."""
    check_common(RECIPE, pipe, family=family, width=width, height=height, steps=steps, guidance=guidance,
                 seeds=seeds, on_step=on_step, families=FAMILIES)
    parsed = parse_plan(plan)
    check_prompt(RECIPE, "plan.base_prompt", parsed.base_prompt)
    for i, prompt in enumerate(region_prompts(parsed)):
        check_prompt(RECIPE, f"plan.regions[{i}].prompt", prompt)
    check_prompt(RECIPE, "negative_prompt", negative_prompt, optional=True)
    masks = cell_masks(parsed.split_ratio, width, height)
    empty = [i for i in range(masks.shape[0]) if masks[i].sum() == 0]
    if empty:
        raise fail(RECIPE, "plan.split_ratio", f"cell(s) {empty} are smaller than one latent pixel at "
                                               f"{width}x{height}; use fewer or wider cells")
    return parsed


def generate_with_regions(pipe: Any, *, family: str, base_prompt: str, negative_prompt: str | None,
                          prompts: Sequence[str], masks: torch.Tensor, base_ratio: float, width: int, height: int,
                          steps: int, guidance: float, seeds: Sequence[int],
                          on_step: Callable[[int, int], None] | None = None, active_steps: int | None = None,
                          timesteps: Sequence[int] | None = None, eta: float | None = None,
                          call_pipe: Any = None, extra: dict[str, Any] | None = None) -> list[Any]:
    """One pipeline call where ``prompts[r]`` acts inside ``masks[r]`` (latent grid) for ``active_steps`` steps.

    ``call_pipe`` (default ``pipe``) is the pipeline that runs, e.g. an inpainting pipeline over the same
    components; ``extra`` adds its own arguments (``image``, ``mask_image``, ``strength``).
    """
    call_pipe = call_pipe if call_pipe is not None else pipe
    n = len(seeds)
    device = pipe._execution_device
    state = RegionalState(masks=masks, base_ratio=float(base_ratio))
    total = len(timesteps) if timesteps else steps

    def after_step(step: int) -> None:
        if active_steps is not None and step >= active_steps:
            state.active = False  # grounding is over: the base prompt alone from here

    state.active = active_steps is None or active_steps > 0
    call: dict[str, Any] = {
        "width": width, "height": height, "generator": generators(seeds), "num_images_per_prompt": n,
        "callback_on_step_end": step_callback(on_step, total, after_step),
        "callback_on_step_end_tensor_inputs": ["latents"], "output_type": "pil",
        **sampling_kwargs(family, steps=steps, guidance=guidance, timesteps=timesteps, eta=eta),
        **(extra or {}),
    }
    if not prompts:  # nothing regional: plain text-to-image of the base prompt
        call.pop("num_images_per_prompt")
        negative = negative_prompt if family in NEGATIVE_FAMILIES else None
        encoded = prompt_encoding.encode(pipe, family, [base_prompt] * n, negative)
        if encoded is not None:  # SDXL/FLUX: weighted, never cut at 77 tokens
            call.update(encoded.kwargs)
        else:
            call.update(prompt=[base_prompt] * n, **text_kwargs(pipe, family))
            if family in NEGATIVE_FAMILIES:
                call["negative_prompt"] = [negative_prompt] * n if negative_prompt else None
        return rgb_images(call_pipe(**call))
    with torch.no_grad():
        if family == "sdxl":
            # the base prompt and the region captions through compel (weighted, chunked past 77 tokens; the
            # regions in one call so their contexts share one length); the base attends as usual, each region
            # inside its mask (attention.py)
            regions = prompt_encoding.encode(pipe, family, list(prompts), None)
            base = prompt_encoding.encode(pipe, family, [base_prompt], negative_prompt or None)
            assert regions is not None and base is not None
            state.contexts = regions.kwargs["prompt_embeds"]
            state.cfg = guidance > 1.0 and pipe.unet.config.time_cond_proj_dim is None
            call.update(base.kwargs)
            processors = sdxl_processors(pipe.unet, state)
            model = pipe.unet
        elif family == "flux":
            tokens = min(FLUX_TEXT_TOKENS, int(pipe.tokenizer_2.model_max_length))
            encoded = [pipe.encode_prompt(prompt=p, prompt_2=None, device=device, num_images_per_prompt=1,
                                          max_sequence_length=tokens) for p in [base_prompt, *prompts]]
            state.text_tokens = tokens
            call.update(prompt_embeds=torch.cat([e[0] for e in encoded], dim=1), pooled_prompt_embeds=encoded[0][1])
            processors = flux_processors(pipe.transformer, state, (height // 16, width // 16))
            model = pipe.transformer
        else:  # check_inputs keeps other families out
            raise fail(RECIPE, "family", f"{family} has no regional attention here")
    with installed(model, processors):
        output = call_pipe(**call)
    return rgb_images(output)


def run_batch(pipe: Any, *, family: str, plan: RegionalPlan | dict[str, Any], width: int, height: int, steps: int,
              guidance: float, seeds: list[int], negative_prompt: str | None = None,
              on_step: Callable[[int, int], None] | None = None, timesteps: list[int] | None = None,
              eta: float | None = None) -> list[Any]:
    """Generate one image per seed from a ``RegionalPlan``.

    Args:
        pipe: a loaded SDXL (``family="sdxl"``) or FLUX (``"flux"``) pipeline.
        plan: base prompt, base ratio, split ratio and one prompt per cell.
        width, height: output size, multiples of 16.
        steps, guidance: sampling; ``timesteps``/``eta`` from a few-step preset (SDXL).
        seeds: one per image; ``negative_prompt`` defaults to the plan's (ignored by FLUX).
        on_step: ``on_step(step, total)`` after every step; what it raises stops the run.

    Returns:
        ``len(seeds)`` RGB images of ``width`` x ``height``.
    """
    parsed = check_inputs(pipe, family=family, plan=plan, width=width, height=height, steps=steps, guidance=guidance,
                          seeds=seeds, negative_prompt=negative_prompt, on_step=on_step)
    return generate_with_regions(
        pipe, family=family, base_prompt=parsed.base_prompt,
        negative_prompt=negative_prompt if negative_prompt is not None else parsed.negative_prompt,
        prompts=region_prompts(parsed), masks=cell_masks(parsed.split_ratio, width, height),
        base_ratio=parsed.base_ratio, width=width, height=height, steps=steps, guidance=guidance, seeds=seeds,
        on_step=on_step, timesteps=timesteps, eta=eta)


def run(pipe: Any, *, seed: int, **kwargs: Any) -> Any:
    """One image: ``run_batch`` with ``seeds=[seed]``."""
    return run_batch(pipe, seeds=[seed], **kwargs)[0]
