"""GPU stage tasks: backgrounds, character sheets, scenes and the watermark.

Each task is a thin edge: read its upstream plan from the payload, pick recipe, prompt, seed and size,
call one recipe, write one PNG artifact under the stage's deterministic key, return a small JSON output.

* ``gpu.background`` — inpaint around the product when the campaign has a product image (upload
  ``tenants/{tenant}/uploads/{id}.png``, box from the AdPlan variant's layout), else the layout recipe
  on the variant's layout (background objects and, without an image, the product drawn in its box),
  else the RPG regional plan of ``plan.ad_prompts`` when that stage is an upstream, else text-to-image. Batched with compatible queued backgrounds (``atelier_gpu.serving``).
  When the spec has ``control`` (issue 4), the ``control`` recipe runs instead, with the model's ControlNets
  of those kinds (models.yaml) on the uploaded control images; a product image is then pasted back
  unchanged into its box (``product_mode: "pasted"``) rather than inpainted around, because the control
  recipe takes no mask. The output and artifact meta record ``control`` (each condition, its ControlNet
  and effective scale).
* ``gpu.character_sheet`` — text-to-image, batched with other sheets of the same model and size.
* ``gpu.scene`` — the layout recipe with the scene's ``LayoutPlan`` (``plan.scene_layout``), through
  the identity hook of issue 5.

Outputs keep their keys (``background_key``, ``sheet_key``, ``scene_key``, ``width``, ``height``,
``seed``, ``model``, ``steps``) and add ``recipe`` and ``batch_size`` (and ``product_rect``).
Registered under ``atelier.stage.<stage>`` by ``atelier_shared.stage_runner.stage_task``; Celery
imports this module for the ``gpu.*`` roles (``atelier_shared.celeryapp.ROLE_MODULES``).
"""

from __future__ import annotations

import io
import time
from typing import Any

from atelier_shared.errors import StageError
from atelier_shared.plans import AdPlan, Character, LayoutPlan, StoryPlan
from atelier_shared.specs import BackgroundControl
from atelier_shared.stage_runner import StageContext, WorkerResources, stage_task
from atelier_shared.tasks import (
    S_AD_LAYOUT,
    S_AD_PROMPTS,
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

from . import recipes_dispatch, serving
from .recipes import control as control_recipe
from .recipes import identity as identity_recipe  # issue 5
from .recipes import inpaint as inpaint_recipe
from .recipes import layout as layout_recipe
from .recipes import text_to_image
from .serving import GenRequest

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

                budget = getattr(res.settings, "model_memory_gb", None)
                reg = ModelRegistry(res.settings.resolved_models_file(), cache_size=res.settings.model_cache_size,
                                    memory_budget_bytes=int(budget * 2**30) if budget else None)
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
    steps = len(spec.timesteps) if spec.timesteps else (ctx.settings.gen_steps or spec.steps)
    max_side = min(ctx.settings.gen_max_side, spec.max_side or ctx.settings.gen_max_side)
    width, height = text_to_image.generation_size(target[0], target[1], max_side)
    with reg.call_lock:  # one pipeline call at a time in this process
        pipe = reg.load(model_id)
        started = time.perf_counter()
        try:
            image = text_to_image.run(
                pipe, family=spec.family, prompt=prompt, negative_prompt=negative_prompt, width=width,
                height=height, steps=steps, guidance=spec.guidance, seed=seed, on_step=ctx.progress,
                timesteps=list(spec.timesteps) if spec.timesteps else None, eta=spec.eta,
            )
        finally:
            ctx.gpu_seconds += time.perf_counter() - started
    return image, {"width": width, "height": height, "seed": seed, "model": model_id, "steps": steps}


def _put_image(ctx: StageContext, image: Image.Image, *, kind: str, info: dict[str, Any], prompt: str) -> str:
    # a gate's regeneration stores its attempt under its own name (1080x1080-v0.r1), next to the first one
    name = identity_recipe.scene_name(ctx.task.item, ctx.task.regeneration) if ctx.task.item else kind
    rec = ctx.put(name=name, data=_png(image), ext="png", content_type="image/png", kind=kind,
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


REGIONAL_FAMILIES = ("sdxl", "flux")  # families with regional attention, inpainting and ControlNets here


def upload_key(tenant_id: str, upload_id: str) -> str:
    """Where an upload lives (the API stores every upload as PNG)."""
    return f"tenants/{tenant_id}/uploads/{upload_id}.png"


def _model_and_size(ctx: StageContext, target: tuple[int, int]) -> tuple[str, Any, int, tuple[int, int]]:
    """Model id, its spec, the step count and the generation size for ``target`` (spec + settings)."""
    reg = registry(ctx.res)
    model_id = ctx.task.spec.get("model") or ctx.settings.default_model
    spec = reg.spec(model_id)
    steps = len(spec.timesteps) if spec.timesteps else (ctx.settings.gen_steps or spec.steps)
    max_side = min(ctx.settings.gen_max_side, spec.max_side or ctx.settings.gen_max_side)
    return model_id, spec, steps, text_to_image.generation_size(target[0], target[1], max_side)


def _request(ctx: StageContext, *, recipe: str, target: tuple[int, int], seed: int, prompt: str,
             negative_prompt: str, params: dict[str, Any], kind: str, output_key: str) -> GenRequest:
    """A GenRequest whose ``finish`` stores the PNG and returns the stage output under ``output_key``."""
    model_id, spec, steps, (width, height) = _model_and_size(ctx, target)
    info = {"width": width, "height": height, "seed": seed, "model": model_id, "steps": steps}

    def finish(c: StageContext, image: Image.Image, extra: dict[str, Any]) -> dict[str, Any]:
        out = {**info, **extra}
        key = _put_image(c, image, kind=kind, info=out, prompt=prompt)
        return {output_key: key, **out}

    return GenRequest(ctx=ctx, recipe=recipe, model=model_id, width=width, height=height, steps=steps,
                      guidance=spec.guidance, seed=seed, prompt=prompt, negative_prompt=negative_prompt or "",
                      params=params, timesteps=spec.timesteps, eta=spec.eta, finish=finish)


def _regional_plan(ctx: StageContext) -> dict[str, Any] | None:
    prompts = ctx.task.upstream.get(S_AD_PROMPTS)
    regional = prompts.get("regional") if isinstance(prompts, dict) else None
    return regional if isinstance(regional, dict) and regional.get("regions") else None


def _control_params(ctx: StageContext, model_id: str, spec: Any, raw: Any
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
    controls: list[BackgroundControl] = [
        _parse(BackgroundControl, c, f"spec.control.{i}") for i, c in enumerate(raw)]
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
            photo = recipes_dispatch.read_image(c, key, "product image")
            placement = inpaint_recipe.place_product(inpaint_recipe.product_cutout(photo), box, image.width,
                                                     image.height)
            image = inpaint_recipe.paste_back(image, placement)
            extra.update(product_rect=list(placement.rect), product_mode="pasted")
        return store(c, image, extra)

    req.finish = finish
    return req


def prepare_background(ctx: StageContext) -> GenRequest:
    """One ad background's request: control, else inpaint around the product, else layout, else text-to-image."""
    plan: AdPlan = _parse(AdPlan, _upstream(ctx, S_AD_LAYOUT, "plan"), f"upstream.{S_AD_LAYOUT}.plan")
    size_name, variant_index = parse_background_item(ctx.task.item)
    index = next((i for i, v in enumerate(plan.variants) if v.target.name == size_name), None)
    if index is None:
        known = ", ".join(v.target.name for v in plan.variants)
        raise StageError(f"gpu.background: the ad plan has no variant for size {size_name!r} (has: {known})",
                         retryable=False, field="item")
    variant = plan.variants[index]
    # a gate's regeneration (gate.critic) offsets the seed as a scene's does, so a retry paints a new image
    seed = identity_recipe.scene_seed(background_seed(plan.seed, variant_index, index), ctx.task.regeneration)
    model_id, spec, _, _ = _model_and_size(ctx, (variant.target.w, variant.target.h))
    product_id = (ctx.task.spec.get("product") or {}).get("image")
    product_box = next((b for b in variant.layout.boxes if b.role == "product"), None)
    layout_json = variant.layout.model_dump(mode="json")
    target = (variant.target.w, variant.target.h)
    if ctx.task.spec.get("control"):
        # issue 4: the controls steer the whole background; the control recipe has no mask, so a product
        # image is pasted back unchanged into its box afterwards instead of being inpainted around
        params, record = _control_params(ctx, model_id, spec, ctx.task.spec["control"])
        req = _request(ctx, recipe="control", target=target, seed=seed, prompt=plan.prompts.background,
                       negative_prompt=plan.negative_prompt, params=params, kind="background",
                       output_key="background_key")
        product = (upload_key(ctx.task.tenant_id, product_id), list(product_box.bbox)) \
            if product_id and product_box is not None else None
        return _with_control_output(req, record, product)
    if spec.family in REGIONAL_FAMILIES and product_id and product_box is not None:
        recipe, params = "inpaint", {"product_key": upload_key(ctx.task.tenant_id, product_id),
                                     "product_box": list(product_box.bbox), "plan": layout_json}
    elif spec.family in REGIONAL_FAMILIES and layout_recipe.grounded_boxes(variant.layout):
        recipe, params = "layout", {"plan": layout_json}
    elif spec.family in REGIONAL_FAMILIES and _regional_plan(ctx) is not None:
        # the RPG plan of the background caption, when plan.ad_prompts is among this stage's upstreams
        recipe, params = "regional", {"plan": _regional_plan(ctx)}
    else:
        recipe, params = "text_to_image", {}
    return _request(ctx, recipe=recipe, target=target, seed=seed, prompt=plan.prompts.background,
                    negative_prompt=plan.negative_prompt, params=params, kind="background", output_key="background_key")


def prepare_character_sheet(ctx: StageContext) -> GenRequest:
    """The request for one character sheet: square, the character's own seed, text-to-image."""
    characters = _upstream(ctx, S_CHARACTERS, "characters")
    if not isinstance(characters, list):
        raise StageError(f"upstream.{S_CHARACTERS}.characters must be a list", retryable=False)
    found = [c for c in characters if isinstance(c, dict) and c.get("id") == ctx.task.item]
    if not found:
        raise StageError(f"gpu.character_sheet: no character with id {ctx.task.item!r} upstream", retryable=False,
                         field="item")
    character: Character = _parse(Character, found[0], f"upstream.{S_CHARACTERS}.characters[{ctx.task.item}]")
    side = ctx.settings.gen_max_side
    return _request(ctx, recipe="text_to_image", target=(side, side), seed=character.seed % 2**32,
                    prompt=character.sheet_prompt, negative_prompt="", params={}, kind="character_sheet",
                    output_key="sheet_key")


# stage → how to turn one of its tasks into a GenRequest (the stages a diffusion worker may batch)
PREPARERS = {S_BACKGROUND: prepare_background, S_CHARACTER_SHEET: prepare_character_sheet}


def _serve(ctx: StageContext, stage: str) -> dict[str, Any]:
    return serving.serve(ctx, PREPARERS[stage], registry=registry(ctx.res), preparers=PREPARERS)


def _scene_generator(layout: LayoutPlan) -> Any:
    """The ``generate`` the identity hook calls for a scene without identity conditioning: the layout recipe."""

    def generate(ctx: StageContext, *, prompt: str, negative_prompt: str, target: tuple[int, int], seed: int
                 ) -> tuple[Image.Image, dict[str, Any]]:
        model_id, spec, steps, (width, height) = _model_and_size(ctx, target)
        if spec.family not in REGIONAL_FAMILIES:
            return _generate(ctx, prompt=prompt, negative_prompt=negative_prompt, target=target, seed=seed)
        # the scene prompt (characters, poses, backdrop) is the base prompt; the boxes ground the cast
        plan = layout.model_copy(update={"global_caption": prompt}).model_dump(mode="json")
        req = _request(ctx, recipe="layout", target=target, seed=seed, prompt=prompt,
                       negative_prompt=negative_prompt, params={"plan": plan}, kind="scene", output_key="scene_key")
        outcome = serving.execute(registry(ctx.res), [req], max_batch=1)[id(req)]
        if outcome.error is not None:
            raise outcome.error
        info = {"width": width, "height": height, "seed": seed, "model": model_id, "steps": steps}
        return outcome.image, {**info, **outcome.info}

    return generate


# --- stages ---------------------------------------------------------------------------------------

@stage_task(S_BACKGROUND)
def background(ctx: StageContext) -> dict[str, Any]:
    """One ad background for one size x variant (item ``<size>-v<variant>``), batched when it can be."""
    return _serve(ctx, S_BACKGROUND)


@stage_task(S_CHARACTER_SHEET)
def character_sheet(ctx: StageContext) -> dict[str, Any]:
    """The canonical square reference image of one character (item = character id), batched when it can be."""
    return _serve(ctx, S_CHARACTER_SHEET)


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
    # issue 5 (identity): InstantID / IP-Adapter conditioning when configured, else reference-only attention on
    # the sheets (recorded in info["identity"]); a gate's regeneration offsets the seed and stores the attempt
    # under its own name (s2.r1)
    image, info = identity_recipe.generate_scene(
        ctx, generate=_scene_generator(layout), prompt=prompt, negative_prompt=layout.negative_prompt or plan.negative_prompt,
        target=(layout.width, layout.height), seed=identity_recipe.scene_seed(layout.seed, ctx.task.regeneration),
        cast=list(dict.fromkeys(c.character_id for c in ordered[position].cast)), layout=layout)
    key = identity_recipe.put_scene(ctx, image, info=info, prompt=prompt)
    return {"scene_key": key, **info}


# the watermark stage lives in its own module (identity/provenance work grows there)
from . import watermark_tasks  # noqa: E402,F401
