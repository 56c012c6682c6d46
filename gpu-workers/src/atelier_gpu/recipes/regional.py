"""Regional (RPG): complementary regional diffusion — each region's prompt acts inside its region, every step.

At every step, in every cross/joint attention layer, each region's prompt acts inside its region and is
blended with the base prompt: ``(1 - base_ratio)·regional + base_ratio·base``; the rest of the canvas gets the
base prompt alone (``atelier_gpu.attention`` has the processors: SDXL through cross-attention processors,
FLUX through attention masks over ``[base text, region texts, image]``). Unlike the layout recipe, whose boxes
ground only the first ``grounding_fraction`` of the steps (CreatiLayout), regions here act at every step (RPG).

The regions come from one of three sources (``source`` in the record):

* ``rpg`` — a ``RegionalPlan`` (``run_batch``): RPG's ratio grammar (``"1,1,1;1,1,1"``: rows separated by
  ``;``, the first number of a row its height, the rest its cell widths) tiles the canvas, one prompt per
  cell, left to right, top to bottom;
* ``layout`` — an ad layout's object boxes (``run_boxes_batch``): normalised ``[x1, y1, x2, y2]`` boxes, each
  with its caption; overlaps go to the higher ``z``, then to the smaller box (``box_masks``);
* ``cast`` — a story scene's character boxes (``run_boxes_batch``), each with its character's prompt.

Around a product (an ad background with a product image) the same regions run inside the inpainting
pipeline's call (``inpaint.run_batch(regions=..., grounding_fraction=1.0)``, chosen by ``recipes_dispatch``):
one denoising loop in which the product's latents are kept and each object's prompt acts in its box.

1. ``check_inputs`` / ``check_box_inputs`` say exactly what is wrong.
2. ``cell_masks`` (exact: the cells tile the grid) and ``box_masks`` paint the regions on the latent grid.
3. ``run_batch`` / ``run_boxes_batch`` encode each region prompt, install the processors for this call only,
   run the pipeline once for every seed, and restore the pipeline's own processors.
4. ``record`` is what the artifact keeps: mode, source, base prompt and ratio, and each region's box,
   prompt (cut at ``PROMPT_CHARS``) and the share of the canvas it owns.

``generate_with_regions`` is the engine shared with the layout and inpaint recipes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from atelier_contracts.plans import Box, RegionalPlan, split_ratio_to_boxes
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
BASE_RATIO = 0.3  # base prompt's share inside a region, when the plan names none (RPG: 0.3-0.5)
MAX_REGIONS = 10  # as many as a LayoutPlan has boxes
PROMPT_CHARS = 160  # recorded prompts are cut here, at a word; the plan keeps them whole


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


def box_masks(boxes: list[Box], width: int, height: int) -> torch.Tensor:
    """(boxes, height/8, width/8) 0/1 masks; overlaps go to the higher ``z``, then to the smaller box.

    A box too small to own a latent pixel keeps the one under its centre.
    """
    h, w = height // LATENT_FACTOR, width // LATENT_FACTOR
    owner = torch.full((h, w), -1, dtype=torch.long)

    def area(b: Box) -> float:
        return (b.bbox[2] - b.bbox[0]) * (b.bbox[3] - b.bbox[1])

    order = sorted(range(len(boxes)), key=lambda i: (boxes[i].z, -area(boxes[i])))
    for i in order:  # later boxes (higher z, then smaller) paint over earlier ones
        x1, y1, x2, y2 = boxes[i].bbox
        c1, c2 = math.floor(x1 * w), max(math.floor(x1 * w) + 1, math.ceil(x2 * w))
        r1, r2 = math.floor(y1 * h), max(math.floor(y1 * h) + 1, math.ceil(y2 * h))
        owner[r1:r2, c1:c2] = i
    masks = torch.stack([(owner == i).float() for i in range(len(boxes))]) if boxes else torch.zeros(0, h, w)
    for i, b in enumerate(boxes):
        if masks[i].sum() == 0:
            cx, cy = (b.bbox[0] + b.bbox[2]) / 2, (b.bbox[1] + b.bbox[3]) / 2
            r, c = min(h - 1, int(cy * h)), min(w - 1, int(cx * w))
            masks[:, r, c] = 0.0
            masks[i, r, c] = 1.0
    return masks


def region_prompts(plan: RegionalPlan) -> list[str]:
    """Region prompts in cell order (plan regions are matched to cells by row and column)."""
    cells = split_ratio_to_boxes(plan.split_ratio)
    by_pos = {(r.row, r.col): r.prompt for r in plan.regions}
    if set(by_pos) != {(r, c) for r, c, _ in cells}:
        # plans written in BREAK order without matching row/col indices: take them in order
        return [r.prompt for r in plan.regions]
    return [by_pos[(r, c)] for r, c, _ in cells]


def plan_boxes(plan: RegionalPlan) -> list[Box]:
    """The plan's cells as boxes, in cell order, each captioned with its region prompt (for the record)."""
    cells = split_ratio_to_boxes(plan.split_ratio)
    return [Box(bbox=(max(0.0, x1), max(0.0, y1), min(1.0, x2), min(1.0, y2)), caption=prompt, role="entity")
            for (_, _, (x1, y1, x2, y2)), prompt in zip(cells, region_prompts(plan), strict=False)]


def parse_regions(regions: Any, recipe: str = RECIPE) -> list[Box]:
    """Region items ``{"box": [x1, y1, x2, y2], "prompt": str, "role"?: str, "z"?: int}`` (or ``Box``) as boxes.

    Raises ``StageError(retryable=False)`` naming the first bad item.
    """
    if not isinstance(regions, list | tuple) or not regions:
        raise fail(recipe, "regions", f"must be a non-empty list of {{box, prompt}} items, got {regions!r}")
    if len(regions) > MAX_REGIONS:
        raise fail(recipe, "regions", f"has {len(regions)} items; at most {MAX_REGIONS}")
    out = []
    for i, item in enumerate(regions):
        if isinstance(item, Box):
            check_prompt(recipe, f"regions[{i}].caption", item.caption)
            out.append(item)
            continue
        if not isinstance(item, dict):
            raise fail(recipe, f"regions[{i}]", f"must be {{box, prompt}}, got {type(item).__name__}")
        check_prompt(recipe, f"regions[{i}].prompt", item.get("prompt"))
        try:
            out.append(Box(bbox=item.get("box"), caption=item["prompt"], role=item.get("role", "entity"),
                           z=item.get("z", 0)))
        except ValidationError as exc:
            raise fail(recipe, f"regions[{i}]", f"is not a valid region: {exc.errors()[0]['msg']} "
                                                f"(box [x1, y1, x2, y2] with 0<=x1<x2<=1 and 0<=y1<y2<=1)") from exc
    return out


def check_base_ratio(recipe: str, base_ratio: Any) -> None:
    ok = isinstance(base_ratio, int | float) and not isinstance(base_ratio, bool) and math.isfinite(base_ratio)
    if not ok or not 0.0 <= base_ratio <= 1.0:
        raise fail(recipe, "base_ratio", f"is {base_ratio!r}; it must be a number between 0 and 1")


def short(text: str, limit: int = PROMPT_CHARS) -> str:
    """``text`` on one line, cut at a word before ``limit`` characters (with an ellipsis) when longer."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[:limit - 1]
    cut = head.rsplit(" ", 1)[0] if " " in head else head
    return cut.rstrip(" ,;:") + "…"


def record(boxes: Sequence[Box], masks: torch.Tensor, *, base_prompt: str, base_ratio: float, source: str, mode: str,
           steps: int, labels: Sequence[dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """What the artifact records of a regional run.

    Args:
        boxes: the regions (box and prompt), in mask order.
        masks: their latent-grid masks (``share`` is the part of the canvas each one owns after overlaps).
        base_prompt, base_ratio: the base prompt (cut at ``PROMPT_CHARS``) and its weight inside regions.
        source: ``rpg`` | ``layout`` | ``cast``; mode: ``inpaint`` (around a product) | ``text_to_image``.
        steps: the denoising steps the regions acted in (all of them).
        labels: optional extra fields per region (a character's id).
    """
    cells = float(masks[0].numel()) if len(masks) else 1.0
    regions = []
    for i, b in enumerate(boxes):
        entry: dict[str, Any] = {"box": [round(float(c), 3) for c in b.bbox], "prompt": short(b.caption),
                                 "role": b.role, "share": round(float(masks[i].sum()) / cells, 3)}
        if labels and i < len(labels) and labels[i]:
            entry.update(labels[i] or {})
        regions.append(entry)
    return {"mode": mode, "source": source, "base_prompt": short(base_prompt), "base_ratio": round(float(base_ratio), 3),
            "steps": steps, "regions": regions}


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


def flux_text_window(pipe: Any) -> int:
    """Tokens per text chunk (base prompt and each region) in FLUX's regional encoding: T5's sequence length."""
    return min(FLUX_TEXT_TOKENS, int(pipe.tokenizer_2.model_max_length))


def flux_dropped_words(pipe: Any, prompts: Sequence[str]) -> list[str]:
    """The words of the base and region prompts that FLUX's regional encoding cuts (T5 keeps ``flux_text_window``
    tokens of each, its end-of-text token included); CLIP's pooled vector reads the first 77 tokens by design."""
    return prompt_encoding.words_past(pipe.tokenizer_2, list(prompts), flux_text_window(pipe) - 1)


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
            tokens = flux_text_window(pipe)
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


def check_box_inputs(pipe: Any, *, family: Any, base_prompt: Any, regions: Any, base_ratio: Any, width: Any,
                     height: Any, steps: Any, guidance: Any, seeds: Any, negative_prompt: Any = None,
                     on_step: Any = None) -> list[Box]:
    """Raise ``StageError(retryable=False)`` naming the first bad argument; return the regions as boxes."""
    check_common(RECIPE, pipe, family=family, width=width, height=height, steps=steps, guidance=guidance,
                 seeds=seeds, on_step=on_step, families=FAMILIES)
    check_prompt(RECIPE, "base_prompt", base_prompt)
    check_base_ratio(RECIPE, base_ratio)
    check_prompt(RECIPE, "negative_prompt", negative_prompt, optional=True)
    return parse_regions(regions)


def run_boxes_batch(pipe: Any, *, family: str, base_prompt: str, regions: Sequence[Box | dict[str, Any]],
                    width: int, height: int, steps: int, guidance: float, seeds: list[int],
                    base_ratio: float = BASE_RATIO, negative_prompt: str | None = None,
                    on_step: Callable[[int, int], None] | None = None, timesteps: list[int] | None = None,
                    eta: float | None = None) -> list[Any]:
    """Generate one image per seed with each region's prompt inside its box, at every step.

    Args:
        pipe: a loaded SDXL (``family="sdxl"``) or FLUX (``"flux"``) pipeline.
        base_prompt: the whole picture's prompt (alone outside the boxes; ``base_ratio`` of it inside).
        regions: ``{"box": [x1, y1, x2, y2] in 0..1, "prompt", "role"?, "z"?}`` items or ``Box`` es (caption =
            prompt); at most ``MAX_REGIONS``.
        width, height: output size, multiples of 16.
        steps, guidance: sampling; ``timesteps``/``eta`` from a few-step preset (SDXL).
        seeds: one per image; ``negative_prompt`` is ignored by FLUX.
        on_step: ``on_step(step, total)`` after every step; what it raises stops the run.

    Returns:
        ``len(seeds)`` RGB images of ``width`` x ``height``.
    """
    boxes = check_box_inputs(pipe, family=family, base_prompt=base_prompt, regions=list(regions),
                             base_ratio=base_ratio, width=width, height=height, steps=steps, guidance=guidance,
                             seeds=seeds, negative_prompt=negative_prompt, on_step=on_step)
    return generate_with_regions(
        pipe, family=family, base_prompt=base_prompt, negative_prompt=negative_prompt,
        prompts=[b.caption for b in boxes], masks=box_masks(boxes, width, height), base_ratio=base_ratio,
        width=width, height=height, steps=steps, guidance=guidance, seeds=seeds, on_step=on_step,
        timesteps=timesteps, eta=eta)
