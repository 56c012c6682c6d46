"""``gpu.background`` (PAID stage 3): one ad background per size and variant (item ``<size>-v<variant>``),
generated so the product's pixels stay exact. The recipe, in order of preference:

* ``control`` when the spec has ``control``: the model's ControlNets of those kinds on the uploaded control
  images; a product image is then pasted back unchanged into its box (``product_mode: "pasted"``), because the
  control recipe takes no mask. The output records each condition, its ControlNet and effective scale;
* ``regional`` when the variant's layout has object boxes (``entity``/``background`` boxes besides the product
  and the canvas): each object's caption acts inside its box at every step, the background caption everywhere
  else (RPG's complementary regional diffusion; ``source: "layout"``). With a product image this runs inside
  the inpainting call around the product — one denoising loop, the product's pixels exact
  (``regional.mode: "inpaint"``, ``product_mode: "inpainted"``); without one, the product's box is one more region
  drawn from its caption;
* ``regional`` on the RPG plan of ``plan.ad_prompts`` (``source: "rpg"``) when there are no object boxes: around
  the product image when there is one (and the plan has at least two regions), else when the layout has no
  product box to draw;
* ``inpaint`` around the product when the campaign has a product image (box from the variant's layout);
* ``layout`` on the variant's layout (without an image, the product in its box);
* ``text_to_image`` otherwise (and for families without regional attention).

A gate's repair (``StageTask.repair``: ``gate.critic`` found some regions wrong) comes first: ``repair`` inpaints
only those regions of the judged image, each with its prompt, at a new seed, and keeps every other pixel (a product
photo's box is never repainted); the output records ``repair`` (which gate, which image, which regions, the share of
the canvas redrawn). A repair is asked once; if it still fails, the next regeneration is a new image.

A regional background records ``regional``: mode, source, base prompt and ``base_ratio``, and every region's box,
prompt and share of the canvas (``recipes.regional.record``), in its output and its artifact's meta.

Batched with compatible queued backgrounds and character sheets (``atelier_gpu.serving``).
"""

from __future__ import annotations

from typing import Any

from atelier_contracts import items
from atelier_contracts.catalogue import S_BACKGROUND
from atelier_contracts.errors import StageError
from atelier_contracts.keys import upload_key
from atelier_contracts.plans import Box
from atelier_contracts.specs import BackgroundControl
from atelier_contracts.stage_io import BackgroundInputs, BackgroundOutput
from atelier_runtime.stage_runner import StageContext, stage_task
from PIL import Image
from pydantic import ValidationError

from .. import serving
from ..generation import REGIONAL_FAMILIES, model_and_size, registry, request
from ..recipes import control as control_recipe
from ..recipes import identity as identity_recipe
from ..recipes import inpaint as inpaint_recipe
from ..recipes import layout as layout_recipe
from ..recipes import regional as regional_recipe
from ..serving import GenRequest

OBJECT_ROLES = ("entity", "background")  # a layout's scene objects (a full-canvas background box is the caption's)
OBJECT_BASE_RATIO = regional_recipe.BASE_RATIO


def region_item(box: Box) -> dict[str, Any]:
    """A layout box as the regional recipe's region: its box, caption as prompt, role and z."""
    return {"box": list(box.bbox), "prompt": box.caption, "role": box.role, "z": box.z}


def background_seed(plan_seed: int, variant_index: int, size_index: int) -> int:
    return (plan_seed + 1000 * variant_index + size_index) % 2**32


def control_params(ctx: StageContext, model_id: str, spec: Any, raw: Any
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The control recipe's params for the spec's ``control`` list, and what the output records of it.

    Each condition takes the model's ControlNet of its kind (the first by name when there are several).
    The recipe averages by ``weight`` alone and scales the average by one ``conditioning_scale``, so a
    per-control ``scale`` goes in as weight ``w_i * s_i`` with ``conditioning_scale = sum(w*s) / sum(w)``:
    the recipe's ``cs * w_i s_i / sum(w*s)`` is then exactly ``s_i * w_i / sum(w)`` (recorded as
    ``effective_scale``), and equal scales ``s`` are plain Ctrl-Adapter averaging with total strength ``s``.
    """
    if spec.family not in control_recipe.FAMILIES:
        families = " or ".join(control_recipe.FAMILIES)
        raise StageError(f"gpu.background: spec.control needs a model with ControlNets (family {families}); "
                         f"model {model_id} is {spec.family}", retryable=False, field="spec.control")
    if not isinstance(raw, list):
        raise StageError("gpu.background: spec.control must be a list", retryable=False, field="spec.control")
    controls: list[BackgroundControl] = []
    for i, c in enumerate(raw):
        try:
            controls.append(BackgroundControl.model_validate(c))
        except ValidationError as exc:
            raise StageError(f"spec.control.{i} is not a valid BackgroundControl: {exc}", retryable=False,
                             field=f"spec.control.{i}") from exc
    entries, record = [], []
    total = sum(c.weight for c in controls)
    for i, c in enumerate(controls):
        names = sorted(n for n, cn in spec.controlnets.items() if cn.kind == c.kind)
        if not names:
            have = ", ".join(f"{n} ({cn.kind})" for n, cn in sorted(spec.controlnets.items())) or "none"
            raise StageError(f"gpu.background: model {model_id} has no {c.kind} ControlNet in models.yaml "
                             f"(spec.control.{i}.kind; its ControlNets: {have})", retryable=False,
                             field=f"spec.control.{i}.kind")
        key = upload_key(ctx.task.tenant_id, c.image)
        if not ctx.store.exists(key):  # before any GPU time: the API checked it, but an upload can be deleted
            raise StageError(f"gpu.background: control image {c.image!r} (spec.control.{i}.image) is not in "
                             f"storage ({key})", retryable=False, field=f"spec.control.{i}.image")
        # canny edges are taken from any picture; a depth or pose upload is the map itself
        entries.append({"name": names[0], "kind": c.kind, "image_key": key,
                        "use_as_is": c.kind != "canny", "weight": c.weight * c.scale, "start": c.start, "end": c.end})
        record.append({"kind": c.kind, "image": c.image, "controlnet": names[0], "weight": c.weight,
                       "scale": c.scale, "start": c.start, "end": c.end,
                       "effective_scale": round(c.scale * c.weight / total, 6)})
    params = {"controls": entries, "conditioning_scale": sum(c.weight * c.scale for c in controls) / total}
    return params, record


def _with_control_output(req: GenRequest, record: list[dict[str, Any]], product: tuple[str, list[float]] | None
                         ) -> GenRequest:
    """Wrap ``req.finish``: paste the product back (when there is one) and record the controls."""
    store = req.finish
    assert store is not None

    def finish(c: StageContext, image: Image.Image, extra: dict[str, Any]) -> dict[str, Any]:
        extra = {**extra, "control": record}
        if product is not None:
            key, box = product
            photo = c.get_image(key, "product image")
            placement = inpaint_recipe.place_product(inpaint_recipe.product_cutout(photo), box, image.width,
                                                     image.height)
            image = inpaint_recipe.paste_back(image, placement)
            extra.update(product_rect=list(placement.rect), product_mode="pasted")
        return store(c, image, extra)

    req.finish = finish
    return req


def repair_request(ctx: StageContext, *, target: tuple[int, int], seed: int, caption: str, negative: str,
                   product: tuple[str, list[float]] | None) -> GenRequest:
    """The request of a repair (``StageTask.repair``): the gate's failed regions of the image it judged, redrawn
    in place with their prompts (``inpaint.repair_batch``); a product photo's box is never repainted."""
    repair = ctx.task.repair
    assert repair is not None
    regions = [{"box": list(r.bbox), "prompt": r.prompt, "role": r.role if r.role in ("entity", "product")
                else "entity"} for r in repair.regions]
    params: dict[str, Any] = {
        "image_key": repair.artifact_key, "regions": regions, "protect_box": product[1] if product else None,
        "product_key": product[0] if product else None,
        "record": {"gate": repair.gate, "from": repair.artifact_key, "regeneration": repair.regeneration,
                   "regions": [{"index": r.index, "role": r.role, "box": list(r.bbox), "prompt": r.prompt}
                               for r in repair.regions]}}
    return request(ctx, recipe="repair", target=target, seed=seed, prompt=caption, negative_prompt=negative,
                   params=params, kind="background", output_key="background_key")


@serving.batchable(S_BACKGROUND)
def prepare_background(ctx: StageContext) -> GenRequest:
    """One ad background's request: control, else regional (objects, then the RPG plan; around the product when
    there is an image), else inpaint around the product, else layout, else text-to-image."""
    up = ctx.inputs(BackgroundInputs)
    plan = up.ad_layout.plan
    size_name, variant_index = ctx.parsed_item(items.parse_size_variant)
    found = plan.variant_for(size_name, variant_index)  # an odd variant may be the mirrored composition
    if found is None:
        known = ", ".join(v.target.name for v in plan.variants)
        raise StageError(f"gpu.background: the ad plan has no variant for size {size_name!r} (has: {known})",
                         retryable=False, field="item")
    index, variant = found
    mirrored = variant is not plan.variants[index]
    caption = variant.layout.global_caption or plan.prompts.background
    # a gate's regeneration (gate.critic) offsets the seed as a scene's does, so a retry paints a new image
    seed = identity_recipe.scene_seed(background_seed(plan.seed, variant_index, index), ctx.task.regeneration)
    model_id, spec, _, _ = model_and_size(ctx, (variant.target.w, variant.target.h))
    product_id = (ctx.task.spec.get("product") or {}).get("image")
    product_box = next((b for b in variant.layout.boxes if b.role == "product"), None)
    layout_json = variant.layout.model_dump(mode="json")
    # the RPG plan is of the caption as written: not for a mirrored composition
    regional = up.ad_prompts.regional if up.ad_prompts is not None and not mirrored else None
    target = (variant.target.w, variant.target.h)
    if ctx.task.repair is not None and spec.family in inpaint_recipe.FAMILIES:
        # the gate asked to repair its failed regions in place: inpaint those boxes of the judged image
        return repair_request(ctx, target=target, seed=seed, caption=caption, negative=plan.negative_prompt,
                              product=(upload_key(ctx.task.tenant_id, product_id), list(product_box.bbox))
                              if product_id and product_box is not None else None)
    if ctx.task.spec.get("control"):
        # the controls steer the whole background; the control recipe has no mask, so a product image is
        # pasted back unchanged into its box afterwards instead of being inpainted around
        params, record = control_params(ctx, model_id, spec, ctx.task.spec["control"])
        req = request(ctx, recipe="control", target=target, seed=seed, prompt=caption,
                      negative_prompt=plan.negative_prompt, params=params, kind="background",
                      output_key="background_key")
        product = (upload_key(ctx.task.tenant_id, product_id), list(product_box.bbox)) \
            if product_id and product_box is not None else None
        return _with_control_output(req, record, product)
    around: dict[str, Any] = {}  # the product image the background is inpainted around, if any
    if product_id and product_box is not None:
        around = {"product_key": upload_key(ctx.task.tenant_id, product_id), "product_box": list(product_box.bbox)}
    # without an image the product is drawn from its caption in its box, so it is one of the regions
    drawn_product = product_box if not around and product_box is not None and product_box.caption.strip() else None
    objects = layout_recipe.grounded_boxes(variant.layout, roles=OBJECT_ROLES)
    rpg_regions = len(regional.regions) if regional is not None else 0
    if spec.family not in REGIONAL_FAMILIES:
        recipe, params = "text_to_image", {}
    elif objects:
        regions = [*objects, *([drawn_product] if drawn_product is not None else [])]
        recipe, params = "regional", {"source": "layout", "base_ratio": OBJECT_BASE_RATIO, **around,
                                      "regions": [region_item(b) for b in regions]}
    elif regional is not None and drawn_product is None and rpg_regions >= (2 if around else 1):
        # the RPG plan of the background caption, when plan.ad_prompts is among this stage's upstreams
        recipe, params = "regional", {"source": "rpg", "plan": regional.model_dump(mode="json"), **around}
    elif around:
        recipe, params = "inpaint", {**around, "plan": layout_json}
    elif layout_recipe.grounded_boxes(variant.layout):
        recipe, params = "layout", {"plan": layout_json}
    else:
        recipe, params = "text_to_image", {}
    return request(ctx, recipe=recipe, target=target, seed=seed, prompt=caption,
                   negative_prompt=plan.negative_prompt, params=params, kind="background",
                   output_key="background_key")


@stage_task(S_BACKGROUND)
def background(ctx: StageContext) -> BackgroundOutput:
    """One ad background for one size x variant, batched when it can be."""
    return BackgroundOutput.model_validate(serving.serve(ctx, registry=registry(ctx.res)))
