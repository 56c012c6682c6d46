"""Layout: box-conditioned generation from a ``LayoutPlan`` (CreatiLayout plans).

The plan's boxes (normalised ``[x1, y1, x2, y2]``, top-left origin) become regional masks on the
latent grid, each box's caption its region prompt, the global caption the base prompt. Like
CreatiLayout's SiamLayout branch, the layout only grounds the **first** ``grounding_fraction`` of the
steps (0.3 by default); after that the global caption alone refines the image. The regional
attention itself is the RPG engine (``regional.generate_with_regions``): SDXL cross-attention
processors, FLUX attention masks.

Which boxes count: ``entity``, ``character``, ``product`` and ``background`` boxes with a caption.
Graphic boxes (``tagline``, ``cta``, ``logo``, ``underlay``) are drawn later by the renderer, never by
the diffusion model, and a box covering the whole canvas is the base prompt's job. Where boxes
overlap, the higher ``z`` wins, then the smaller box (a thing in front of its backdrop).

1. ``check_inputs`` says exactly what is wrong.
2. ``box_masks`` (shared with the regional recipe) paints the boxes onto the latent grid.
3. ``run_batch`` generates one image per seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from atelier_contracts.plans import Box, LayoutPlan
from pydantic import ValidationError

from .common import check_common, check_prompt, fail
from .regional import box_masks, generate_with_regions

RECIPE = "layout"
FAMILIES = ("sdxl", "flux")
GROUNDED_ROLES = ("entity", "character", "product", "background")
FULL_CANVAS = 0.98  # a box covering at least this share of the canvas is the background, i.e. the base prompt


def parse_plan(plan: Any) -> LayoutPlan:
    if isinstance(plan, LayoutPlan):
        return plan
    try:
        return LayoutPlan.model_validate(plan)
    except ValidationError as exc:
        raise fail(RECIPE, "plan", f"is not a valid LayoutPlan: {exc}") from exc


def grounded_boxes(plan: LayoutPlan, roles: tuple[str, ...] = GROUNDED_ROLES) -> list[Box]:
    """The boxes the diffusion model draws: captioned, of a drawn role, not the whole canvas."""
    out = []
    for box in plan.boxes:
        x1, y1, x2, y2 = box.bbox
        if box.role in roles and box.caption.strip() and (x2 - x1) * (y2 - y1) < FULL_CANVAS:
            out.append(box)
    return out


def grounding_steps(fraction: float, steps: int) -> int:
    """Steps with the layout active: ``round(fraction * steps)``, at least 1 when the fraction is above 0."""
    return 0 if fraction <= 0 else max(1, round(fraction * steps))


def check_inputs(pipe: Any, *, family: Any, plan: Any, width: Any, height: Any, steps: Any, guidance: Any,
                 seeds: Any, base_ratio: Any = 0.3, negative_prompt: Any = None, on_step: Any = None) -> LayoutPlan:
    """Raise ``StageError(retryable=False)`` naming the first bad argument; return the parsed plan."""
    check_common(RECIPE, pipe, family=family, width=width, height=height, steps=steps, guidance=guidance,
                 seeds=seeds, on_step=on_step, families=FAMILIES)
    parsed = parse_plan(plan)
    check_prompt(RECIPE, "plan.global_caption", parsed.global_caption)
    if not isinstance(base_ratio, int | float) or isinstance(base_ratio, bool) or not 0.0 <= base_ratio <= 1.0:
        raise fail(RECIPE, "base_ratio", f"is {base_ratio!r}; it must be a number between 0 and 1")
    check_prompt(RECIPE, "negative_prompt", negative_prompt, optional=True)
    return parsed


def run_batch(pipe: Any, *, family: str, plan: LayoutPlan | dict[str, Any], width: int, height: int, steps: int,
              guidance: float, seeds: list[int], base_ratio: float = 0.3, negative_prompt: str | None = None,
              on_step: Callable[[int, int], None] | None = None, timesteps: list[int] | None = None,
              eta: float | None = None) -> list[Any]:
    """Generate one image per seed from a ``LayoutPlan``.

    Args:
        pipe: a loaded SDXL (``family="sdxl"``) or FLUX (``"flux"``) pipeline.
        plan: global caption, boxes with captions, ``grounding_fraction`` of the steps the boxes act in.
        width, height: output size, multiples of 16 (the boxes are relative, so any size works).
        steps, guidance: sampling; ``timesteps``/``eta`` from a few-step preset (SDXL).
        seeds: one per image; ``base_ratio``: weight of the global caption inside boxes.
        negative_prompt: defaults to the plan's (ignored by FLUX).
        on_step: ``on_step(step, total)`` after every step; what it raises stops the run.

    Returns:
        ``len(seeds)`` RGB images of ``width`` x ``height``. With no drawable box this is plain
        text-to-image of the global caption.
    """
    parsed = check_inputs(pipe, family=family, plan=plan, width=width, height=height, steps=steps, guidance=guidance,
                          seeds=seeds, base_ratio=base_ratio, negative_prompt=negative_prompt, on_step=on_step)
    boxes = grounded_boxes(parsed)
    total = len(timesteps) if timesteps else steps
    return generate_with_regions(
        pipe, family=family, base_prompt=parsed.global_caption,
        negative_prompt=negative_prompt if negative_prompt is not None else parsed.negative_prompt,
        prompts=[b.caption for b in boxes], masks=box_masks(boxes, width, height), base_ratio=base_ratio,
        width=width, height=height, steps=steps, guidance=guidance, seeds=seeds, on_step=on_step,
        active_steps=grounding_steps(parsed.grounding_fraction, total) if boxes else 0,
        timesteps=timesteps, eta=eta)


def run(pipe: Any, *, seed: int, **kwargs: Any) -> Any:
    """One image: ``run_batch`` with ``seeds=[seed]``."""
    return run_batch(pipe, seeds=[seed], **kwargs)[0]
