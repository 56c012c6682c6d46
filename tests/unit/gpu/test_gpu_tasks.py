"""GPU stage functions called directly with a real StageContext over a local store and tiny models."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atelier_contracts.errors import JobCanceled, StageError
from atelier_contracts.keys import job_prefix
from atelier_contracts.tasks import T_STAGE_DONE, T_STAGE_PROGRESS, StageTask, stage_task_name
from atelier_gpu import watermark
from atelier_gpu.registry import ModelRegistry
from atelier_gpu.stages.background import background as background_stage
from atelier_gpu.stages.character_sheet import character_sheet as character_sheet_stage
from atelier_gpu.stages.scene import scene as scene_stage
from atelier_gpu.stages.watermark import watermark_asset as watermark_stage
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext, WorkerResources, run_stage
from PIL import Image

PLANNER = {"backend": "rules", "model": "rules", "prompt_version": "1"}
TENANT = "tenant-1"


class AppStub:
    """Just enough of a Celery app for a stage: records what it would send to the orchestrator."""

    def __init__(self, res: WorkerResources | None = None) -> None:
        self.sent: list[tuple[str, list[Any]]] = []
        if res is not None:
            self.atelier_resources = res

    def send_task(self, name: str, args: list[Any] | None = None, **_: Any) -> None:
        self.sent.append((name, list(args or [])))

    def names(self) -> list[str]:
        return [n for n, _ in self.sent]


def _layout(seed: int, w: int, h: int, caption: str = "a scene") -> dict[str, Any]:
    return {"plan_id": f"layout-{seed}", "seed": seed, "width": w, "height": h, "planner": PLANNER,
            "global_caption": caption, "boxes": [{"bbox": [0.1, 0.5, 0.4, 0.95], "caption": "a girl",
                                                  "role": "character"}]}


AD_PLAN = {
    "plan_id": "ad-1", "seed": 42, "width": 1080, "height": 1080, "negative_prompt": "text, watermark",
    "planner": PLANNER, "product": {"asset": None, "mask": None},
    "taglines": [{"text": "Fresh every day", "level": "headline"}],
    "prompts": {"foreground": "a red bottle", "background": "a marble kitchen table, soft morning light"},
    "variants": [
        {"target": {"w": 1080, "h": 1080, "name": "1080x1080"}, "layout": _layout(42, 1080, 1080)},
        {"target": {"w": 1080, "h": 1920, "name": "1080x1920"}, "layout": _layout(43, 1080, 1920)},
    ],
}
CHARACTERS = [
    {"id": "c0", "name": "Asha", "description": "a girl of eight", "sheet_prompt": "full body, a girl, kids style",
     "seed": 0},
    {"id": "c1", "name": "Ramu", "description": "an old man", "sheet_prompt": "full body, an old man, kids style",
     "seed": 5},
]
STORY_PLAN = {
    "plan_id": "story-1", "seed": 7, "width": 1280, "height": 960, "negative_prompt": "ugly", "planner": PLANNER,
    "title": "The kite", "story": "Asha flies a kite.", "culture_notes": ["Makar Sankranti"], "language": "en",
    "characters": CHARACTERS,
    "scenes": [
        {"index": 0, "narration": "Asha wakes.", "backdrop": "a village house",
         "scene_prompt": "a girl in a village house",
         "cast": [{"character_id": "c0", "pose": "standing", "expression": "happy",
                   "box": {"bbox": [0.1, 0.4, 0.4, 1.0], "role": "character"}}]},
        {"index": 1, "narration": "Ramu helps.", "backdrop": "a rooftop",
         "scene_prompt": "a girl and an old man on a roof",
         "cast": []},
    ],
}
LAYOUTS = [_layout(100, 1280, 960), _layout(101, 960, 1280)]


@pytest.fixture()
def res(tmp_path: Path, models_dir: Path, registry: ModelRegistry) -> WorkerResources:
    resources = WorkerResources(Settings(home=tmp_path, models_dir=models_dir, worker_name="test-gpu"))
    resources.extras["atelier_gpu.registry"] = registry  # share the session's warm pipelines
    return resources


def _ctx(res: WorkerResources, stage: str, item: str, upstream: dict[str, Any], *, kind: str = "campaign",
         spec: dict[str, Any] | None = None, job_id: str | None = None) -> StageContext:
    job_id = job_id or uuid.uuid4().hex[:12]
    task = StageTask(job_id=job_id, tenant_id=TENANT, stage_id=f"{job_id}:{stage}:{item}", stage=stage, item=item,
                     kind=kind, spec=spec or {}, upstream=upstream, key_prefix=job_prefix(TENANT, job_id))
    return StageContext(task, res, AppStub())


def _image(ctx: StageContext, key: str) -> Image.Image:
    return Image.open(io.BytesIO(ctx.get(key)))


def test_background_picks_variant_seed_and_size(res):
    ctx = _ctx(res, "gpu.background", "1080x1920-v1", {"plan.ad_layout": {"plan": AD_PLAN}})
    out = background_stage.stage_fn(ctx)
    assert out["seed"] == 42 + 1000 * 1 + 1
    assert (out["width"], out["height"]) == (80, 128)  # sdxl-tiny caps at 128, aspect 9:16, multiples of 16
    assert out["model"] == "sdxl-tiny" and out["steps"] == 4
    assert out["background_key"] == f"{ctx.task.key_prefix}/gpu.background/1080x1920-v1.png"
    image = _image(ctx, out["background_key"])
    assert image.format == "PNG" and image.size == (80, 128)
    [art] = ctx.artifacts
    assert art.kind == "background" and art.key == out["background_key"] and (art.width, art.height) == (80, 128)
    assert art.sha256 == hashlib.sha256(ctx.get(art.key)).hexdigest()
    assert ctx.gpu_seconds > 0
    progress = [a[0] for n, a in ctx.app.sent if n == T_STAGE_PROGRESS]
    # reported only once the stage has run started_notice_after_s (tests/unit/runtime), never the last step
    assert all(p["step"] < p["total"] == 4 for p in progress)


def test_background_is_deterministic_and_overwrites_its_key(res):
    job = uuid.uuid4().hex[:12]
    first = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": AD_PLAN}}, job_id=job)
    out1 = background_stage.stage_fn(first)
    again = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": AD_PLAN}}, job_id=job)
    out2 = background_stage.stage_fn(again)
    assert out1 == out2
    assert first.artifacts[0].sha256 == again.artifacts[0].sha256
    assert res.store.list(f"{first.task.key_prefix}/gpu.background/") == [out1["background_key"]]
    other = _ctx(res, "gpu.background", "1080x1080-v1", {"plan.ad_layout": {"plan": AD_PLAN}}, job_id=job)
    out3 = background_stage.stage_fn(other)
    assert out3["seed"] == out1["seed"] + 1000
    assert other.artifacts[0].sha256 != first.artifacts[0].sha256


def test_background_uses_the_spec_model_and_settings_overrides(tmp_path, models_dir, registry):
    res = WorkerResources(Settings(home=tmp_path, models_dir=models_dir, gen_steps=2, gen_max_side=64))
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": AD_PLAN}},
               spec={"model": "flux-tiny"})
    out = background_stage.stage_fn(ctx)
    assert out["model"] == "flux-tiny" and out["steps"] == 2
    assert (out["width"], out["height"]) == (64, 64)  # gen_max_side below the model's 128
    assert isinstance(res.extras["atelier_gpu.registry"], ModelRegistry)  # built from settings on first use
    assert res.extras["atelier_gpu.registry"].models_file == models_dir / "models.yaml"


@pytest.mark.parametrize("item,upstream,spec,match", [
    ("1080x1080-v0", {"plan.ad_layout": {"plan": AD_PLAN}}, {"model": "nope"}, "unknown model 'nope'"),
    ("1080x1080", {"plan.ad_layout": {"plan": AD_PLAN}}, {}, "not '<size>-v<variant>'"),
    ("720x720-v0", {"plan.ad_layout": {"plan": AD_PLAN}}, {}, "no variant for size '720x720'"),
    ("1080x1080-v0", {}, {}, "plan.ad_layout.plan is missing"),
    ("1080x1080-v0", {"plan.ad_layout": {"plan": {"plan_id": "x"}}}, {}, "not a valid AdPlan"),
])
def test_background_bad_inputs_fail_without_retry(res, item, upstream, spec, match):
    ctx = _ctx(res, "gpu.background", item, upstream, spec=spec)
    with pytest.raises(StageError, match=match) as err:
        background_stage.stage_fn(ctx)
    assert err.value.retryable is False
    assert ctx.artifacts == []


def test_character_sheet_is_square_with_the_character_seed(res):
    ctx = _ctx(res, "gpu.character_sheet", "c1", {"plan.characters": {"characters": CHARACTERS}}, kind="story")
    out = character_sheet_stage.stage_fn(ctx)
    assert out["seed"] == 5 and (out["width"], out["height"]) == (128, 128)
    assert out["sheet_key"].endswith("/gpu.character_sheet/c1.png")
    assert _image(ctx, out["sheet_key"]).size == (128, 128)
    assert ctx.artifacts[0].kind == "character_sheet"
    missing = _ctx(res, "gpu.character_sheet", "c9", {"plan.characters": {"characters": CHARACTERS}}, kind="story")
    with pytest.raises(StageError, match="'c9'"):
        character_sheet_stage.stage_fn(missing)


def test_scene_uses_its_layout_size_and_seed(res):
    upstream = {"plan.scenes": {"plan": STORY_PLAN}, "plan.scene_layout": {"layouts": LAYOUTS},
                "gpu.character_sheet": {"c0": {"sheet_key": "k0"}, "c1": {"sheet_key": "k1"}}}
    ctx = _ctx(res, "gpu.scene", "s1", upstream, kind="story")
    out = scene_stage.stage_fn(ctx)
    assert out["seed"] == 101 and (out["width"], out["height"]) == (96, 128)  # layout 960x1280 capped at 128
    assert out["scene_key"].endswith("/gpu.scene/s1.png")
    assert ctx.artifacts[0].kind == "scene" and ctx.artifacts[0].meta["prompt"] == "a girl and an old man on a roof"
    with pytest.raises(StageError, match="no scene 5"):
        scene_stage.stage_fn(_ctx(res, "gpu.scene", "s5", upstream, kind="story"))


def test_cancel_stops_the_stage_between_steps(res):
    ctx = _ctx(res, "gpu.background", "1080x1080-v0", {"plan.ad_layout": {"plan": AD_PLAN}})
    res.runtime.cancel(ctx.task.job_id)
    with pytest.raises(JobCanceled):
        background_stage.stage_fn(ctx)
    assert ctx.artifacts == []
    assert res.runtime.last_heartbeat(ctx.task.stage_id) is not None  # the step callback beat before stopping


def test_run_stage_reports_success_with_artifacts(res):
    job = uuid.uuid4().hex[:12]
    app = AppStub(res)
    payload = StageTask(job_id=job, tenant_id=TENANT, stage_id=f"{job}:bg", stage="gpu.background",
                        item="1080x1080-v0", kind="campaign", spec={}, upstream={"plan.ad_layout": {"plan": AD_PLAN}},
                        key_prefix=job_prefix(TENANT, job)).model_dump(mode="json")
    result = run_stage(app, payload, background_stage.stage_fn)
    assert result.status == "succeeded", result.error
    assert result.gpu_seconds > 0 and result.artifacts[0].kind == "background"
    # it ended inside started_notice_after_s: no notice and no progress report, the result alone
    assert app.names() == [T_STAGE_DONE]
    assert background_stage.name == stage_task_name("gpu.background")


def _render(res: WorkerResources, job_id: str, size: tuple[int, int], seed: int = 0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    key = f"{job_prefix(TENANT, job_id)}/render.ad/1080x1080-v0.png"
    res.store.put(key, buf.getvalue(), "image/png")
    return key


def test_watermark_stage_embeds_the_job_payload(res):
    job = uuid.uuid4().hex[:12]
    key = _render(res, job, (512, 384))
    ctx = _ctx(res, "gpu.watermark", "1080x1080-v0",
               {"render.ad": {"render_key": key, "width": 512, "height": 384}}, job_id=job)
    out = watermark_stage.stage_fn(ctx)
    payload = watermark.payload_for(TENANT, job)
    assert out["asset_key"] == f"{job_prefix(TENANT, job)}/gpu.watermark/1080x1080-v0.png"
    assert (out["width"], out["height"]) == (512, 384)
    # the record also names the size the mark was embedded at, and the asset carries a C2PA manifest
    assert {k: out["watermark"][k] for k in ("method", "payload_hex", "readback_ok", "bit_accuracy", "width",
                                             "height")} == {"method": "dwtDctSvd+rs", "payload_hex": payload.hex(),
                                                            "readback_ok": True, "bit_accuracy": 1.0, "width": 512,
                                                            "height": 384}
    [art] = ctx.artifacts
    assert art.kind == "asset" and art.meta["watermark"] == out["watermark"] and art.meta["c2pa"]["state"] == "trusted"
    stored = _image(ctx, out["asset_key"])
    assert stored.format == "PNG" and watermark.detect(stored).payload == payload
    assert watermark.detect(_image(ctx, key)).payload != payload  # the render itself is untouched


def test_watermark_stage_refuses_bad_inputs(res):
    job = uuid.uuid4().hex[:12]
    small = _render(res, job, (128, 128))
    two = {"render.ad": {"render_key": small}, "render.storybook": {"render_key": small}}
    with pytest.raises(StageError, match="exactly one upstream"):
        watermark_stage.stage_fn(_ctx(res, "gpu.watermark", "p1", two, job_id=job))


def _unmarked_but_signed(ctx, out, reason):
    assert out["watermark"]["carried"] is False and reason in out["watermark"]["reason"]
    assert out["warnings"] and "carries no invisible watermark" in out["warnings"][0]
    [art] = ctx.artifacts
    assert art.kind == "asset" and art.meta["c2pa"]["state"] == "trusted"  # signed all the same
    assert art.meta["generation"]["watermark"]["carried"] is False  # and the manifest says so


def test_an_asset_too_small_for_the_mark_is_delivered_unmarked_and_signed(res):
    job = uuid.uuid4().hex[:12]
    tiny = _render(res, job, (96, 64))
    ctx = _ctx(res, "gpu.watermark", "p1", {"render.storybook": {"render_key": tiny, "width": 96, "height": 64}},
               kind="story", job_id=job)
    out = watermark_stage.stage_fn(ctx)
    _unmarked_but_signed(ctx, out, "needs at least 192")
    assert (out["width"], out["height"]) == (96, 64)


def test_a_small_placement_is_marked(res):
    job = uuid.uuid4().hex[:12]
    key = _render(res, job, (320, 50))
    ctx = _ctx(res, "gpu.watermark", "320x50-v0", {"render.ad": {"render_key": key, "width": 320, "height": 50}},
               job_id=job)
    out = watermark_stage.stage_fn(ctx)
    assert out["watermark"]["carried"] is True and out["watermark"]["readback_ok"] is True and not out.get("warnings")
    assert watermark.detect(_image(ctx, out["asset_key"])).payload == watermark.payload_for(TENANT, job)


def test_a_mark_that_does_not_read_back_is_a_warning_not_a_failure(res, monkeypatch):
    job = uuid.uuid4().hex[:12]
    key = _render(res, job, (512, 512))
    monkeypatch.setattr(watermark, "embed", lambda image, payload: image.convert("RGB"))  # a broken embedder
    ctx = _ctx(res, "gpu.watermark", "512x512-v0", {"render.ad": {"render_key": key, "width": 512, "height": 512}},
               job_id=job)
    out = watermark_stage.stage_fn(ctx)
    _unmarked_but_signed(ctx, out, "did not read back")
