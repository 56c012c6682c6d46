"""The weight-free identity path of gpu.scene: reference-only attention on the cast's character sheets."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atelier_contracts.errors import JobCanceled
from atelier_contracts.plans import LayoutPlan
from atelier_gpu.recipes import identity as recipe
from atelier_gpu.recipes import text_to_image
from atelier_gpu.recipes.reference_attn import ReferenceAttnProcessor
from atelier_gpu.registry import ModelRegistry
from atelier_gpu.stages.scene import scene as scene_stage
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext, WorkerResources
from kit import ASHA, LEFT, RAMU, RIGHT, face, scene_ctx
from PIL import Image


@pytest.fixture(scope="module")
def registry(tiny_models: Path) -> ModelRegistry:
    return ModelRegistry(tiny_models, cache_size=1, device="cpu")


@pytest.fixture()
def res(tmp_path: Path, tiny_models: Path, registry: ModelRegistry) -> WorkerResources:
    resources = WorkerResources(Settings(home=tmp_path, models_file=tiny_models, gen_max_side=64))
    resources.extras["atelier_gpu.registry"] = registry
    return resources


def _attn1_key_lengths(registry: ModelRegistry) -> tuple[list[int], Any]:
    unet = registry.load("sdxl-tiny").unet
    name = next(n for n in unet.attn_processors if n.endswith("attn1.processor")).removesuffix(".processor")
    seen: list[int] = []
    return seen, unet.get_submodule(name).to_k.register_forward_hook(lambda m, i, o: seen.append(int(i[0].shape[1])))


def test_two_characters_each_read_their_own_sheet_in_their_box(res, registry):
    sheets = {"c0": face(128, **ASHA, bg=(250, 250, 250)), "c1": face(128, **RAMU, bg=(250, 250, 250))}
    ctx, keys = scene_ctx(res, sheets, {"c0": LEFT, "c1": RIGHT})
    seen, handle = _attn1_key_lengths(registry)
    try:
        out = scene_stage.stage_fn(ctx)
    finally:
        handle.remove()
    ident = out["identity"]
    assert ident["mode"] == "reference_only" and ident["method"] == out["identity_method"] == "reference_only"
    assert ident["references"] == ["c0", "c1"] and ident["reference_region"] == "boxes"
    assert ident["reference_steps"] == out["steps"] and "InstantID" in ident["reason"]
    own = min(seen)
    assert max(seen) == 3 * own  # the read pass saw its own tokens plus both sheets' tokens
    [artifact] = ctx.artifacts
    assert artifact.meta["identity_method"] == "reference_only" and artifact.meta["identity"]["mode"] == "reference_only"
    assert "recipe" in artifact.meta  # the layout recipe still made the scene (its meta keys are kept)
    # gate.identity looks for each character's face in the box the scene was drawn with
    assert out["cast_boxes"] == [{"character_id": "c0", "name": "c0", "box": LEFT},
                                 {"character_id": "c1", "name": "c1", "box": RIGHT}]
    image = Image.open(io.BytesIO(ctx.get(out["scene_key"])))
    assert image.size == (out["width"], out["height"]) == (64, 48)
    assert recipe.reference_regions(LayoutPlan.model_validate(ctx.task.upstream["plan.scene_layout"]["layouts"][0]),
                                    keys)[1].bbox == tuple(RIGHT)


def test_the_call_lock_is_held_and_processors_are_installed_only_for_the_call(res, registry):
    ctx, _ = scene_ctx(res, {"c0": face(128, **ASHA, bg=(250, 250, 250))}, {})
    pipe = registry.load("sdxl-tiny")
    before = dict(pipe.unet.attn_processors)
    seen: dict[str, Any] = {}

    def try_lock() -> None:
        got = registry.call_lock.acquire(blocking=False)
        seen["other_thread_got_lock"] = got
        if got:
            registry.call_lock.release()

    def generate(c: StageContext, *, prompt: str, negative_prompt: str, target: tuple[int, int], seed: int
                 ) -> tuple[Image.Image, dict[str, Any]]:
        t = threading.Thread(target=try_lock)
        t.start()
        t.join()
        seen["attn1"] = {type(p) for n, p in pipe.unet.attn_processors.items() if n.endswith("attn1.processor")}
        image = text_to_image.run(pipe, family="sdxl", prompt=prompt, negative_prompt=negative_prompt, width=64,
                                  height=64, steps=2, guidance=5.0, seed=seed, on_step=c.progress)
        return image, {"width": 64, "height": 64, "seed": seed, "model": "sdxl-tiny", "steps": 2}

    image, info = recipe.generate_scene(ctx, generate=generate, prompt="a girl", negative_prompt="", target=(64, 64),
                                        seed=3, cast=["c0"])
    assert seen == {"other_thread_got_lock": False, "attn1": {ReferenceAttnProcessor}}
    assert info["identity"]["reference_region"] == "global" and info["identity"]["reference_steps"] == 2
    assert all(pipe.unet.attn_processors[n] is before[n] for n in before)
    plain = text_to_image.run(pipe, family="sdxl", prompt="a girl", negative_prompt="", width=64, height=64, steps=2,
                              guidance=5.0, seed=3)
    assert not np.array_equal(np.asarray(image), np.asarray(plain))  # same seed, the sheet made the difference
    try_lock()
    assert seen["other_thread_got_lock"] is True  # released afterwards


def test_a_canceled_scene_stops_and_leaves_the_pipeline_as_it_was(res, registry):
    ctx, _ = scene_ctx(res, {"c0": face(128, **ASHA, bg=(250, 250, 250))}, {"c0": LEFT})
    pipe = registry.load("sdxl-tiny")
    before = dict(pipe.unet.attn_processors)
    res.runtime.cancel(ctx.task.job_id)
    with pytest.raises(JobCanceled):
        scene_stage.stage_fn(ctx)
    assert ctx.artifacts == []
    assert all(pipe.unet.attn_processors[n] is before[n] for n in before) and not pipe.unet._forward_pre_hooks


def test_lost_sheets_and_other_families_fall_back_to_the_prompt(res):
    ctx, _ = scene_ctx(res, {"c0": None, "c1": face(128, **RAMU, bg=(250, 250, 250))}, {"c0": LEFT, "c1": RIGHT})
    out = scene_stage.stage_fn(ctx)
    assert out["identity"]["references"] == ["c1"] and out["identity"]["missing_sheets"] == ["c0"]
    assert out["identity"]["reference_region"] == "boxes"

    lost, _ = scene_ctx(res, {"c0": None}, {"c0": LEFT})
    out = scene_stage.stage_fn(lost)
    assert out["identity"]["mode"] == "none" and out["identity_method"] == "none"
    assert "c0" in out["identity"]["reason"] and out["identity"]["missing_sheets"] == ["c0"]

    flux, _ = scene_ctx(res, {"c0": face(128, **ASHA)}, {"c0": LEFT}, spec={"model": "flux-tiny"})
    calls: list[int] = []

    def generate(c: StageContext, **kw: Any) -> tuple[Image.Image, dict[str, Any]]:
        calls.append(kw["seed"])
        return Image.new("RGB", (64, 48)), {"seed": kw["seed"]}

    _, info = recipe.generate_scene(flux, generate=generate, prompt="p", negative_prompt="", target=(64, 48), seed=5,
                                    cast=["c0"])
    assert calls == [5] and info["identity"]["mode"] == "none" and "SDXL" in info["identity"]["reason"]
