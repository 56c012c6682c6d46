"""Face detection (Haar cascade in numpy), embedders, the identity score, the gate stage and the scene recipe."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atelier_contracts.errors import StageError
from atelier_contracts.keys import job_prefix
from atelier_contracts.tasks import StageTask
from atelier_gpu.identity.embedder import Embedder, EmbedderMissing
from atelier_gpu.identity.faces import FaceDetector, FaceModelMissing, crop_face
from atelier_gpu.identity.score import identity_score
from atelier_gpu.recipes import identity as recipe
from atelier_gpu.stages.gate_identity import identity_gate as identity_gate_stage
from atelier_gpu.stages.scene import scene as scene_stage
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext, WorkerResources
from kit import ASHA, RAMU, face
from PIL import Image

TENANT = "tenant-id"
PLANNER = {"backend": "rules", "model": "rules", "prompt_version": "1"}


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def noise(size: int = 256, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_detects_a_drawn_face_where_it_is(detector):
    found = detector.detect(face(256, cx=0.4, cy=0.5, scale=0.45))
    assert len(found) == 1
    f = found[0]
    cx, cy = f.x + f.w / 2, f.y + f.h / 2
    assert abs(cx - 0.4 * 256) < 20 and abs(cy - 0.55 * 256) < 30 and 70 < f.w < 170
    assert crop_face(face(256), f).size == (112, 112)
    assert len(f.keypoints()) == 5


def test_no_face_in_noise_or_flat_images(detector):
    assert detector.detect(noise(192)) == []
    assert detector.detect(Image.new("RGB", (200, 200), (128, 128, 128))) == []


def test_missing_cascade_and_embedder_are_clear_errors(tmp_path):
    with pytest.raises(FaceModelMissing, match="does not exist"):
        FaceDetector(tmp_path / "nope.xml")
    with pytest.raises(EmbedderMissing, match="does not exist"):
        Embedder(tmp_path / "nope.onnx")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(EmbedderMissing, match=".onnx"):
        Embedder(tmp_path / "model.bin")


def test_identity_score_matches_the_right_character(detector, embedder_path):
    emb = Embedder(embedder_path)
    sheet_a, sheet_r = face(256, **ASHA, bg=(250, 250, 250)), face(256, **RAMU, bg=(250, 250, 250))
    scene_a = face(256, **ASHA, bg=(60, 120, 60), scale=0.45, cx=0.4)
    ok = identity_score(scene_a, {"c0": sheet_a}, detector=detector, embedder=emb, threshold=0.8)
    assert ok.passed and ok.score > 0.8 and not ok.regenerate
    bad = identity_score(scene_a, {"c0": sheet_r}, detector=detector, embedder=emb, threshold=0.8)
    assert not bad.passed and bad.score < 0.8 and bad.regenerate
    assert bad.characters[0]["character_id"] == "c0" and bad.characters[0]["face"] is not None


def test_two_characters_are_matched_to_their_own_faces(detector, embedder_path):
    emb = Embedder(embedder_path)
    scene = face(384, **ASHA, bg=(60, 120, 60), scale=0.32, cx=0.27, cy=0.45)
    scene = face(canvas=scene, **RAMU, scale=0.32, cx=0.73, cy=0.45)
    sheets = {"c0": face(256, **ASHA, bg=(250, 250, 250)), "c1": face(256, **RAMU, bg=(250, 250, 250))}
    res = identity_score(scene, sheets, detector=detector, embedder=emb, threshold=0.8)
    assert len(res.faces) == 2 and res.passed
    boxes = {c["character_id"]: c["face"] for c in res.characters}
    assert boxes["c0"][0] < boxes["c1"][0]  # Asha is the face on the left


def test_no_face_is_never_a_pass_and_asks_for_no_regeneration(detector, embedder_path):
    res = identity_score(noise(), {"c0": face(256)}, detector=detector, embedder=Embedder(embedder_path), threshold=0.5)
    assert res.detail == "no face found" and res.score is None
    assert not res.passed and not res.regenerate and res.warnings
    empty = identity_score(noise(), {}, detector=detector, embedder=Embedder(embedder_path), threshold=0.5)
    assert empty.passed and "no cast" in empty.detail


# --- the recipe: which identity path, seeds and names --------------------------------------------

def test_identity_mode_follows_the_configured_weights(tmp_path):
    assert recipe.identity_mode(Settings(home=tmp_path))[0] == "none"
    assert "ATELIER_IDENTITY_FACE_MODEL_DIR" in recipe.identity_mode(Settings(home=tmp_path))[1]
    ref = tmp_path / "ip-adapter"
    ref.mkdir()
    assert recipe.identity_mode(Settings(home=tmp_path, identity_reference_adapter_dir=ref))[0] == "reference"
    full = Settings(home=tmp_path, identity_face_model_dir=ref, identity_controlnet_dir=ref,
                    identity_ip_adapter_path=ref, identity_reference_adapter_dir=ref)
    assert recipe.identity_mode(full)[0] == "instantid"
    with pytest.raises(StageError, match="does not exist"):
        recipe.identity_mode(Settings(home=tmp_path, identity_controlnet_dir=tmp_path / "missing"))


def test_regenerations_change_seed_and_name_only():
    assert recipe.scene_seed(100, 0) == 100 and recipe.scene_seed(100, 1) != recipe.scene_seed(100, 2) != 100
    assert recipe.scene_seed(2**32 - 1, 3) < 2**32
    assert (recipe.scene_name("s2", 0), recipe.scene_name("s2", 1)) == ("s2", "s2.r1")
    kps = recipe.draw_kps((64, 48), [(10, 10), (30, 10), (20, 20), (12, 30), (28, 30)], (40, 40))
    assert kps.size == (64, 48) and np.asarray(kps).max() > 0


# --- the gate stage -------------------------------------------------------------------------------

STORY_PLAN = {
    "plan_id": "story-1", "seed": 7, "width": 1280, "height": 960, "negative_prompt": "", "planner": PLANNER,
    "title": "T", "story": "S", "culture_notes": [], "language": "en",
    "characters": [{"id": "c0", "name": "Asha", "description": "a girl", "sheet_prompt": "a girl", "seed": 0}],
    "scenes": [{"index": 0, "narration": "n", "backdrop": "b", "scene_prompt": "p",
                "cast": [{"character_id": "c0", "pose": "standing", "expression": "happy",
                          "box": {"bbox": [0.1, 0.4, 0.4, 1.0], "role": "character"}}]}],
}


class AppStub:
    def send_task(self, *_: Any, **__: Any) -> None:
        pass


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _gate_ctx(tmp_path: Path, scene: Image.Image, sheet: Image.Image, *, regeneration: int = 0,
              **settings: Any) -> StageContext:
    res = WorkerResources(Settings(home=tmp_path, **settings))
    job = uuid.uuid4().hex[:10]
    prefix = job_prefix(TENANT, job)
    scene_key = res.store.put(f"{prefix}/gpu.scene/s0.png", _png(scene), "image/png").key
    sheet_key = res.store.put(f"{prefix}/gpu.character_sheet/c0.png", _png(sheet), "image/png").key
    task = StageTask(job_id=job, tenant_id=TENANT, stage_id="st", stage="gate.identity", item="s0", kind="story",
                     spec={}, key_prefix=prefix, regeneration=regeneration,
                     upstream={"plan.scenes": {"plan": STORY_PLAN}, "gpu.character_sheet": {"c0": {"sheet_key": sheet_key}},
                               "gpu.scene": {"scene_key": scene_key, "identity": {"mode": "none"}}})
    return StageContext(task, res, AppStub())


def test_gate_stage_reports_the_gate_contract(tmp_path, embedder_path):
    sheet = face(256, **ASHA, bg=(250, 250, 250))
    ctx = _gate_ctx(tmp_path, face(256, **RAMU, bg=(60, 120, 60)), sheet, regeneration=1,
                    identity_embedder_path=embedder_path, identity_threshold=0.8)
    out = identity_gate_stage.stage_fn(ctx)
    assert out["passed"] is False and out["regenerate"] is True and out["score"] < 0.8
    assert out["gates"][0]["name"] == "identity" and out["artifact_key"].endswith("gpu.scene/s0.png")
    assert out["identity_mode"] == "none" and out["regeneration"] == 1
    [report] = ctx.artifacts
    assert report.key.endswith("gate.identity/s0.r1.json") and report.kind == "gate_report"
    assert json.loads(ctx.get(report.key))["score"] == out["score"]
    ok = identity_gate_stage.stage_fn(_gate_ctx(tmp_path, face(256, **ASHA, bg=(60, 120, 60)), sheet,
                                                         identity_embedder_path=embedder_path))
    assert ok["passed"] is True and ok["regenerate"] is False


def test_gate_stage_without_an_embedder_warns_and_never_passes(tmp_path):
    ctx = _gate_ctx(tmp_path, face(256), face(256), identity_gate_strict=True)
    out = identity_gate_stage.stage_fn(ctx)
    assert out["passed"] is False and out["regenerate"] is False and out["strict"] is True
    assert "ATELIER_IDENTITY_EMBEDDER_PATH" in out["warnings"][0]


def test_scene_regeneration_offsets_the_seed_and_keeps_the_first_attempt(tmp_path, tiny_models):
    from atelier_gpu.registry import ModelRegistry

    res = WorkerResources(Settings(home=tmp_path, models_file=tiny_models, gen_max_side=64))
    res.extras["atelier_gpu.registry"] = ModelRegistry(tiny_models, cache_size=1, device="cpu")
    layout = {"plan_id": "l", "seed": 100, "width": 64, "height": 64, "planner": PLANNER, "global_caption": "c",
              "boxes": []}
    upstream = {"plan.scenes": {"plan": STORY_PLAN}, "plan.scene_layout": {"layouts": [layout]},
                "gpu.character_sheet": {"c0": {"sheet_key": "k0"}}}
    outs = []
    for regeneration in (0, 1):
        task = StageTask(job_id="j1", tenant_id=TENANT, stage_id="s", stage="gpu.scene", item="s0", kind="story",
                         spec={}, upstream=upstream, key_prefix=job_prefix(TENANT, "j1"), regeneration=regeneration)
        outs.append(scene_stage.stage_fn(StageContext(task, res, AppStub())))
    assert outs[0]["seed"] == 100 and outs[1]["seed"] == recipe.scene_seed(100, 1)
    assert outs[0]["scene_key"].endswith("gpu.scene/s0.png") and outs[1]["scene_key"].endswith("gpu.scene/s0.r1.png")
    assert res.store.exists(outs[0]["scene_key"]) and res.store.exists(outs[1]["scene_key"])
    assert outs[1]["identity"]["mode"] == "none" and outs[1]["identity"]["regeneration"] == 1
