"""The InstantID path of gpu.scene, executed on the tiny random weights `atelier models init-tiny --identity` writes."""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from atelier.cli import app
from atelier_contracts.errors import JobCanceled, StageError
from atelier_gpu.identity.embedder import Embedder
from atelier_gpu.recipes import identity as recipe
from atelier_gpu.recipes import text_to_image
from atelier_gpu.registry import ModelRegistry
from atelier_gpu.stages.scene import scene as scene_stage
from atelier_gpu.tiny import INSTANTID_FACE_DIM, INSTANTID_QUERIES, RESAMPLER_DEPTH
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext, WorkerResources
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from kit import ASHA, LEFT, RAMU, RIGHT, face, scene_ctx
from PIL import Image
from typer.testing import CliRunner

STEPS = 2
SHEET_BG = (250, 250, 250)


@pytest.fixture(scope="module")
def weights(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`atelier models init-tiny DEST --identity` on a copy of the session's tiny models (folders reused)."""
    dest = tmp_path_factory.mktemp("models-identity")
    for entry in tiny_models.parent.iterdir():
        if entry.name != tiny_models.name:
            (dest / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    shutil.copy(tiny_models, dest / tiny_models.name)
    result = CliRunner().invoke(app, ["models", "init-tiny", str(dest), "--identity"])
    assert result.exit_code == 0, result.output
    printed = dict(line.split("=", 1) for line in result.output.splitlines() if line.startswith("ATELIER_IDENTITY_"))
    assert set(printed) == {"ATELIER_IDENTITY_FACE_MODEL_DIR", "ATELIER_IDENTITY_CONTROLNET_DIR",
                            "ATELIER_IDENTITY_IP_ADAPTER_PATH"}
    paths = {name: Path(value) for name, value in printed.items()}
    assert all(p.exists() and p.is_relative_to(dest / "identity") for p in paths.values())
    return paths


@pytest.fixture(scope="module")
def registry(tiny_models: Path) -> ModelRegistry:
    return ModelRegistry(tiny_models, cache_size=1, device="cpu")


def _resources(home: Path, tiny_models: Path, registry: ModelRegistry, weights: dict[str, Path] | None,
               *, steps: int = STEPS) -> WorkerResources:
    identity = {} if weights is None else {
        "identity_face_model_dir": weights["ATELIER_IDENTITY_FACE_MODEL_DIR"],
        "identity_controlnet_dir": weights["ATELIER_IDENTITY_CONTROLNET_DIR"],
        "identity_ip_adapter_path": weights["ATELIER_IDENTITY_IP_ADAPTER_PATH"]}
    resources = WorkerResources(Settings(home=home, models_file=tiny_models, gen_max_side=64, gen_steps=steps,
                                         **identity))
    resources.extras["atelier_gpu.registry"] = registry
    return resources


@pytest.fixture()
def res(tmp_path: Path, tiny_models: Path, registry: ModelRegistry, weights: dict[str, Path]) -> WorkerResources:
    return _resources(tmp_path, tiny_models, registry, weights)


def _scene(ctx: StageContext) -> tuple[dict[str, Any], np.ndarray]:
    out = scene_stage.stage_fn(ctx)
    return out, np.asarray(Image.open(io.BytesIO(ctx.get(out["scene_key"]))).convert("RGB"))


def _pipeline_is_plain(pipe: Any, processors: dict[str, Any]) -> bool:
    """No IP-Adapter left: no image projection, and the UNet's own processor objects back in place."""
    unet = pipe.unet
    now = unet.attn_processors
    return (unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
            and now.keys() == processors.keys() and all(now[n] is processors[n] for n in processors))


def _lock_free(registry: ModelRegistry) -> bool:
    """Whether another thread could take the registry's call lock right now."""
    got: list[bool] = []

    def attempt() -> None:
        ok = registry.call_lock.acquire(blocking=False)
        got.append(ok)
        if ok:
            registry.call_lock.release()

    t = threading.Thread(target=attempt)
    t.start()
    t.join()
    return got[0]


def _plain(pipe: Any) -> np.ndarray:
    return np.asarray(text_to_image.run(pipe, family="sdxl", prompt="a girl", negative_prompt="", width=64, height=64,
                                        steps=STEPS, guidance=5.0, seed=3))


def test_the_written_weights_have_instantids_layout(weights, registry):
    state = torch.load(weights["ATELIER_IDENTITY_IP_ADAPTER_PATH"], weights_only=True)
    assert set(state) == {"image_proj", "ip_adapter"}
    block = {f"layers.{i}.0.{name}" for i in range(RESAMPLER_DEPTH)
             for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "to_q.weight", "to_kv.weight",
                          "to_out.weight")}
    ff = {f"layers.{i}.1.{name}" for i in range(RESAMPLER_DEPTH)
          for name in ("0.weight", "0.bias", "1.weight", "3.weight")}
    top = {"latents", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias", "norm_out.weight",
           "norm_out.bias"}
    assert set(state["image_proj"]) == top | block | ff
    unet = registry.load("sdxl-tiny").unet
    proj = state["image_proj"]
    assert proj["latents"].shape[1] == INSTANTID_QUERIES
    assert proj["proj_in.weight"].shape[1] == INSTANTID_FACE_DIM
    assert proj["proj_out.weight"].shape[0] == unet.config.cross_attention_dim
    cross = [i for i, n in enumerate(unet.attn_processors) if n.endswith("attn2.processor")]
    assert cross == list(range(1, 2 * len(cross), 2))  # IP-Adapter's numbering: every other processor
    assert set(state["ip_adapter"]) == {f"{i}.to_{kv}_ip.weight" for i in cross for kv in ("k", "v")}

    recogniser, yunet = recipe.face_model_files(weights["ATELIER_IDENTITY_FACE_MODEL_DIR"])
    assert yunet is None
    embedding = Embedder(recogniser).embed([face(112)], normalise=False)
    assert embedding.shape == (1, INSTANTID_FACE_DIM) and not np.allclose(np.linalg.norm(embedding), 1.0)


def test_the_face_model_folder_takes_the_recogniser_of_an_insightface_pack(tmp_path):
    antelope = tmp_path / "antelopev2"
    antelope.mkdir()
    for name in ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx",
                 "face_detection_yunet_2023mar.onnx"):
        (antelope / name).write_bytes(b"")
    assert recipe.face_model_files(antelope) == (antelope / "glintr100.onnx",
                                                 antelope / "face_detection_yunet_2023mar.onnx")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "det_10g.onnx").write_bytes(b"")
    with pytest.raises(StageError, match="no face recognition model"):
        recipe.face_model_files(empty)


def test_instantid_scene_runs_and_leaves_the_warm_pipeline_as_it_was(res, registry):
    pipe = registry.load("sdxl-tiny")
    processors = dict(pipe.unet.attn_processors)
    plain_before = _plain(pipe)
    ctx, _ = scene_ctx(res, {"c0": face(128, **ASHA, bg=SHEET_BG)}, {"c0": LEFT})
    controlnet = recipe._instantid_assets(ctx).controlnet
    seen: list[dict[str, Any]] = []
    tokens: list[tuple[int, ...]] = []

    def unet_call(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        procs = pipe.unet.attn_processors
        seen.append({
            "cross": {type(p) for n, p in procs.items() if n.endswith("attn2.processor")},
            "self": {type(p) for n, p in procs.items() if n.endswith("attn1.processor")},
            "projection": type(pipe.unet.encoder_hid_proj.image_projection_layers[0]),
            "image_embeds": tuple(kwargs["added_cond_kwargs"]["image_embeds"][0].shape),
            "lock_free": _lock_free(registry)})

    hooks = [pipe.unet.register_forward_pre_hook(unet_call, with_kwargs=True),
             controlnet.register_forward_pre_hook(
                 lambda m, a, kw: tokens.append(tuple(kw["encoder_hidden_states"].shape)), with_kwargs=True)]
    try:
        out, image = _scene(ctx)
    finally:
        for h in hooks:
            h.remove()
    assert out["identity_method"] == out["identity"]["method"] == "instantid"
    assert out["identity"]["mode"] == "instantid" and out["identity"]["reference_character"] == "c0"
    assert "IdentityNet" in out["identity"]["reason"]
    [artifact] = ctx.artifacts
    assert artifact.meta["identity_method"] == "instantid"
    assert image.shape[1::-1] == (out["width"], out["height"]) == (64, 48) and out["steps"] == STEPS
    # every step: IP attention on every cross-attention layer, the Resampler installed, the face and its CFG zeros
    assert len(seen) == STEPS and all(
        s["cross"] == {IPAdapterAttnProcessor2_0} and IPAdapterAttnProcessor2_0 not in s["self"]
        and s["projection"] is IPAdapterPlusImageProjection and s["image_embeds"] == (2, 1, 1, INSTANTID_FACE_DIM)
        and s["lock_free"] is False for s in seen)
    # IdentityNet read the 16 face tokens (both CFG halves), not the text
    assert tokens == [(2, INSTANTID_QUERIES, pipe.unet.config.cross_attention_dim)] * STEPS
    assert _pipeline_is_plain(pipe, processors) and _lock_free(registry)
    assert np.array_equal(_plain(pipe), plain_before)  # a following plain text-to-image call is unchanged


def test_the_face_conditions_the_scene_and_the_same_seed_repeats_it(res, tmp_path, tiny_models, registry):
    asha = face(128, **ASHA, bg=SHEET_BG)
    first, a = _scene(scene_ctx(res, {"c0": asha}, {"c0": LEFT})[0])
    _, again = _scene(scene_ctx(res, {"c0": asha}, {"c0": LEFT})[0])
    assert np.array_equal(a, again)
    plain_res = _resources(tmp_path / "plain", tiny_models, registry, None)
    fallback, b = _scene(scene_ctx(plain_res, {"c0": asha}, {"c0": LEFT})[0])
    assert fallback["identity_method"] == "reference_only" and fallback["seed"] == first["seed"]
    assert b.shape == a.shape and not np.array_equal(a, b)
    _, other = _scene(scene_ctx(res, {"c0": face(128, **RAMU, bg=SHEET_BG)}, {"c0": LEFT})[0])
    assert not np.array_equal(a, other)


def test_with_both_scales_at_zero_the_loop_is_the_sdxl_pipelines(res, registry, weights):
    """The InstantID loop is diffusers' SDXL loop plus the two additions: switch both off and it is the same image."""
    pipe = registry.load("sdxl-tiny")
    assets = recipe.InstantIDAssets(res.settings)
    embedding, kps = assets.face_of(face(128, **ASHA, bg=SHEET_BG))
    kps_image = recipe.draw_kps((64, 64), kps, (128, 128))

    def run(emb: Any, kps_img: Image.Image, *, cn: float = 0.8, ip: float = 0.8) -> np.ndarray:
        return np.asarray(recipe.run_instantid(
            pipe, assets.controlnet, weights["ATELIER_IDENTITY_IP_ADAPTER_PATH"], face_embedding=emb,
            kps_image=kps_img, prompt="a girl", negative_prompt="", width=64, height=64, steps=STEPS, guidance=5.0,
            seed=3, controlnet_scale=cn, ip_scale=ip))

    off = run(embedding, kps_image, cn=0.0, ip=0.0)
    assert np.array_equal(off, _plain(pipe))
    only_ip = run(embedding, kps_image, cn=0.0)
    only_cn = run(embedding, kps_image, ip=0.0)
    assert not np.array_equal(only_ip, off) and not np.array_equal(only_cn, off)
    # each input reaches the image: the embedding through the face tokens, the keypoints through IdentityNet
    assert not np.array_equal(run(embedding[::-1].copy(), kps_image, cn=0.0), only_ip)
    moved = recipe.draw_kps((64, 64), [(x - 30, y + 10) for x, y in kps], (128, 128))
    assert not np.array_equal(run(embedding, moved, ip=0.0), only_cn)


def test_a_sheet_without_a_face_is_a_clear_error(res, registry):
    pipe = registry.load("sdxl-tiny")
    processors = dict(pipe.unet.attn_processors)
    ctx, _ = scene_ctx(res, {"c0": Image.new("RGB", (128, 128), (128, 128, 128))}, {"c0": LEFT})
    with pytest.raises(StageError, match="InstantID: no face found on the character sheet") as err:
        scene_stage.stage_fn(ctx)
    assert err.value.retryable is False
    assert ctx.artifacts == [] and _pipeline_is_plain(pipe, processors) and _lock_free(registry)


def test_an_embedding_of_the_wrong_width_is_refused_and_the_adapter_unloaded(res, registry, weights):
    pipe = registry.load("sdxl-tiny")
    processors = dict(pipe.unet.attn_processors)
    assets = recipe.InstantIDAssets(res.settings)
    with pytest.raises(StageError, match=f"12 values.*takes {INSTANTID_FACE_DIM}"):
        recipe.run_instantid(pipe, assets.controlnet, weights["ATELIER_IDENTITY_IP_ADAPTER_PATH"],
                             face_embedding=np.ones(12), kps_image=Image.new("RGB", (64, 64)), prompt="a girl",
                             negative_prompt="", width=64, height=64, steps=STEPS, guidance=5.0, seed=3)
    assert _pipeline_is_plain(pipe, processors)


def test_a_cancel_stops_the_loop_and_unloads_the_adapter(tmp_path, tiny_models, registry, weights):
    res = _resources(tmp_path, tiny_models, registry, weights, steps=4)
    pipe = registry.load("sdxl-tiny")
    processors = dict(pipe.unet.attn_processors)
    ctx, _ = scene_ctx(res, {"c0": face(128, **ASHA, bg=SHEET_BG)}, {"c0": LEFT})
    steps: list[int] = []
    progress = ctx.progress

    def cancel_after_first_step(step: int, total: int) -> None:
        steps.append(step)
        res.runtime.cancel(ctx.task.job_id)  # the user cancels while the scene is being denoised
        progress(step, total)

    ctx.progress = cancel_after_first_step  # type: ignore[method-assign]
    unet_calls: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a: unet_calls.append(1))
    try:
        with pytest.raises(JobCanceled):
            scene_stage.stage_fn(ctx)
    finally:
        handle.remove()
    assert steps == [1] and len(unet_calls) == 1  # stopped after the first of 4 steps
    assert ctx.artifacts == [] and _pipeline_is_plain(pipe, processors) and _lock_free(registry)


# --- several characters: each face in its own box ---------------------------------------------------

A_BOX, B_BOX = [0.05, 0.1, 0.4, 0.9], [0.6, 0.1, 0.95, 0.9]
OTHER = {"skin": (200, 150, 110), "hair": (150, 60, 20)}  # a third drawn face, for B's second embedding


def _box_change(a: np.ndarray, b: np.ndarray, box: list[float]) -> float:
    h, w = a.shape[:2]
    d = np.abs(a.astype(float) - b.astype(float)).mean(-1)
    return float(d[int(box[1] * h):int(box[3] * h), int(box[0] * w):int(box[2] * w)].mean())


def test_keypoints_go_to_the_top_of_each_characters_box():
    kps = [(40.0, 50.0), (80.0, 52.0), (60.0, 75.0), (45.0, 95.0), (76.0, 96.0)]  # a face on a 128 sheet
    placed = recipe.place_keypoints(kps, A_BOX, (256, 256))
    (lx, ly), (rx, ry) = placed[0], placed[1]
    x, y, side = recipe.face_square(A_BOX, (256, 256))
    assert abs(side - min(0.42 * 0.35 * 256, 0.26 * 0.8 * 256)) < 1e-6
    assert A_BOX[0] * 256 < lx < rx < A_BOX[2] * 256 and abs((lx + rx) / 2 - 0.225 * 256) < 3  # centred in the box
    assert y < ly < y + side / 2 and abs(ly - ry) < 1.0  # eyes in the face's upper half, the sheet's tilt removed


def test_each_characters_face_acts_in_their_own_box(res, registry, weights):
    """Changing character B's embedding changes B's box far more than A's; without the masks it would not."""
    pipe = registry.load("sdxl-tiny")
    processors = dict(pipe.unet.attn_processors)
    assets = recipe.InstantIDAssets(res.settings)
    from atelier_contracts.plans import Box

    boxes = [Box(bbox=A_BOX, caption="a girl", role="character"), Box(bbox=B_BOX, caption="a man", role="character")]
    sheets = {"c0": face(128, **ASHA, bg=SHEET_BG), "c1": face(128, **RAMU, bg=SHEET_BG)}
    faces = recipe.instantid_faces(assets, sheets, boxes, (256, 256))
    assert [f.placed for f in faces] == ["layout", "layout"] and all(f.mask is not None for f in faces)
    other, _ = assets.face_of(face(128, **OTHER, bg=SHEET_BG))

    def run(conditions: list[recipe.FaceCondition]) -> np.ndarray:
        return np.asarray(recipe.run_instantid(
            pipe, assets.controlnet, weights["ATELIER_IDENTITY_IP_ADAPTER_PATH"], faces=conditions,
            prompt="two friends", negative_prompt="", width=256, height=256, steps=STEPS, guidance=5.0, seed=3))

    def with_b(embedding: Any, masked: bool) -> list[recipe.FaceCondition]:
        a, b = faces
        keep = (lambda m: m) if masked else (lambda m: None)
        return [recipe.FaceCondition("c0", a.embedding, a.kps_image, keep(a.mask)),
                recipe.FaceCondition("c1", embedding, b.kps_image, keep(b.mask))]

    base, changed = run(with_b(faces[1].embedding, True)), run(with_b(other, True))
    in_a, in_b = _box_change(base, changed, A_BOX), _box_change(base, changed, B_BOX)
    assert in_b >= 2.0 * in_a > 0, (in_a, in_b)  # measured 1.39 vs 3.03 (the tiny UNet's self-attention is global)
    flat_a = _box_change(run(with_b(faces[1].embedding, False)), run(with_b(other, False)), A_BOX)
    flat_b = _box_change(run(with_b(faces[1].embedding, False)), run(with_b(other, False)), B_BOX)
    assert flat_b < 1.5 * flat_a  # unmasked, both boxes change alike (measured 1.01 vs 1.11)
    assert _pipeline_is_plain(pipe, processors) and _lock_free(registry)


def test_a_two_character_instantid_scene_conditions_each_face_and_prompt_in_its_box(res, registry):
    from atelier_gpu.attention import SDXLRegionalProcessor

    pipe = registry.load("sdxl-tiny")
    processors = dict(pipe.unet.attn_processors)
    sheets = {"c0": face(128, **ASHA, bg=SHEET_BG), "c1": face(128, **RAMU, bg=SHEET_BG)}
    ctx, _ = scene_ctx(res, sheets, {"c0": LEFT, "c1": RIGHT})
    controlnet = recipe._instantid_assets(ctx).controlnet
    tokens: list[tuple[int, ...]] = []
    cross: list[set[type]] = []
    hooks = [controlnet.register_forward_pre_hook(
                 lambda m, a, kw: tokens.append(tuple(kw["encoder_hidden_states"].shape)), with_kwargs=True),
             pipe.unet.register_forward_pre_hook(
                 lambda m, a, kw: cross.append({type(p) for n, p in pipe.unet.attn_processors.items()
                                                if n.endswith("attn2.processor")}), with_kwargs=True)]
    try:
        out, image = _scene(ctx)
    finally:
        for h in hooks:
            h.remove()
    ident = out["identity"]
    assert ident["mode"] == "instantid" and ident["references"] == ["c0", "c1"] and ident["face_region"] == "boxes"
    assert ident["keypoints"] == {"c0": "layout", "c1": "layout"} and ident["regional"] == {"regions": 2,
                                                                                              "base_ratio": 0.5}
    # IdentityNet once per character per step, each time with that character's 16 face tokens (both CFG halves)
    assert tokens == [(2, INSTANTID_QUERIES, pipe.unet.config.cross_attention_dim)] * (2 * STEPS)
    assert cross == [{SDXLRegionalProcessor}] * STEPS  # regional prompts and masked face tokens, every step
    assert image.shape[1::-1] == (out["width"], out["height"])
    assert out["cast_boxes"][1]["box"] == RIGHT
    assert _pipeline_is_plain(pipe, processors) and _lock_free(registry)
