"""The diffusion stages pick their recipe: inpaint around an uploaded product, layout, text-to-image."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
from atelier_contracts.errors import StageError
from atelier_contracts.keys import upload_key
from atelier_gpu.recipes import inpaint
from atelier_gpu.stages.background import background as background_stage
from atelier_gpu.stages.scene import scene as scene_stage
from PIL import Image, ImageDraw

from .test_gpu_tasks import AD_PLAN, LAYOUTS, STORY_PLAN, TENANT, _ctx, _image
from .test_gpu_tasks import res as res  # noqa: F401 - the fixture, re-exported for this module

ROOT = Path(__file__).resolve().parents[3]


def _plan_with_product() -> dict:
    plan = copy.deepcopy(AD_PLAN)
    for v in plan["variants"]:
        v["layout"]["boxes"].append({"bbox": [0.3, 0.35, 0.7, 0.95], "caption": "a red bottle", "role": "product",
                                     "z": 2})
        v["layout"]["boxes"].append({"bbox": [0.05, 0.05, 0.95, 0.25], "caption": "headline: Hi", "role": "tagline"})
    return plan


def _upload(res, rgba: Image.Image) -> str:
    upload_id = f"upl_{uuid.uuid4().hex[:8]}"
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    res.store.put(upload_key(TENANT, upload_id), buf.getvalue(), "image/png")
    return upload_id


def test_background_with_a_product_image_is_inpainted_around_it(res):
    product = Image.new("RGBA", (60, 90), (0, 0, 0, 0))
    ImageDraw.Draw(product).rounded_rectangle((10, 5, 50, 85), radius=8, fill=(190, 20, 40, 255))
    upload_id = _upload(res, product)
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": _plan_with_product()}},
               spec={"product": {"name": "x", "description": "y", "image": upload_id}})
    out = background_stage.stage_fn(ctx)
    assert out["recipe"] == "inpaint" and (out["width"], out["height"]) == (128, 128)
    assert_product_pasted(ctx, out, product)
    assert ctx.artifacts[0].meta["recipe"] == "inpaint"


def assert_product_pasted(ctx, out, product) -> None:  # type: ignore[no-untyped-def]
    """The product cut-out sits unchanged, pixel for pixel, in the background at the plan's product box."""
    placement = inpaint.place_product(inpaint.product_cutout(product), (0.3, 0.35, 0.7, 0.95), 128, 128)
    assert out["product_rect"] == list(placement.rect)
    x1, y1, x2, y2 = placement.rect
    cut = np.asarray(placement.image)
    opaque = cut[..., 3] == 255
    assert opaque.sum() > 500
    image = np.asarray(_image(ctx, out["background_key"]).convert("RGB"))
    assert np.array_equal(image[y1:y2, x1:x2][opaque], cut[..., :3][opaque])


def test_background_without_an_image_uses_the_layout_and_draws_the_product_box(res):
    ctx = _ctx(res, "gpu.background", "1080x1920-v0", {"plan.ad_layout": {"plan": _plan_with_product()}})
    out = background_stage.stage_fn(ctx)
    assert out["recipe"] == "layout" and out["batch_size"] == 1
    assert _image(ctx, out["background_key"]).size == (80, 128)


def test_background_on_a_family_without_regions_is_text_to_image(res):
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": _plan_with_product()}},
               spec={"model": "pixart-tiny"})
    out = background_stage.stage_fn(ctx)
    assert out["recipe"] == "text_to_image" and out["model"] == "pixart-tiny"


def test_scene_runs_the_layout_recipe_on_its_layout_plan(res):
    upstream = {"plan.scenes": {"plan": STORY_PLAN}, "plan.scene_layout": {"layouts": LAYOUTS},
                "gpu.character_sheet": {"c0": {"sheet_key": "k0"}, "c1": {"sheet_key": "k1"}}}
    ctx = _ctx(res, "gpu.scene", "s0", upstream, kind="story")
    out = scene_stage.stage_fn(ctx)
    assert out["recipe"] == "layout" and out["seed"] == 100
    assert _image(ctx, out["scene_key"]).size == (128, 96)


def test_gpu_check_dry_run_writes_every_figure(tmp_path):
    """bench/gpu_check.sh --dry-run: the prepared GPU script, on tiny configs on this CPU."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                                                       "GPU_CHECK_OUT": str(out), "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["mode"].startswith("dry-run") and doc["device"] == "cpu"
    for name in ("sdxl_unet", "flux_transformer"):
        assert "error" not in doc[name], doc[name]
        for variant in ("bf16", "svdquant_fake", "svdquant_packed"):
            assert doc[name][variant]["it_s"] > 0
        assert doc[name]["torchao_int8wo"]["s_step"] > 0 and doc[name]["torchao_int8wo_compiled"]["s_step"] > 0
        assert "skipped" in doc[name]["torchao_float8dq"]  # float8 needs an sm_89+ GPU
        assert not [k for k, v in doc[name].items() if isinstance(v, dict) and "error" in v], doc[name]
        assert doc[name]["svdquant_fake"]["layers"] > 0
    assert doc["svdquant_one_layer"]["relative_output_error"] < 0.2


def test_background_without_boxes_uses_the_rpg_plan_when_ad_prompts_is_upstream(res):
    plan = copy.deepcopy(AD_PLAN)
    for v in plan["variants"]:
        v["layout"]["boxes"] = []
    regional = {"plan_id": "r", "seed": 1, "width": 1080, "height": 1080, "planner": AD_PLAN["planner"],
                "base_prompt": "a kitchen and a garden", "base_ratio": 0.4, "split_ratio": "1,1",
                "regions": [{"row": 0, "col": 0, "prompt": "a kitchen"}, {"row": 0, "col": 1, "prompt": "a garden"}]}
    ctx = _ctx(res, "gpu.background", "1080x1080-v0",
               {"plan.ad_layout": {"plan": plan}, "plan.ad_prompts": {"regional": regional}})
    assert background_stage.stage_fn(ctx)["recipe"] == "regional"
    plain = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": plan}})
    assert background_stage.stage_fn(plain)["recipe"] == "text_to_image"


def test_a_background_regeneration_paints_a_new_seed_under_its_own_name(res):
    """gate.critic's regeneration: a new seed, a new artifact next to the first, the first left as it was."""
    upstream = {"plan.ad_layout": {"plan": _plan_with_product()}}
    first = _ctx(res, "gpu.background", "1080x1080-v0", upstream)
    out0 = background_stage.stage_fn(first)
    again = _ctx(res, "gpu.background", "1080x1080-v0", upstream, job_id=first.task.job_id)
    again.task = again.task.model_copy(update={"regeneration": 1})
    out1 = background_stage.stage_fn(again)
    assert out1["seed"] != out0["seed"]
    assert out0["background_key"].endswith("/gpu.background/1080x1080-v0.png")
    assert out1["background_key"].endswith("/gpu.background/1080x1080-v0.r1.png")
    assert _image(first, out0["background_key"]).tobytes() != _image(again, out1["background_key"]).tobytes()


def test_a_product_image_missing_from_storage_fails_once_without_retry(res):
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": _plan_with_product()}},
               spec={"product": {"name": "x", "description": "y", "image": "upl_gone0000"}})
    try:
        background_stage.stage_fn(ctx)
    except StageError as exc:
        assert not exc.retryable and "not in storage" in str(exc)
    else:
        raise AssertionError("a missing product image must fail the stage")
