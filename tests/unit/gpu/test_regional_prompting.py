"""Regional prompting where it is needed: backgrounds with scene objects, scenes with two or more characters.

The recipe-level test swaps the prompts of two regions and measures where the pixels moved: a region's prompt
must act inside its box (RPG's complementary regional diffusion), on its own and inside the inpainting call
around a product. The stage-level tests check which recipe a background or a scene picks and what it records.
"""

from __future__ import annotations

import copy
import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from atelier_contracts.errors import StageError
from atelier_contracts.keys import job_prefix
from atelier_contracts.plans import Box
from atelier_gpu.recipes import inpaint, regional
from atelier_gpu.stages.background import background as background_stage
from atelier_gpu.stages.scene import cast_regions
from atelier_gpu.stages.scene import scene as scene_stage
from PIL import Image, ImageDraw

from .test_gpu_stages import _plan_with_product, _upload, assert_product_pasted
from .test_gpu_tasks import AD_PLAN, PLANNER, STORY_PLAN, _ctx, _image
from .test_gpu_tasks import res as res  # noqa: F401 - the fixture, re-exported for this module

# ---------------------------------------------------------------- the swap test (recipes)

SIZE = 256  # large enough that the tiny UNet's convolutions do not reach across the canvas in a few pixels
BOX_A = (0.03, 0.05, 0.33, 0.35)  # top left
BOX_B = (0.67, 0.60, 0.97, 0.90)  # bottom right
PRODUCT_BOX = (0.38, 0.30, 0.62, 0.95)  # between them, for the inpainting variant
PROMPT_A = "a red bottle on a marble table"
PROMPT_B = "a green tree in a sunny garden"
MIN_INSIDE_OVER_OUTSIDE = 3.0


def _product() -> Image.Image:
    img = Image.new("RGBA", (40, 60), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((2, 2, 38, 58), fill=(200, 30, 30, 255))
    return img


def _pixels(box: tuple[float, float, float, float]) -> np.ndarray:
    x1, y1, x2, y2 = (round(c * SIZE) for c in box)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def _generate(pipe, family: str, mode: str, first: str, second: str, seed: int):  # type: ignore[no-untyped-def]
    """One image with ``first`` in box A and ``second`` in box B; and the product's kept pixels (or None)."""
    regions = [{"box": list(BOX_A), "prompt": first}, {"box": list(BOX_B), "prompt": second}]
    common = {"width": SIZE, "height": SIZE, "steps": 2, "guidance": 5.0, "seeds": [seed]}
    if mode == "alone":
        [image] = regional.run_boxes_batch(pipe, family=family, base_prompt="a kitchen", regions=regions,
                                           base_ratio=0.3, **common)
        return np.asarray(image).astype(np.float64), None
    boxes = regional.parse_regions(regions)
    masks = regional.box_masks(boxes, SIZE, SIZE)
    [image], placement = inpaint.run_batch(
        pipe, family=family, prompt="a kitchen", product=_product(), product_box=PRODUCT_BOX,
        regions=[(b.caption, m) for b, m in zip(boxes, masks, strict=True)], base_ratio=0.3, grounding_fraction=1.0,
        **common)
    kept = np.zeros((SIZE, SIZE), bool)
    x1, y1, x2, y2 = placement.rect
    kept[y1:y2, x1:x2] = np.asarray(placement.image)[..., 3] == 255
    return np.asarray(image).astype(np.float64), kept


def swap_figures(pipe, family: str, mode: str, seed: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Mean |pixel change| when the two regions' prompts swap: inside each box, and outside both.

    Outside leaves out the product's opaque pixels, which are kept exactly and so cannot change.
    """
    before, kept = _generate(pipe, family, mode, PROMPT_A, PROMPT_B, seed)
    after, _ = _generate(pipe, family, mode, PROMPT_B, PROMPT_A, seed)
    diff = np.abs(before - after).mean(axis=-1)
    in_a, in_b = _pixels(BOX_A), _pixels(BOX_B)
    outside = ~(in_a | in_b) & (~kept if kept is not None else True)
    if kept is not None:
        assert diff[kept].max() == 0  # the product did not move by a single level
    return {"inside": float(diff[in_a | in_b].mean()), "box_a": float(diff[in_a].mean()),
            "box_b": float(diff[in_b].mean()), "outside": float(diff[outside].mean())}


@pytest.fixture(scope="module")
def pipes(sdxl, flux):  # type: ignore[no-untyped-def]
    return {"sdxl": sdxl, "flux": flux}


@pytest.mark.parametrize("mode", ["alone", "around_product"])
@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_swapping_two_region_prompts_changes_pixels_inside_the_boxes(pipes, family, mode):
    for seed in (1, 2):
        f = swap_figures(pipes[family], family, mode, seed)
        assert f["inside"] > 0 and f["outside"] >= 0
        assert f["inside"] >= MIN_INSIDE_OVER_OUTSIDE * f["outside"], f
        # both boxes moved, each well above the rest of the canvas
        assert min(f["box_a"], f["box_b"]) >= 2.0 * f["outside"], f


def test_without_regional_attention_swapping_prompts_changes_nothing(sdxl):
    """The control: the same two prompts as the base prompt alone in both runs give the same pixels (so what
    the swap test measures comes from the regions)."""
    common = {"width": 64, "height": 64, "steps": 2, "guidance": 5.0, "seeds": [1]}
    regions = [{"box": list(BOX_A), "prompt": PROMPT_A}, {"box": list(BOX_B), "prompt": PROMPT_B}]
    swapped = [{"box": list(BOX_A), "prompt": PROMPT_B}, {"box": list(BOX_B), "prompt": PROMPT_A}]
    one = regional.run_boxes_batch(sdxl, family="sdxl", base_prompt="a kitchen", regions=regions, base_ratio=1.0,
                                   **common)[0]
    two = regional.run_boxes_batch(sdxl, family="sdxl", base_prompt="a kitchen", regions=swapped, base_ratio=1.0,
                                   **common)[0]
    assert np.array_equal(np.asarray(one), np.asarray(two))  # base_ratio 1: the regions have no say


def test_region_inputs_are_checked(sdxl):
    common = {"width": 64, "height": 64, "steps": 1, "guidance": 5.0, "seeds": [1]}
    with pytest.raises(StageError, match=r"`regions\[1\]`"):
        regional.run_boxes_batch(sdxl, family="sdxl", base_prompt="x", regions=[
            {"box": [0, 0, 0.5, 0.5], "prompt": "a"}, {"box": [0.6, 0.5, 0.4, 0.9], "prompt": "b"}], **common)
    with pytest.raises(StageError, match=r"`regions\[0\].prompt`"):
        regional.run_boxes_batch(sdxl, family="sdxl", base_prompt="x", regions=[{"box": [0, 0, 1, 1], "prompt": " "}],
                                 **common)
    with pytest.raises(StageError, match="`base_ratio`"):
        regional.run_boxes_batch(sdxl, family="sdxl", base_prompt="x", base_ratio=1.5,
                                 regions=[{"box": [0, 0, 1, 1], "prompt": "a"}], **common)
    with pytest.raises(StageError, match="`regions`"):
        regional.run_boxes_batch(sdxl, family="sdxl", base_prompt="x", regions=[], **common)


def test_the_record_names_boxes_prompts_cut_at_a_word_and_the_base_ratio():
    long = "a copper pot " * 30
    boxes = [Box(bbox=(0.0, 0.0, 0.5, 1.0), caption=long, role="entity"),
             Box(bbox=(0.25, 0.0, 0.75, 0.5), caption="a lemon", role="entity", z=2)]
    masks = regional.box_masks(boxes, 64, 64)
    rec = regional.record(boxes, masks, base_prompt="a kitchen", base_ratio=0.3, source="layout", mode="inpaint",
                          steps=4, labels=[None, {"character_id": "c1"}])
    assert rec["mode"] == "inpaint" and rec["source"] == "layout" and rec["base_ratio"] == 0.3 and rec["steps"] == 4
    first, second = rec["regions"]
    assert first["box"] == [0.0, 0.0, 0.5, 1.0] and len(first["prompt"]) <= regional.PROMPT_CHARS
    head = first["prompt"].removesuffix("…")
    assert head != first["prompt"] and long.startswith(head) and long[len(head)] == " "  # cut at a word
    assert second == {"box": [0.25, 0.0, 0.75, 0.5], "prompt": "a lemon", "role": "entity", "share": 0.25,
                      "character_id": "c1"}
    assert first["share"] == 0.5 - 0.125  # the lemon (higher z) owns the part of the pot's box it overlaps


# ---------------------------------------------------------------- backgrounds (gpu.background)

@contextmanager
def region_contexts_read(registry) -> Iterator[list[int]]:  # type: ignore[no-untyped-def]
    """Counts, in one cross-attention layer of the tiny SDXL UNet, the key projections of single-row contexts.

    With classifier-free guidance the pipeline's own contexts come two rows at a time ([negative, prompt]) and the
    reference-only write pass's four; only the regional processor reads a region's context for the one
    conditional row. So the count is regions x steps when the regions act at every step, and 0 without them.
    """
    unet = registry.load("sdxl-tiny").unet
    name = next(n for n in unet.attn_processors if n.endswith("attn2.processor")).removesuffix(".processor")
    seen: list[int] = []
    handle = unet.get_submodule(name).to_k.register_forward_hook(
        lambda module, inputs, output: seen.append(1) if inputs[0].shape[0] == 1 else None)
    try:
        yield seen
    finally:
        handle.remove()


OBJECTS = [{"bbox": [0.02, 0.3, 0.28, 0.6], "caption": "a lemon tree in a terracotta pot", "role": "entity", "z": 1},
           {"bbox": [0.72, 0.4, 0.98, 0.8], "caption": "a copper pot", "role": "entity", "z": 1}]


def _plan_with_objects() -> dict:
    plan = _plan_with_product()
    for v in plan["variants"]:
        v["layout"]["boxes"] += copy.deepcopy(OBJECTS)
    return plan


def _red_bottle() -> Image.Image:
    product = Image.new("RGBA", (60, 90), (0, 0, 0, 0))
    ImageDraw.Draw(product).rounded_rectangle((10, 5, 50, 85), radius=8, fill=(190, 20, 40, 255))
    return product


def test_a_background_with_object_boxes_is_regional_around_the_product(res, registry):
    product = _red_bottle()
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": _plan_with_objects()}},
               spec={"product": {"name": "x", "description": "y", "image": _upload(res, product)}})
    with region_contexts_read(registry) as reads:
        out = background_stage.stage_fn(ctx)
    assert len(reads) == 2 * out["steps"]  # both objects' prompts, at every step of the one inpainting loop
    assert out["recipe"] == "regional" and out["product_mode"] == "inpainted"
    rec = out["regional"]
    assert rec["mode"] == "inpaint" and rec["source"] == "layout" and rec["base_ratio"] == 0.3
    assert rec["steps"] == out["steps"] and rec["base_prompt"] == AD_PLAN["variants"][0]["layout"]["global_caption"]
    assert [(r["box"], r["prompt"], r["role"]) for r in rec["regions"]] == [
        (o["bbox"], o["caption"], "entity") for o in OBJECTS]  # the objects; not the product, text or canvas
    assert all(r["share"] > 0 for r in rec["regions"])
    assert_product_pasted(ctx, out, product)  # one loop: the product's pixels are exact all the same
    [artifact] = ctx.artifacts
    assert artifact.meta["recipe"] == "regional" and artifact.meta["regional"] == rec


def test_a_background_with_object_boxes_and_no_image_draws_the_product_as_a_region(res):
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": _plan_with_objects()}})
    out = background_stage.stage_fn(ctx)
    assert out["recipe"] == "regional" and "product_rect" not in out
    rec = out["regional"]
    assert rec["mode"] == "text_to_image" and rec["source"] == "layout"
    assert [r["prompt"] for r in rec["regions"]] == [o["caption"] for o in OBJECTS] + ["a red bottle"]
    assert rec["regions"][-1]["role"] == "product" and rec["regions"][-1]["box"] == [0.3, 0.35, 0.7, 0.95]
    assert _image(ctx, out["background_key"]).size == (128, 128)


def test_a_background_without_objects_runs_the_rpg_plan_around_the_product(res):
    plan = copy.deepcopy(AD_PLAN)
    for v in plan["variants"]:
        v["layout"]["boxes"] = [{"bbox": [0.3, 0.35, 0.7, 0.95], "caption": "a red bottle", "role": "product"}]
    rpg = {"plan_id": "r", "seed": 1, "width": 1080, "height": 1080, "planner": PLANNER,
           "base_prompt": "a kitchen and a garden", "base_ratio": 0.4, "split_ratio": "1,1",
           "regions": [{"row": 0, "col": 0, "prompt": "a kitchen"}, {"row": 0, "col": 1, "prompt": "a garden"}]}
    product = _red_bottle()
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": plan}, "plan.ad_prompts": {
        "regional": rpg}}, spec={"product": {"name": "x", "description": "y", "image": _upload(res, product)}})
    out = background_stage.stage_fn(ctx)
    assert out["recipe"] == "regional"
    rec = out["regional"]
    assert rec["mode"] == "inpaint" and rec["source"] == "rpg" and rec["base_ratio"] == 0.4
    assert rec["base_prompt"] == "a kitchen and a garden"
    assert [(r["box"], r["prompt"]) for r in rec["regions"]] == [([0.0, 0.0, 0.5, 1.0], "a kitchen"),
                                                                 ([0.5, 0.0, 1.0, 1.0], "a garden")]
    assert_product_pasted(ctx, out, product)
    # no RPG plan and no objects: plain inpainting around the product, as before
    plain = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": plan}},
                 spec={"product": {"name": "x", "description": "y", "image": _upload(res, product)}})
    out = background_stage.stage_fn(plain)
    assert out["recipe"] == "inpaint" and "regional" not in out


# ---------------------------------------------------------------- story scenes (gpu.scene)

LEFT, RIGHT = [0.05, 0.3, 0.45, 1.0], [0.55, 0.3, 0.95, 1.0]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _two_character_scene(res, *, cast: int = 2):  # type: ignore[no-untyped-def]
    """gpu.scene s1 with Asha (left) and Ramu (right); the layout lists Ramu's box first; real sheets upstream.

    ``cast=1``: Asha alone."""
    job = uuid.uuid4().hex[:12]
    prefix = job_prefix("tenant-1", job)
    keys = {cid: res.store.put(f"{prefix}/gpu.character_sheet/{cid}.png", _png(Image.new("RGB", (64, 64), colour)),
                               "image/png").key for cid, colour in (("c0", (200, 60, 40)), ("c1", (40, 60, 200)))}
    story = copy.deepcopy(STORY_PLAN)
    story["scenes"][1]["cast"] = [
        {"character_id": "c0", "pose": "running", "expression": "laughing", "box": {"bbox": LEFT, "role": "character"}},
        {"character_id": "c1", "pose": "sitting", "expression": "smiling", "box": {"bbox": RIGHT, "role": "character"}}]
    layout = {"plan_id": "l1", "seed": 101, "width": 1280, "height": 960, "planner": PLANNER,
              "global_caption": "a girl and an old man on a roof",
              "boxes": [{"bbox": [0, 0, 1, 1], "caption": "a rooftop", "role": "background"},
                        {"bbox": RIGHT, "caption": "Ramu, sitting, smiling", "role": "character", "z": 10,
                         "ref_artifact": keys["c1"]},
                        {"bbox": LEFT, "caption": "Asha, running, laughing", "role": "character", "z": 10,
                         "ref_artifact": keys["c0"]}]}
    if cast == 1:
        story["scenes"][1]["cast"] = story["scenes"][1]["cast"][:1]
        layout["boxes"] = [b for b in layout["boxes"] if not b["caption"].startswith("Ramu")]
    upstream = {"plan.scenes": {"plan": story},
                "plan.scene_layout": {"layouts": [copy.deepcopy(layout), layout]},
                "gpu.character_sheet": {cid: {"sheet_key": k} for cid, k in keys.items()}}
    return _ctx(res, "gpu.scene", "s1", upstream, kind="story", job_id=job)


def test_a_two_character_scene_prompts_each_character_inside_its_box(res, registry):
    ctx = _two_character_scene(res)
    with region_contexts_read(registry) as reads:
        out = scene_stage.stage_fn(ctx)
    assert len(reads) == 2 * out["steps"]  # each character's prompt, at every step
    assert out["recipe"] == "regional" and out["seed"] == 101
    rec = out["regional"]
    assert rec["source"] == "cast" and rec["mode"] == "text_to_image" and rec["base_ratio"] == 0.5
    assert rec["base_prompt"] == "a girl and an old man on a roof" and rec["steps"] == out["steps"]
    ramu, asha = rec["regions"]  # in layout order, each matched to its character by its sheet key
    assert (ramu["character_id"], ramu["name"], ramu["box"]) == ("c1", "Ramu", RIGHT)
    assert (asha["character_id"], asha["name"], asha["box"]) == ("c0", "Asha", LEFT)
    assert asha["prompt"] == "Asha, running, laughing, a girl of eight"  # the box caption and the character's look
    assert ramu["prompt"] == "Ramu, sitting, smiling, an old man"
    assert all(r["role"] == "character" and r["share"] > 0 for r in rec["regions"])
    # the identity fallback ran in the same call: each character read its own sheet inside its box
    assert out["identity"]["mode"] == "reference_only" and out["identity"]["reference_region"] == "boxes"
    [artifact] = ctx.artifacts
    assert artifact.meta["recipe"] == "regional" and artifact.meta["regional"] == rec
    assert _image(ctx, out["scene_key"]).size == (128, 96)


def test_a_one_character_scene_stays_on_the_layout_recipe(res, registry):
    ctx = _two_character_scene(res, cast=1)
    with region_contexts_read(registry) as reads:
        out = scene_stage.stage_fn(ctx)
    # the layout recipe grounds the one box for the first 30% of the steps only
    assert len(reads) == round(0.3 * out["steps"])
    assert out["recipe"] == "layout" and "regional" not in out


def test_cast_regions_match_boxes_without_sheet_keys_by_box_then_order():
    from atelier_contracts.plans import LayoutPlan, StoryPlan

    story = copy.deepcopy(STORY_PLAN)
    story["scenes"][1]["cast"] = [
        {"character_id": "c0", "pose": "running", "expression": "laughing", "box": {"bbox": LEFT, "role": "character"}},
        {"character_id": "c1", "pose": "sitting", "expression": "smiling", "box": {"bbox": RIGHT, "role": "character"}}]
    plan = StoryPlan.model_validate(story)
    layout = LayoutPlan.model_validate({
        "plan_id": "l", "seed": 1, "width": 64, "height": 64, "planner": PLANNER, "global_caption": "a roof",
        "boxes": [{"bbox": RIGHT, "role": "character"}, {"bbox": LEFT, "caption": "Asha waving", "role": "character"}]})
    regions = cast_regions(layout, plan.scenes[1], {c.id: c for c in plan.characters})
    assert [(r["label"]["character_id"], r["prompt"]) for r in regions] == [
        ("c1", "Ramu, sitting, smiling, an old man"), ("c0", "Asha waving, a girl of eight")]
    # a page's own layout (spec.layouts) adds captioned objects: each is a region of its own, after the cast
    with_kite = layout.model_copy(update={"boxes": [*layout.boxes, *LayoutPlan.model_validate({
        "plan_id": "l", "seed": 1, "width": 64, "height": 64, "planner": PLANNER, "global_caption": "a roof",
        "boxes": [{"bbox": [0.4, 0.05, 0.6, 0.25], "caption": "a red kite", "role": "entity", "z": 5},
                  {"bbox": [0.7, 0.05, 0.9, 0.25], "caption": "", "role": "entity"}]}).boxes]})
    regions = cast_regions(with_kite, plan.scenes[1], {c.id: c for c in plan.characters})
    assert [(r["role"], r["prompt"]) for r in regions][2:] == [("entity", "a red kite")]  # uncaptioned: none
    assert regions[2]["box"] == [0.4, 0.05, 0.6, 0.25] and regions[2]["label"] is None
