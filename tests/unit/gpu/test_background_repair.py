"""A gate's repair: the critic's failed regions of a background are redrawn in place (masked inpainting of those
boxes with their prompts), every other pixel kept, before the gate falls back to a new seed."""

from __future__ import annotations

import numpy as np
import pytest
from atelier_contracts.errors import StageError
from atelier_contracts.plans import Box
from atelier_contracts.tasks import Repair
from atelier_gpu.recipes import inpaint
from atelier_gpu.stages.background import background as background_stage
from PIL import Image, ImageDraw

from .test_gpu_stages import _plan_with_product, _upload, assert_product_pasted
from .test_gpu_tasks import _ctx, _image
from .test_gpu_tasks import res as res  # noqa: F401 - the fixture, re-exported for this module

SIZE = 128
LEMON = (0.05, 0.6, 0.3, 0.9)


def _picture(size: int = SIZE) -> Image.Image:
    """A picture with structure (bands and a disc), so kept pixels are recognisable."""
    img = Image.new("RGB", (size, size), (40, 90, 160))
    d = ImageDraw.Draw(img)
    for i in range(0, size, 16):
        d.rectangle((i, 0, i + 7, size), fill=(200, 180 - i, 60 + i))
    d.ellipse((size // 3, size // 4, 2 * size // 3, 3 * size // 4), fill=(250, 250, 240))
    return img


def _inside(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) > 0


def test_the_mask_grows_each_box_and_spares_the_protected_one():
    mask = inpaint.repair_mask([LEMON, (0.6, 0.1, 0.9, 0.3)], 100, 100, protect=(0.0, 0.7, 0.2, 1.0), margin=0.03)
    m = _inside(mask)
    assert m[60, 10] == m[20, 75] and m[60, 10]  # inside both boxes (away from the protected corner)
    assert m[58, 25] and not m[55, 25]  # the box starts at y=60, grown by 3 pixels
    assert not m[80, 10] and not m[95, 5]  # the protected box stays black
    assert not m[50, 50] and not m[5, 5]


def test_a_repair_redraws_only_its_regions(sdxl):
    picture = _picture()
    regions = [Box(bbox=LEMON, caption="a lemon", role="entity")]
    [out], share = inpaint.repair_batch(sdxl, family="sdxl", image=picture, regions=regions, prompt="a kitchen",
                                        width=SIZE, height=SIZE, steps=2, guidance=5.0, seeds=[3])
    mask = _inside(inpaint.repair_mask([LEMON], SIZE, SIZE))
    before, after = np.asarray(picture), np.asarray(out)
    assert out.size == (SIZE, SIZE) and abs(share - mask.mean()) < 1e-9 and 0 < share < 0.15
    assert np.array_equal(before[~mask], after[~mask])  # every pixel outside the repaired box, exactly
    assert np.abs(before[mask].astype(int) - after[mask].astype(int)).mean() > 5  # the box was redrawn
    with pytest.raises(StageError, match="protected product box"):
        inpaint.repair_batch(sdxl, family="sdxl", image=picture, regions=regions, prompt="a kitchen", width=SIZE,
                             height=SIZE, steps=1, guidance=5.0, seeds=[3], protect=(0.0, 0.5, 0.4, 1.0))
    with pytest.raises(StageError, match="at least one region"):
        inpaint.repair_batch(sdxl, family="sdxl", image=picture, regions=[], prompt="a kitchen", width=SIZE,
                             height=SIZE, steps=1, guidance=5.0, seeds=[3])


def test_the_background_stage_repairs_the_attempt_the_gate_judged(res):
    """gpu.background with StageTask.repair: the judged background's failed region is redrawn, the product photo
    and every other pixel kept; the output and the artifact record the repair."""
    product = Image.new("RGBA", (60, 90), (0, 0, 0, 0))
    ImageDraw.Draw(product).rounded_rectangle((10, 5, 50, 85), radius=8, fill=(190, 20, 40, 255))
    spec = {"product": {"name": "x", "description": "y", "image": _upload(res, product)}}
    upstream = {"plan.ad_layout": {"plan": _plan_with_product()}}
    first_ctx = _ctx(res, "gpu.background", "1080x1080-v0", upstream, spec=spec)
    first = background_stage.stage_fn(first_ctx)
    judged = first["background_key"]

    ctx = _ctx(res, "gpu.background", "1080x1080-v0", upstream, spec=spec, job_id=first_ctx.task.job_id)
    ctx.task.regeneration = 1
    ctx.task.repair = Repair.model_validate({
        "gate": "gate.critic", "artifact_key": judged, "regeneration": 0,
        "regions": [{"index": 2, "role": "entity", "bbox": list(LEMON), "prompt": "a lemon tree in a pot"}]})
    out = background_stage.stage_fn(ctx)
    assert out["recipe"] == "repair" and out["background_key"].endswith("gpu.background/1080x1080-v0.r1.png")
    rec = out["repair"]
    assert rec["gate"] == "gate.critic" and rec["from"] == judged and rec["regeneration"] == 0
    assert rec["regions"] == [{"index": 2, "role": "entity", "box": list(LEMON), "prompt": "a lemon tree in a pot"}]
    assert 0 < rec["mask_share"] < 0.15
    before = np.asarray(_image(ctx, judged).convert("RGB"))
    after = np.asarray(_image(ctx, out["background_key"]).convert("RGB"))
    mask = _inside(inpaint.repair_mask([LEMON], after.shape[1], after.shape[0], protect=(0.3, 0.35, 0.7, 0.95)))
    assert np.array_equal(before[~mask], after[~mask]) and not np.array_equal(before[mask], after[mask])
    assert out["product_mode"] == "inpainted" and out["product_rect"] == first["product_rect"]
    assert_product_pasted(ctx, out, product)
    artifact = next(a for a in ctx.artifacts if a.key == out["background_key"])
    assert artifact.meta["recipe"] == "repair" and artifact.meta["repair"] == rec
