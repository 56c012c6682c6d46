"""From a group of compatible ``GenRequest`` to the recipe call that serves them (one pipeline call)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from atelier_contracts.errors import StageError
from atelier_contracts.plans import LayoutPlan

from . import control_images
from .recipes import control, inpaint, layout, regional, text_to_image


def _controls(registry: Any, spec: Any, first: Any, width: int, height: int) -> list[control.Control]:
    plan = LayoutPlan.model_validate(first.params["plan"]) if first.params.get("plan") else None
    out = []
    for c in first.params["controls"]:
        source = first.ctx.get_image(c["image_key"], "control image") if c.get("image_key") else None
        kind = c.get("kind") or spec.controlnet(c["name"]).kind
        if c.get("use_as_is") and source is not None:
            image = source.convert("RGB")
        else:
            image = control_images.derive(kind, width=width, height=height, image=source,
                                          boxes=plan.boxes if plan else [])
        out.append(control.Control(registry.controlnet(first.model, c["name"]), image, float(c.get("weight", 1.0)),
                                   float(c.get("start", 0.0)), float(c.get("end", 1.0)), kind))
    return out


def _regional(pipe: Any, first: Any, negative: str | None, common: dict[str, Any]
              ) -> tuple[list[Any], dict[str, Any]]:
    """The regional recipe: RPG cells (``plan``) or boxes (``regions``), around a product when it has one.

    With ``product_key`` the regions act inside the inpainting pipeline's one call (the product's latents kept),
    at every step; without, the regional recipe runs on its own. The info records what ran (``regional``).
    """
    params = first.params
    width, height = first.width, first.height
    labels: list[dict[str, Any] | None] | None = None
    if params.get("regions") is not None:
        boxes = regional.parse_regions(params["regions"])
        base_prompt, base_ratio = first.prompt, params.get("base_ratio", regional.BASE_RATIO)
        regional.check_base_ratio(regional.RECIPE, base_ratio)
        masks = regional.box_masks(boxes, width, height)
        prompts = [b.caption for b in boxes]
        labels = [r.get("label") if isinstance(r, dict) else None for r in params["regions"]]
    else:
        plan = regional.parse_plan(params["plan"])
        boxes, base_prompt, base_ratio = regional.plan_boxes(plan), plan.base_prompt, plan.base_ratio
        masks = regional.cell_masks(plan.split_ratio, width, height)
        prompts = regional.region_prompts(plan)
    extra: dict[str, Any] = {}
    if params.get("product_key"):
        product = first.ctx.get_image(params["product_key"], "product image")
        images, placement = inpaint.run_batch(
            pipe, prompt=base_prompt, product=product, product_box=params["product_box"], negative_prompt=negative,
            regions=list(zip(prompts, masks, strict=True)), base_ratio=float(base_ratio), grounding_fraction=1.0,
            **common)
        extra.update(product_rect=list(placement.rect), product_mode="inpainted")
        mode = "inpaint"
    elif params.get("regions") is not None:
        images = regional.run_boxes_batch(pipe, base_prompt=base_prompt, regions=boxes, base_ratio=float(base_ratio),
                                          negative_prompt=negative, **common)
        mode = "text_to_image"
    else:
        images = regional.run_batch(pipe, plan=plan, negative_prompt=negative, **common)
        mode = "text_to_image"
    if common["family"] == "flux":  # never silent: words T5's regional window cut become a job.warning
        extra.update(_dropped_warning(regional.flux_dropped_words(pipe, [base_prompt, *prompts])))
    total = len(common["timesteps"]) if common.get("timesteps") else common["steps"]
    extra["regional"] = regional.record(boxes, masks, base_prompt=base_prompt, base_ratio=float(base_ratio),
                                        source=params.get("source") or ("layout" if labels is not None else "rpg"),
                                        mode=mode, steps=total, labels=labels)
    return images, extra


def _dropped_warning(words: list[str]) -> dict[str, Any]:
    """The output warning for words a text encoder's window dropped (none when nothing was)."""
    if not words:
        return {}
    return {"warnings": [f"the prompt is longer than the text encoder's window; these words were dropped: "
                         f"{' '.join(words)}"]}


def run(registry: Any, spec: Any, pipe: Any, requests: list[Any],
        on_step: Callable[[int, int], None]) -> list[tuple[Any, dict[str, Any]]]:
    """Call the recipe of ``requests`` (all compatible) once; (image, extra info) per request."""
    first = requests[0]
    common: dict[str, Any] = {
        "family": spec.family, "width": first.width, "height": first.height, "steps": first.steps,
        "guidance": first.guidance, "seeds": [r.seed for r in requests], "on_step": on_step,
        "timesteps": list(first.timesteps) if first.timesteps else None, "eta": first.eta,
    }
    negative = first.negative_prompt or None
    info: dict[str, Any] = {"recipe": first.recipe}
    if first.recipe == "text_to_image":
        encoding: dict[str, Any] = {}
        images = text_to_image.run_batch(pipe, prompt=[r.prompt for r in requests], negative_prompt=negative,
                                         report=encoding, **common)
        info["prompt_encoding"] = encoding
        # never silent: the stage's output warning becomes a job.warning
        info.update(_dropped_warning(list(encoding.get("dropped_words") or [])))
    elif first.recipe == "regional":
        images, extra = _regional(pipe, first, negative, common)
        info.update(extra)
    elif first.recipe == "layout":
        images = layout.run_batch(pipe, plan=first.params["plan"], base_ratio=first.params.get("base_ratio", 0.3),
                                  negative_prompt=negative, **common)
        if spec.family == "flux":
            plan = LayoutPlan.model_validate(first.params["plan"])
            info.update(_dropped_warning(regional.flux_dropped_words(
                pipe, [plan.global_caption, *(b.caption for b in layout.grounded_boxes(plan))])))
    elif first.recipe == "inpaint":
        product = first.ctx.get_image(first.params["product_key"], "product image")
        regions: list[tuple[str, Any]] = []
        fraction = 0.3
        if first.params.get("plan"):
            plan = LayoutPlan.model_validate(first.params["plan"])
            fraction = plan.grounding_fraction
            boxes = layout.grounded_boxes(plan, roles=("entity", "background"))
            masks = layout.box_masks(boxes, first.width, first.height)
            regions = [(b.caption, masks[i]) for i, b in enumerate(boxes)]
        images, placement = inpaint.run_batch(
            pipe, prompt=first.prompt, product=product, product_box=first.params["product_box"],
            negative_prompt=negative, regions=regions, base_ratio=first.params.get("base_ratio", 0.3),
            grounding_fraction=fraction, **common)
        info["product_rect"] = list(placement.rect)
    elif first.recipe == "repair":
        params = first.params
        boxes = regional.parse_regions(params["regions"], "repair")
        image = first.ctx.get_image(params["image_key"], "the image to repair")
        images, share = inpaint.repair_batch(pipe, image=image, regions=boxes, prompt=first.prompt,
                                             negative_prompt=negative, protect=params.get("protect_box"), **common)
        info["repair"] = {**params["record"], "mask_share": round(share, 4)}
        if params.get("product_key") and params.get("protect_box"):  # the product stays where it was placed
            product = first.ctx.get_image(params["product_key"], "product image")
            placement = inpaint.place_product(inpaint.product_cutout(product), params["protect_box"], first.width,
                                              first.height)
            info.update(product_rect=list(placement.rect), product_mode="inpainted")
    elif first.recipe == "control":
        controls = _controls(registry, spec, first, first.width, first.height)
        images = control.run_batch(pipe, prompt=first.prompt, controls=controls, negative_prompt=negative,
                                   conditioning_scale=float(first.params.get("conditioning_scale", 1.0)), **common)
        info["controls"] = [{"name": c["name"], "kind": k.kind} for c, k in zip(first.params["controls"], controls,
                                                                                strict=True)]
    else:
        raise StageError(f"unknown recipe {first.recipe!r}", retryable=False)
    return [(im, dict(info)) for im in images]
