"""Face alignment before scoring (five landmarks onto the ArcFace template) and scoring each character in their box."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atelier_contracts.keys import job_prefix
from atelier_contracts.tasks import StageTask
from atelier_gpu.identity.align import (
    ARCFACE_TEMPLATE,
    FaceFinder,
    align_face,
    alignment_matrix,
    apply,
    find_yunet,
    landmarks_from_eyes,
    similarity_transform,
    template,
)
from atelier_gpu.identity.embedder import Embedder
from atelier_gpu.identity.faces import FaceDetector, crop_face
from atelier_gpu.identity.score import identity_score
from atelier_gpu.stages.gate_identity import cast_boxes
from atelier_gpu.stages.gate_identity import identity_gate as identity_gate_stage
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext, WorkerResources
from kit import ASHA, LEFT, RAMU, RIGHT, TENANT, AppStub, face, png, story
from PIL import Image

SHEET_BG, SCENE_BG = (250, 250, 250), (60, 120, 60)


@pytest.fixture(scope="module")
def finder() -> FaceFinder:
    return FaceFinder(FaceDetector())


@pytest.fixture(scope="module")
def embedder(embedder_path: Path) -> Embedder:
    return Embedder(embedder_path)


def tilted(image: Image.Image, degrees: float, bg: tuple[int, int, int]) -> Image.Image:
    return image.rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor=bg)


def two_faces(left: dict[str, Any], right: dict[str, Any], size: int = 384) -> Image.Image:
    scene = face(size, **left, bg=SCENE_BG, scale=0.32, cx=0.27, cy=0.55)
    return face(canvas=scene, **right, scale=0.32, cx=0.73, cy=0.55)


# --- the geometry ---------------------------------------------------------------------------------

def test_the_similarity_transform_recovers_a_known_one_and_never_reflects():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = math.radians(23.0), 0.61, np.array([17.0, -42.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    m = similarity_transform(src, src @ rot.T + shift)
    assert np.allclose(m[:, :2], rot, atol=1e-9) and np.allclose(m[:, 2], shift, atol=1e-7)
    mirrored = src * [-1.0, 1.0]  # the best similarity onto a mirror image is a rotation, not a reflection
    assert np.linalg.det(similarity_transform(src, mirrored)[:, :2]) > 0
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform([[1, 1], [1, 1]], [[0, 0], [1, 1]])


def test_the_template_maps_onto_itself_and_scales_with_the_crop():
    assert np.allclose(alignment_matrix(ARCFACE_TEMPLATE), [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    assert np.allclose(template(224), ARCFACE_TEMPLATE * 2)
    # two eyes fix the similarity: placed on the template's eyes, all five points are the template's
    assert np.allclose(landmarks_from_eyes(tuple(ARCFACE_TEMPLATE[0]), tuple(ARCFACE_TEMPLATE[1])), ARCFACE_TEMPLATE)
    # a face twice the size, 30 degrees round, elsewhere: the warp takes its landmarks onto the template
    pts = landmarks_from_eyes((100.0, 100.0), (100 + 70 * math.cos(0.52), 100 + 70 * math.sin(0.52)))
    assert np.allclose(apply(alignment_matrix(pts), pts), ARCFACE_TEMPLATE, atol=1e-6)


# --- landmarks and aligned crops on drawn faces ---------------------------------------------------

def test_the_eyes_give_the_landmarks_of_a_haar_face(finder):
    sheet = face(256, **ASHA, bg=SHEET_BG)  # eyes drawn at x = 128 -+ 25.6, y = 64 + 0.415 * 128
    [found] = finder.detect(sheet)
    marks = finder.landmarks(sheet, found)
    assert marks.source == "eyes" and found.landmarks is None
    (lx, ly), (rx, ry) = marks.points[:2]
    assert abs(lx - 102.4) < 5 and abs(rx - 153.6) < 5 and abs(ly - 117) < 5 and abs(ry - 117) < 5
    assert len(marks.as_list()) == 5


@pytest.mark.parametrize("degrees", [16, 20])
def test_a_tilted_face_aligns_like_an_upright_one(finder, degrees):
    upright = face(256, **ASHA, bg=SHEET_BG)
    turned = tilted(upright, degrees, SHEET_BG)  # counter-clockwise: the right eye rises
    [up_face], [turned_face] = finder.detect(upright), finder.detect(turned)
    marks = finder.landmarks(turned, turned_face)
    (lx, ly), (rx, ry) = marks.points[:2]
    assert marks.source == "eyes" and abs(math.degrees(math.atan2(ry - ly, rx - lx)) + degrees) < 4
    aligned = np.abs(np.asarray(align_face(turned, marks), float)
                     - np.asarray(align_face(upright, finder.landmarks(upright, up_face)), float)).mean()
    square = np.abs(np.asarray(crop_face(turned, turned_face), float)
                    - np.asarray(crop_face(upright, up_face), float)).mean()
    assert align_face(turned, marks).size == (112, 112)
    assert aligned < 0.4 * square  # measured 5.1 vs 23.3 (16 degrees), 6.9 vs 26.1 (20 degrees)


def test_a_tilted_face_scores_higher_aligned_than_as_a_square_crop(finder, embedder):
    sheet = face(256, **ASHA, bg=SHEET_BG)
    scene = tilted(face(256, **ASHA, bg=SCENE_BG, scale=0.45, cx=0.45), 20, SCENE_BG)
    [s], [f] = finder.detect(sheet), finder.detect(scene)
    square = float(embedder.embed([crop_face(sheet, s)])[0] @ embedder.embed([crop_face(scene, f)])[0])
    res = identity_score(scene, {"c0": sheet}, detector=finder, embedder=embedder, threshold=0.98)
    assert res.passed and res.score > square + 0.02  # measured 0.999 aligned vs 0.960 square
    assert res.characters[0]["landmarks_source"] == "eyes"
    assert res.characters[0]["sheet_landmarks_source"] == "eyes"


def test_no_yunet_model_means_the_haar_path(tmp_path):
    assert find_yunet(None) is None and find_yunet(tmp_path / "absent") is None
    (tmp_path / "arcface.onnx").write_bytes(b"x")
    assert find_yunet(tmp_path) is None
    (tmp_path / "face_detection_yunet_2023mar.onnx").write_bytes(b"x")
    assert find_yunet(tmp_path).name == "face_detection_yunet_2023mar.onnx"


# --- each character in their box -----------------------------------------------------------------

def test_each_character_is_scored_in_their_own_box(finder, embedder):
    sheets = {"c0": face(256, **ASHA, bg=SHEET_BG), "c1": face(256, **RAMU, bg=SHEET_BG)}
    scene = two_faces(ASHA, RAMU)  # Asha on the left, Ramu on the right
    names = {"c0": "Asha", "c1": "Ramu"}
    ok = identity_score(scene, sheets, detector=finder, embedder=embedder, threshold=0.8,
                        boxes={"c0": LEFT, "c1": RIGHT}, names=names)
    assert ok.passed and all(c["found"] and c["in_box"] for c in ok.characters)
    by = {c["character_id"]: c for c in ok.characters}
    assert by["c0"]["face"][0] < by["c1"]["face"][0] and by["c0"]["box"] == [19, 115, 173, 384]
    # the layout drew Asha on the right: the right faces are there, but each in the other's box
    swapped = identity_score(scene, sheets, detector=finder, embedder=embedder, threshold=0.8,
                             boxes={"c0": RIGHT, "c1": LEFT}, names=names)
    assert not swapped.passed and swapped.regenerate
    assert "below threshold: Asha, Ramu" in swapped.detail
    assert all(c["in_box"] and c["similarity"] < 0.8 for c in swapped.characters)
    # without boxes the greedy match would have found both (the old behaviour): boxes are what changed it
    assert identity_score(scene, sheets, detector=finder, embedder=embedder, threshold=0.8).passed


def test_a_character_missing_from_their_box_fails_unless_the_box_is_only_a_suggestion(finder, embedder):
    sheets = {"c0": face(256, **ASHA, bg=SHEET_BG)}
    scene = face(384, **ASHA, bg=SCENE_BG, scale=0.32, cx=0.27, cy=0.55)  # Asha on the left
    strict = identity_score(scene, sheets, detector=finder, embedder=embedder, threshold=0.8,
                            boxes={"c0": RIGHT}, names={"c0": "Asha"})
    assert not strict.passed and strict.regenerate and "not found: Asha" in strict.detail
    assert strict.characters[0]["detail"] == "no face in their box" and strict.characters[0]["found"] is False
    loose = identity_score(scene, sheets, detector=finder, embedder=embedder, threshold=0.8,
                           boxes={"c0": RIGHT}, names={"c0": "Asha"}, strict_boxes=False)
    assert loose.passed and loose.characters[0]["in_box"] is False
    assert any("Asha: no face in their box" in w for w in loose.warnings)


def test_a_small_face_is_found_in_its_box(finder, embedder):
    """A face too small for the whole-picture pass (under 8% of the short side) is found in its box's crop."""
    sheet = face(256, **ASHA, bg=SHEET_BG)
    scene = face(768, **ASHA, bg=SCENE_BG, scale=0.05, cx=0.2, cy=0.6)
    assert finder.detect(scene) == []
    box = [0.1, 0.45, 0.3, 0.75]
    res = identity_score(scene, {"c0": sheet}, detector=finder, embedder=embedder, threshold=0.8, boxes={"c0": box})
    [asha] = res.characters
    assert asha["found"] and asha["in_box"] and asha["similarity"] is not None
    x1, y1, x2, y2 = asha["face"]
    assert 0.1 * 768 <= (x1 + x2) / 2 <= 0.3 * 768 and 0.45 * 768 <= (y1 + y2) / 2 <= 0.75 * 768


# --- the gate stage: the boxes the scene was drawn with -------------------------------------------

def _gate(tmp_path: Path, scene: Image.Image, sheets: dict[str, Image.Image], *, recorded: list[dict[str, Any]] | None,
          plan_boxes: dict[str, list[float]], embedder_path: Path) -> tuple[dict[str, Any], StageContext]:
    res = WorkerResources(Settings(home=tmp_path, identity_embedder_path=embedder_path, identity_threshold=0.8))
    job = uuid.uuid4().hex[:10]
    prefix = job_prefix(TENANT, job)
    scene_key = res.store.put(f"{prefix}/gpu.scene/s0.png", png(scene), "image/png").key
    sheet_keys = {cid: res.store.put(f"{prefix}/gpu.character_sheet/{cid}.png", png(im), "image/png").key
                  for cid, im in sheets.items()}
    scene_out: dict[str, Any] = {"scene_key": scene_key, "identity": {"mode": "none"}}
    if recorded is not None:
        scene_out["cast_boxes"] = recorded
    task = StageTask(job_id=job, tenant_id=TENANT, stage_id="st", stage="gate.identity", item="s0", kind="story",
                     spec={}, key_prefix=prefix,
                     upstream={"plan.scenes": {"plan": story([(c, plan_boxes[c]) for c in sheets])},
                               "gpu.character_sheet": {c: {"sheet_key": k} for c, k in sheet_keys.items()},
                               "gpu.scene": scene_out})
    ctx = StageContext(task, res, AppStub())
    return identity_gate_stage.stage_fn(ctx), ctx


def test_the_gate_scores_in_the_boxes_the_scene_recorded(tmp_path, embedder_path):
    sheets = {"c0": face(256, **ASHA, bg=SHEET_BG), "c1": face(256, **RAMU, bg=SHEET_BG)}
    scene = two_faces(ASHA, RAMU)
    # the story plan put Asha right, the layout the scene was drawn from put her left: the layout wins
    recorded = [{"character_id": "c0", "name": "c0", "box": LEFT}, {"character_id": "c1", "name": "c1", "box": RIGHT}]
    out, ctx = _gate(tmp_path, scene, sheets, recorded=recorded, plan_boxes={"c0": RIGHT, "c1": LEFT},
                     embedder_path=embedder_path)
    assert out["passed"] is True and out["regenerate"] is False
    report = out["report"]
    assert report["boxes_from"] == {"c0": "layout", "c1": "layout"} and report["alignment"] == "arcface-5pt-112"
    assert {c["character_id"]: c["in_box"] for c in report["characters"]} == {"c0": True, "c1": True}
    assert all(c["landmarks_source"] == "eyes" and len(c["landmarks"]) == 5 for c in report["characters"])
    [stored] = ctx.artifacts
    assert json.loads(ctx.get(stored.key))["report"]["boxes_from"]["c0"] == "layout"
    # an older scene recorded no boxes: the story plan's are suggestions, and the gate says what it did
    out, _ = _gate(tmp_path, scene, sheets, recorded=None, plan_boxes={"c0": RIGHT, "c1": LEFT},
                   embedder_path=embedder_path)
    assert out["report"]["boxes_from"] == {"c0": "story_plan", "c1": "story_plan"}
    assert out["passed"] is False  # each plan box holds the other's face: both below threshold, regenerate
    assert out["regenerate"] is True


def test_cast_boxes_prefer_the_layout_and_fall_back_to_the_plan():
    from atelier_contracts.plans import StoryPlan

    plan = StoryPlan.model_validate(story([("c0", LEFT), ("c1", RIGHT)]))

    class Out:
        model_extra = {"cast_boxes": [{"character_id": "c1", "box": [0.6, 0.2, 0.9, 0.9]}, {"character_id": "c0"}]}

    boxes, strict = cast_boxes(Out(), plan.scenes[0])
    assert boxes == {"c0": LEFT, "c1": [0.6, 0.2, 0.9, 0.9]} and strict == {"c1"}
