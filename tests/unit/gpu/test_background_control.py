"""gpu.background with the campaign's ``control`` field: the control recipe on the tiny ControlNets."""

from __future__ import annotations

import copy
import dataclasses
import io
import time

import numpy as np
import pytest
from atelier_contracts.errors import StageError
from atelier_contracts.keys import upload_key
from atelier_gpu import generation
from atelier_gpu.recipes import control as control_recipe
from atelier_gpu.registry import ControlNetSpec
from atelier_gpu.stages import background as background_module
from atelier_gpu.stages.background import background as background_stage
from PIL import Image, ImageDraw

from .test_gpu_stages import _plan_with_product, _upload, assert_product_pasted
from .test_gpu_tasks import AD_PLAN, TENANT, _ctx, _image
from .test_gpu_tasks import res as res  # noqa: F401 - the fixture, re-exported for this module


def _plan_without_boxes() -> dict:
    """An ad plan whose backgrounds would be plain text-to-image without control."""
    plan = copy.deepcopy(AD_PLAN)
    for v in plan["variants"]:
        v["layout"]["boxes"] = []
    return plan


def _sketch(size: tuple[int, int] = (200, 150)) -> Image.Image:
    """A picture with strong edges (the canny control is taken from it)."""
    im = Image.new("RGB", size, (20, 20, 20))
    d = ImageDraw.Draw(im)
    d.rectangle((20, 20, 90, 120), fill=(240, 240, 240))
    d.ellipse((110, 30, 190, 110), fill=(200, 60, 60))
    d.line((0, 140, 200, 100), fill=(255, 255, 0), width=5)
    return im


def _campaign(**extra) -> dict:
    return {"product": {"name": "x", "description": "y"}, **extra}


def test_control_steers_the_background_and_is_recorded(res):
    upload_id = _upload(res, _sketch())
    upstream = {"plan.ad_layout": {"plan": _plan_without_boxes()}}
    control = [{"kind": "canny", "image": upload_id, "weight": 1.0, "scale": 0.9, "start": 0.0, "end": 0.8}]
    ctx = _ctx(res, "gpu.background", "1080x1920-v0", upstream, spec=_campaign(control=control))
    out = background_stage.stage_fn(ctx)

    assert out["recipe"] == "control" and out["model"] == "sdxl-tiny"
    assert (out["width"], out["height"]) == (80, 128)
    assert out["controls"] == [{"name": "canny", "kind": "canny"}]
    assert out["control"] == [{"kind": "canny", "image": upload_id, "controlnet": "canny", "weight": 1.0,
                               "scale": 0.9, "start": 0.0, "end": 0.8, "effective_scale": 0.9}]
    assert "product_mode" not in out and "product_rect" not in out
    image = _image(ctx, out["background_key"])
    assert image.size == (80, 128)
    [art] = ctx.artifacts
    assert art.meta["recipe"] == "control" and art.meta["control"] == out["control"]

    # the same seed, prompt and model without control: text-to-image, and another picture
    plain = _ctx(res, "gpu.background", "1080x1920-v0", upstream, spec=_campaign())
    plain_out = background_stage.stage_fn(plain)
    assert plain_out["recipe"] == "text_to_image" and plain_out["seed"] == out["seed"]
    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    b = np.asarray(_image(plain, plain_out["background_key"]).convert("RGB"), dtype=np.int16)
    assert a.shape == b.shape and np.abs(a - b).mean() > 1.0

    # deterministic: the same control and seed paint the same image again
    again = _ctx(res, "gpu.background", "1080x1920-v0", upstream, spec=_campaign(control=control))
    again_out = background_stage.stage_fn(again)
    assert again.artifacts[0].sha256 == art.sha256 and again_out["control"] == out["control"]


def test_several_controls_are_averaged_with_their_weights_and_scales(res, monkeypatch):
    first, second = _upload(res, _sketch()), _upload(res, _sketch((90, 160)).transpose(Image.Transpose.ROTATE_90))
    control = [{"kind": "canny", "image": first, "weight": 3.0, "scale": 0.8, "start": 0.1, "end": 0.9},
               {"kind": "canny", "image": second, "weight": 1.0, "scale": 0.4}]
    seen: dict = {}
    real_run_batch, real_scales = control_recipe.run_batch, control_recipe.normalised_scales

    def spy_run_batch(pipe, **kwargs):
        seen["controls"] = kwargs["controls"]
        return real_run_batch(pipe, **kwargs)

    def spy_scales(weights, conditioning_scale):
        seen["scales"] = real_scales(weights, conditioning_scale)
        return seen["scales"]

    monkeypatch.setattr(control_recipe, "run_batch", spy_run_batch)
    monkeypatch.setattr(control_recipe, "normalised_scales", spy_scales)
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": _plan_without_boxes()}},
               spec=_campaign(control=control))
    out = background_stage.stage_fn(ctx)

    assert out["recipe"] == "control"
    # weights normalised to sum 1 (3/4, 1/4), each times its own scale
    assert [c["effective_scale"] for c in out["control"]] == [0.6, 0.1]
    assert seen["scales"] == pytest.approx([0.6, 0.1])
    got = seen["controls"]
    assert [(c.kind, c.start, c.end) for c in got] == [("canny", 0.1, 0.9), ("canny", 0.0, 1.0)]
    # the canny maps are taken from the uploads at the background size, and differ as the uploads do
    assert all(c.image.size == (128, 128) for c in got)
    assert not np.array_equal(np.asarray(got[0].image), np.asarray(got[1].image))
    assert _image(ctx, out["background_key"]).size == (128, 128)


def test_control_with_a_product_image_pastes_the_product_back_unchanged(res):
    product = Image.new("RGBA", (60, 90), (0, 0, 0, 0))
    ImageDraw.Draw(product).rounded_rectangle((10, 5, 50, 85), radius=8, fill=(190, 20, 40, 255))
    product_id, control_id = _upload(res, product), _upload(res, _sketch())
    spec = {"product": {"name": "x", "description": "y", "image": product_id},
            "control": [{"kind": "canny", "image": control_id}]}
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": _plan_with_product()}}, spec=spec)
    out = background_stage.stage_fn(ctx)

    assert out["recipe"] == "control" and out["product_mode"] == "pasted"
    assert out["control"][0]["scale"] == 0.8 and out["control"][0]["effective_scale"] == 0.8  # the defaults
    assert_product_pasted(ctx, out, product)
    assert ctx.artifacts[0].meta["product_mode"] == "pasted"


def test_control_runs_on_flux_too(res):
    upload_id = _upload(res, _sketch())
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": _plan_without_boxes()}},
               spec=_campaign(model="flux-tiny", control=[{"kind": "canny", "image": upload_id}]))
    out = background_stage.stage_fn(ctx)
    assert out["recipe"] == "control" and out["model"] == "flux-tiny"
    assert _image(ctx, out["background_key"]).size == (out["width"], out["height"])


@pytest.mark.parametrize(
    ("model", "kind", "expected"),
    [
        ("sdxl-tiny", "depth", ["sdxl-tiny", "no depth ControlNet", "canny (canny)"]),
        ("sdxl-tiny-svdq", "canny", ["sdxl-tiny-svdq", "no canny ControlNet", "its ControlNets: none"]),
        ("pixart-tiny", "canny", ["pixart-tiny", "pixart", "sdxl or flux"]),
    ],
    ids=["kind-missing", "no-controlnets", "family-without-controlnets"],
)
def test_a_model_without_a_controlnet_of_the_kind_fails_before_generating(res, model, kind, expected):
    upload_id = _upload(res, _sketch())
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": _plan_without_boxes()}},
               spec=_campaign(model=model, control=[{"kind": kind, "image": upload_id}]))
    with pytest.raises(StageError) as err:
        background_stage.stage_fn(ctx)
    assert err.value.retryable is False
    for text in expected:
        assert text in str(err.value)
    assert ctx.artifacts == [] and ctx.gpu_seconds == 0


def test_a_missing_control_image_is_a_non_retryable_error(res):
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": _plan_without_boxes()}},
               spec=_campaign(control=[{"kind": "canny", "image": "upl_gone"}]))
    with pytest.raises(StageError) as err:
        background_stage.stage_fn(ctx)
    assert err.value.retryable is False and "control image 'upl_gone'" in str(err.value)
    assert err.value.field == "spec.control.0.image" and ctx.artifacts == [] and ctx.gpu_seconds == 0


def test_control_params_pick_the_controlnet_of_each_kind_and_use_maps_as_given(res):
    spec = generation.registry(res).spec("sdxl-tiny")
    canny = spec.controlnets["canny"]
    spec = dataclasses.replace(spec, controlnets={
        "canny": canny, "zdepth": ControlNetSpec("zdepth", canny.path, "depth"),
        "adepth": ControlNetSpec("adepth", canny.path, "depth"), "pose": ControlNetSpec("pose", canny.path, "pose")})
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {})
    depth, pose, edges = (_upload(res, _sketch()) for _ in range(3))
    params, record = background_module.control_params(ctx, "sdxl-tiny", spec, [
        {"kind": "depth", "image": depth, "weight": 1.0, "scale": 1.0},
        {"kind": "pose", "image": pose, "weight": 1.0, "scale": 0.5, "start": 0.2, "end": 0.6},
        {"kind": "canny", "image": edges, "weight": 2.0, "scale": 0.25}])
    assert [(c["name"], c["kind"], c["use_as_is"]) for c in params["controls"]] == [
        ("adepth", "depth", True), ("pose", "pose", True), ("canny", "canny", False)]
    assert params["controls"][1]["image_key"] == upload_key(TENANT, pose)
    assert (params["controls"][1]["start"], params["controls"][1]["end"]) == (0.2, 0.6)
    # what the recipe will apply equals each control's scale x weight / sum(weights)
    applied = control_recipe.normalised_scales([c["weight"] for c in params["controls"]],
                                               params["conditioning_scale"])
    assert applied == pytest.approx([0.25, 0.125, 0.125])
    assert [r["effective_scale"] for r in record] == [0.25, 0.125, 0.125]
    with pytest.raises(StageError) as err:
        background_module.control_params(ctx, "sdxl-tiny", spec, [{"kind": "canny", "image": edges, "end": 1.5}])
    assert err.value.field == "spec.control.0" and "end" in str(err.value)


def _wait(client, job_id: str, headers: dict, *, timeout_s: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout_s  # a guard against a hung worker, not a timing assertion
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def test_a_submitted_campaign_with_control_runs_end_to_end_on_the_embedded_engine(tmp_path, models_dir):
    """POST /v1/jobs with `control` → plan → gpu.background (control recipe) → render → watermark → deliver."""
    from atelier.cli import build_api
    from atelier.demo import product_png
    from atelier_control.auth import create_tenant
    from atelier_control.db import engine_from_settings, session_factory, session_scope
    from atelier_runtime.settings import Settings
    from fastapi.testclient import TestClient

    settings = Settings(home=tmp_path / "home", models_dir=models_dir)
    assert settings.embedded
    api = build_api(settings)
    with session_scope(session_factory(engine_from_settings(settings))) as s:
        _, key = create_tenant(s, "control-e2e")
    headers = {"Authorization": f"Bearer {key}"}
    sketch = io.BytesIO()
    _sketch().save(sketch, format="PNG")
    with TestClient(api) as client:
        ids = [client.post("/v1/uploads", files={"file": (name, data, "image/png")}, headers=headers).json()["id"]
               for name, data in (("p.png", product_png()), ("c.png", sketch.getvalue()))]
        spec = {"brand": {"name": "B"}, "product": {"name": "P", "description": "d", "image": ids[0]},
                "taglines": ["Hi"], "sizes": ["1080x1080"], "variants": 1, "seed": 3,
                "control": [{"kind": "canny", "image": ids[1], "end": 0.8}]}
        r = client.post("/v1/jobs", json={"kind": "campaign", "spec": spec}, headers=headers)
        assert r.status_code == 202, r.text
        job = _wait(client, r.json()["id"], headers)
        assert job["status"] == "succeeded", job
        arts = client.get(f"/v1/jobs/{job['id']}/artifacts", headers=headers).json()["items"]
        [background] = [a for a in arts if a["kind"] == "background"]
        assert background["meta"]["recipe"] == "control" and background["meta"]["product_mode"] == "pasted"
        assert background["meta"]["control"][0]["image"] == ids[1] and background["meta"]["control"][0]["end"] == 0.8
        assert [a for a in arts if a["kind"] == "asset"]

        # a kind the job's model has no ControlNet for fails the stage at once (no retry), naming model and kind
        spec["control"] = [{"kind": "pose", "image": ids[1]}]
        r = client.post("/v1/jobs", json={"kind": "campaign", "spec": spec}, headers=headers)
        assert r.status_code == 202, r.text
        job = _wait(client, r.json()["id"], headers)
        assert job["status"] == "failed"
        [stage] = [s for s in job["stages"] if s["name"] == "gpu.background"]
        assert stage["status"] == "failed" and stage["attempts"] == 1
        assert "sdxl-tiny has no pose ControlNet" in stage["error"]
