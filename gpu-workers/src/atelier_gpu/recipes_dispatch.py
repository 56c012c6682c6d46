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
        if encoding.get("dropped_words"):  # never silent: the stage's output warning becomes a job.warning
            info["warnings"] = [f"the prompt is longer than the text encoder's window; these words were dropped: "
                                f"{' '.join(encoding['dropped_words'])}"]
    elif first.recipe == "regional":
        images = regional.run_batch(pipe, plan=first.params["plan"], negative_prompt=negative, **common)
    elif first.recipe == "layout":
        images = layout.run_batch(pipe, plan=first.params["plan"], base_ratio=first.params.get("base_ratio", 0.3),
                                  negative_prompt=negative, **common)
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
    elif first.recipe == "control":
        controls = _controls(registry, spec, first, first.width, first.height)
        images = control.run_batch(pipe, prompt=first.prompt, controls=controls, negative_prompt=negative,
                                   conditioning_scale=float(first.params.get("conditioning_scale", 1.0)), **common)
        info["controls"] = [{"name": c["name"], "kind": k.kind} for c, k in zip(first.params["controls"], controls,
                                                                                strict=True)]
    else:
        raise StageError(f"unknown recipe {first.recipe!r}", retryable=False)
    return [(im, dict(info)) for im in images]
