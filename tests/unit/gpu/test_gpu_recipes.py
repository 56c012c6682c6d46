"""Regional, layout, control and inpaint recipes on the tiny SDXL and FLUX pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from atelier_contracts.errors import StageError
from atelier_contracts.plans import Box
from atelier_gpu import control_images
from atelier_gpu.recipes import control, inpaint, layout, regional
from atelier_gpu.recipes import text_to_image as t2i
from PIL import Image, ImageDraw

PLANNER = {"backend": "rules", "model": "rules", "prompt_version": "1"}
W, H = 64, 48
FAMILIES = ["sdxl", "flux"]
REGIONAL_PLAN = {
    "plan_id": "r", "seed": 1, "width": W, "height": H, "planner": PLANNER, "negative_prompt": "blurry",
    "base_prompt": "a kitchen table and a garden", "base_ratio": 0.3, "split_ratio": "1,1",
    "regions": [{"row": 0, "col": 0, "prompt": "a red bottle on a marble table"},
                {"row": 0, "col": 1, "prompt": "a green tree in a sunny garden"}],
}
LAYOUT_PLAN = {
    "plan_id": "l", "seed": 1, "width": W, "height": H, "planner": PLANNER, "global_caption": "a kitchen",
    "grounding_fraction": 0.5,
    "boxes": [{"bbox": [0.0, 0.0, 1.0, 1.0], "caption": "a kitchen", "role": "background"},
              {"bbox": [0.1, 0.2, 0.5, 0.9], "caption": "a red bottle", "role": "entity"},
              {"bbox": [0.6, 0.1, 0.95, 0.3], "caption": "headline: Fresh", "role": "tagline"}],
}


def _common(seed: int = 1, seeds: list[int] | None = None) -> dict:
    return {"width": W, "height": H, "steps": 2, "guidance": 5.0, "seeds": seeds or [seed]}


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def _product() -> Image.Image:
    img = Image.new("RGBA", (40, 60), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((2, 2, 38, 58), fill=(200, 30, 30, 255))
    return img


@pytest.fixture(scope="module")
def pipes(sdxl, flux):
    return {"sdxl": sdxl, "flux": flux}


@pytest.fixture(scope="module")
def controlnets(registry):
    return {"sdxl": registry.controlnet("sdxl-tiny", "canny"), "flux": registry.controlnet("flux-tiny", "canny")}


# ---------------------------------------------------------------- regional (RPG)

def test_cell_masks_tile_the_latent_grid_in_break_order():
    masks = regional.cell_masks("1,1,1;1,1,1", 96, 64)  # 2 rows x 2 cells, latent 12 x 8
    assert masks.shape == (4, 8, 12)
    assert torch.equal(masks.sum(0), torch.ones(8, 12))
    assert masks[0, 0, 0] == 1 and masks[1, 0, 11] == 1 and masks[2, 7, 0] == 1 and masks[3, 7, 11] == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_regional_differs_from_plain_and_reproduces(pipes, family):
    pipe = pipes[family]
    images = regional.run_batch(pipe, family=family, plan=REGIONAL_PLAN, **_common(seeds=[5, 6]))
    assert [im.size for im in images] == [(W, H), (W, H)]
    plain = t2i.run(pipe, family=family, prompt=REGIONAL_PLAN["base_prompt"], negative_prompt="blurry", width=W,
                    height=H, steps=2, guidance=5.0, seed=5)
    assert not np.array_equal(_arr(images[0]), _arr(plain))
    alone = regional.run(pipe, family=family, plan=REGIONAL_PLAN, seed=5, width=W, height=H, steps=2, guidance=5.0)
    assert np.abs(_arr(alone) - _arr(images[0])).max() <= 1  # seed 5 reproduces alone (batch rounding only)
    again = regional.run(pipe, family=family, plan=REGIONAL_PLAN, seed=5, width=W, height=H, steps=2, guidance=5.0)
    assert np.array_equal(_arr(alone), _arr(again))
    assert not np.array_equal(_arr(images[0]), _arr(images[1]))
    denoiser = pipe.unet if family == "sdxl" else pipe.transformer
    assert not any(type(p).__name__.endswith("RegionalProcessor") for p in denoiser.attn_processors.values())


def test_regional_base_ratio_one_is_the_base_prompt_alone(sdxl):
    plan = dict(REGIONAL_PLAN, base_ratio=1.0)
    image = regional.run(sdxl, family="sdxl", plan=plan, seed=3, width=W, height=H, steps=2, guidance=5.0)
    plain = t2i.run(sdxl, family="sdxl", prompt=plan["base_prompt"], negative_prompt="blurry", width=W, height=H,
                    steps=2, guidance=5.0, seed=3)
    assert np.abs(_arr(image) - _arr(plain)).max() <= 1


@pytest.mark.parametrize("change,match", [
    ({"family": "sd3"}, "`family`"),
    ({"plan": dict(REGIONAL_PLAN, regions=REGIONAL_PLAN["regions"][:1])}, "2 cells but 1 regions"),
    ({"plan": dict(REGIONAL_PLAN, split_ratio="1,50")}, "smaller than one latent pixel"),
    ({"width": 60}, "multiple of 16"),
    ({"seeds": []}, "`seeds`"),
])
def test_regional_check_inputs_says_what_is_wrong(sdxl, change, match):
    kwargs = {"family": "sdxl", "plan": REGIONAL_PLAN, **_common(), **change}
    with pytest.raises(StageError, match=match) as err:
        regional.run_batch(sdxl, **kwargs)
    assert err.value.retryable is False


# ---------------------------------------------------------------- layout

def test_layout_boxes_become_masks_higher_z_then_smaller_on_top():
    back = Box(bbox=(0.0, 0.0, 0.8, 1.0), caption="a table", role="entity", z=0)
    front = Box(bbox=(0.25, 0.25, 0.5, 0.75), caption="a bottle", role="entity", z=0)
    masks = layout.box_masks([back, front], 64, 64)  # latent 8x8
    assert masks.shape == (2, 8, 8)
    assert masks.sum(0).max() == 1  # one owner per latent pixel
    assert masks[1, 4, 3] == 1 and masks[0, 4, 3] == 0  # the smaller box is in front
    assert masks[0, 0, 0] == 1 and masks[:, 0, 7].sum() == 0  # outside every box: the base prompt
    assert layout.grounding_steps(0.3, 10) == 3 and layout.grounding_steps(0.01, 4) == 1
    assert layout.grounding_steps(0.0, 4) == 0


def test_layout_grounds_only_drawn_roles():
    plan = layout.parse_plan(LAYOUT_PLAN)
    assert [b.caption for b in layout.grounded_boxes(plan)] == ["a red bottle"]  # not the canvas, not the tagline


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_returns_the_size_differs_from_plain_and_reproduces(pipes, family):
    pipe = pipes[family]
    first = layout.run(pipe, family=family, plan=LAYOUT_PLAN, seed=2, width=W, height=H, steps=2, guidance=5.0)
    again = layout.run(pipe, family=family, plan=LAYOUT_PLAN, seed=2, width=W, height=H, steps=2, guidance=5.0)
    plain = t2i.run(pipe, family=family, prompt="a kitchen", width=W, height=H, steps=2, guidance=5.0, seed=2,
                    negative_prompt=None)
    assert first.size == (W, H)
    assert np.array_equal(_arr(first), _arr(again))
    assert not np.array_equal(_arr(first), _arr(plain))


def test_layout_grounding_fraction_changes_the_image(sdxl):
    short = layout.run(sdxl, family="sdxl", plan=dict(LAYOUT_PLAN, grounding_fraction=0.5), seed=4, width=W,
                       height=H, steps=4, guidance=5.0)
    full = layout.run(sdxl, family="sdxl", plan=dict(LAYOUT_PLAN, grounding_fraction=1.0), seed=4, width=W,
                      height=H, steps=4, guidance=5.0)
    assert not np.array_equal(_arr(short), _arr(full))


def test_layout_check_inputs(sdxl):
    with pytest.raises(StageError, match="not a valid LayoutPlan"):
        layout.run_batch(sdxl, family="sdxl", plan={"boxes": []}, **_common())
    with pytest.raises(StageError, match="`base_ratio`"):
        layout.run_batch(sdxl, family="sdxl", plan=LAYOUT_PLAN, base_ratio=2, **_common())


# ---------------------------------------------------------------- control

def test_ctrl_adapter_weights_are_normalised_to_the_conditioning_scale():
    assert control.normalised_scales([1.0, 1.0], 0.8) == pytest.approx([0.4, 0.4])
    assert control.normalised_scales([3.0, 1.0], 1.0) == pytest.approx([0.75, 0.25])
    with pytest.raises(StageError, match="positive sum"):
        control.normalised_scales([0.0], 1.0)


def test_derived_control_images():
    src = Image.new("RGB", (64, 48), "black")
    ImageDraw.Draw(src).rectangle((16, 12, 48, 36), fill="white")
    edges = np.asarray(control_images.derive("canny", width=64, height=48, image=src))
    assert edges.shape == (48, 64, 3) and edges.max() == 255 and edges[24, 32].max() == 0  # edges, not fill
    boxes = [Box(bbox=(0.1, 0.2, 0.4, 1.0), caption="a girl", role="character")]
    pose = np.asarray(control_images.derive("pose", width=64, height=48, boxes=boxes))
    assert pose[:, :6].max() == 0 and pose[:, 6:26].max() > 0  # a skeleton inside the character box only
    depth = np.asarray(control_images.derive("depth", width=64, height=48, boxes=boxes))
    assert depth[40, 15, 0] > depth[40, 50, 0]  # the character stands in front of the ground
    with pytest.raises(ValueError, match="needs an image"):
        control_images.derive("canny", width=8, height=8)


@pytest.mark.parametrize("family", FAMILIES)
def test_control_two_conditions_return_the_size_and_change_the_image(pipes, controlnets, family):
    pipe, cn = pipes[family], controlnets[family]
    rng = np.random.default_rng(0)
    edges = control_images.canny(Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)))
    depth = control_images.depth_from_layout([], W, H)
    controls = [control.Control(cn, edges, 1.0), control.Control(cn, depth, 1.0, 0.0, 0.5)]
    images = control.run_batch(pipe, family=family, prompt="a bottle", controls=controls, **_common(seeds=[1, 2]))
    assert [im.size for im in images] == [(W, H), (W, H)]
    plain = t2i.run(pipe, family=family, prompt="a bottle", width=W, height=H, steps=2, guidance=5.0, seed=1,
                    negative_prompt=None)
    assert not np.array_equal(_arr(images[0]), _arr(plain))
    again = control.run(pipe, family=family, prompt="a bottle", controls=controls, seed=1, width=W, height=H,
                        steps=2, guidance=5.0)
    assert np.abs(_arr(again) - _arr(images[0])).max() <= 1


def test_control_weights_matter(sdxl, controlnets):
    cn = controlnets["sdxl"]
    a = control_images.canny(Image.fromarray(np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)))
    b = control_images.depth_from_layout([], W, H)
    run = {"family": "sdxl", "prompt": "a bottle", "seed": 1, "width": W, "height": H, "steps": 2, "guidance": 5.0}
    one = control.run(sdxl, controls=[control.Control(cn, a, 3.0), control.Control(cn, b, 1.0)], **run)
    other = control.run(sdxl, controls=[control.Control(cn, a, 1.0), control.Control(cn, b, 3.0)], **run)
    assert not np.array_equal(_arr(one), _arr(other))


def test_control_check_inputs(sdxl, controlnets):
    img = Image.new("RGB", (W, H))
    bad = [
        ([], "non-empty list"),
        ([control.Control(controlnets["sdxl"], img, start=0.6, end=0.5)], "start/end"),
        ([control.Control(controlnets["sdxl"], img, weight=0.0)], "sum to 0"),
        ([control.Control(None, img)], "controlnet"),
    ]
    for controls, match in bad:
        with pytest.raises(StageError, match=match):
            control.run_batch(sdxl, family="sdxl", prompt="x", controls=controls, **_common())


# ---------------------------------------------------------------- inpaint around the product

@pytest.mark.parametrize("family", FAMILIES)
def test_inpaint_keeps_every_opaque_product_pixel(pipes, family):
    product = _product()
    images, placement = inpaint.run_batch(pipes[family], family=family, prompt="a marble kitchen table",
                                          product=product, product_box=(0.3, 0.2, 0.7, 0.95), **_common(seeds=[3, 4]))
    cut = np.asarray(placement.image)
    opaque = cut[..., 3] == 255
    assert opaque.sum() > 100
    x1, y1, x2, y2 = placement.rect
    assert y2 == round(0.95 * H)  # bottom-aligned in its box, like the renderer
    for im in images:
        assert im.size == (W, H)
        region = np.asarray(im)[y1:y2, x1:x2]
        assert np.array_equal(region[opaque], cut[..., :3][opaque])
    outside = np.asarray(images[0])[:, :x1]
    assert outside.std() > 0 and not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_inpaint_with_layout_regions_and_a_photo_on_white(sdxl):
    photo = Image.new("RGB", (50, 70), "white")
    ImageDraw.Draw(photo).rectangle((15, 10, 35, 60), fill=(20, 90, 200))
    cut = inpaint.product_cutout(photo)
    assert 19 <= cut.width <= 21 and 49 <= cut.height <= 51  # the white backdrop is keyed out
    rgba = np.asarray(cut)
    assert (rgba[rgba[..., 3] == 255][:, :3] == (20, 90, 200)).all()
    masks = layout.box_masks([Box(bbox=(0.0, 0.5, 0.3, 1.0), caption="a lemon", role="entity")], W, H)
    image, placement = inpaint.run(sdxl, family="sdxl", prompt="a kitchen", product=photo,
                                   product_box=(0.4, 0.1, 0.9, 0.9), regions=[("a lemon", masks[0])], seed=2,
                                   width=W, height=H, steps=2, guidance=5.0)
    x1, y1, x2, y2 = placement.rect
    assert np.array_equal(np.asarray(image)[y1:y2, x1:x2], np.asarray(placement.image)[..., :3])


def test_inpaint_check_inputs(sdxl):
    with pytest.raises(StageError, match="`product_box`"):
        inpaint.run_batch(sdxl, family="sdxl", prompt="x", product=_product(), product_box=(0.5, 0.5, 0.4, 0.9),
                          **_common())
    with pytest.raises(StageError, match="`product`"):
        inpaint.run_batch(sdxl, family="sdxl", prompt="x", product="not an image", product_box=(0, 0, 1, 1),
                          **_common())
