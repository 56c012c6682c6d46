"""The IP-Adapter (``reference``) identity path on tiny random weights in IP-Adapter's layout: every character's
sheet is an image prompt, each kept to its character's box by IP-Adapter attention masks."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atelier_contracts.plans import Box
from atelier_gpu.recipes import identity as recipe
from atelier_gpu.registry import ModelRegistry
from atelier_gpu.stages.scene import scene as scene_stage
from atelier_gpu.tiny import init_tiny_ip_adapter
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import WorkerResources
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from kit import ASHA, LEFT, RAMU, RIGHT, face, scene_ctx
from PIL import Image

SHEET_BG = (250, 250, 250)
A_BOX, B_BOX = [0.05, 0.1, 0.4, 0.9], [0.6, 0.1, 0.95, 0.9]


@pytest.fixture(scope="module")
def adapter(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny_ip_adapter(tmp_path_factory.mktemp("ip-adapter"), tiny_models.parent / "sdxl-tiny")


@pytest.fixture(scope="module")
def registry(tiny_models: Path) -> ModelRegistry:
    return ModelRegistry(tiny_models, cache_size=1, device="cpu")


def _plain(pipe: Any, processors: dict[str, Any]) -> bool:
    unet = pipe.unet
    now = unet.attn_processors
    return (unet.encoder_hid_proj is None and now.keys() == processors.keys()
            and all(now[n] is processors[n] for n in processors))


def _box_change(a: np.ndarray, b: np.ndarray, box: list[float]) -> float:
    h, w = a.shape[:2]
    d = np.abs(a.astype(float) - b.astype(float)).mean(-1)
    return float(d[int(box[1] * h):int(box[3] * h), int(box[0] * w):int(box[2] * w)].mean())


def test_the_written_adapter_has_ip_adapters_layout(adapter, registry):
    import torch

    state = torch.load(adapter / "ip-adapter_sdxl.bin", weights_only=True)
    assert set(state) == {"image_proj", "ip_adapter"} and set(state["image_proj"]) == {
        "proj.weight", "proj.bias", "norm.weight", "norm.bias"}
    unet = registry.load("sdxl-tiny").unet
    cross = [i for i, n in enumerate(unet.attn_processors) if n.endswith("attn2.processor")]
    assert set(state["ip_adapter"]) == {f"{i}.to_{kv}_ip.weight" for i in cross for kv in "kv"}
    assert (adapter / "image_encoder" / "config.json").is_file()


def test_each_sheet_prompts_only_its_characters_box(adapter, registry):
    """Changing B's sheet changes B's box more than A's with the masks; without them both alike."""
    pipe = registry.load("sdxl-tiny")
    processors = dict(pipe.unet.attn_processors)
    boxes = [Box(bbox=A_BOX, caption="a", role="character"), Box(bbox=B_BOX, caption="b", role="character")]
    asha, ramu = face(128, **ASHA, bg=SHEET_BG), face(128, **RAMU, bg=SHEET_BG)
    other = Image.new("RGB", (128, 128), (20, 200, 40))

    def run(b_sheet: Image.Image, masked: bool) -> np.ndarray:
        return np.asarray(recipe.run_reference(pipe, adapter, references=[asha, b_sheet],
                                               boxes=boxes if masked else None, prompt="two friends",
                                               negative_prompt="", width=256, height=256, steps=2, guidance=5.0,
                                               seed=3, scale=1.0))

    base, changed = run(ramu, True), run(other, True)
    in_a, in_b = _box_change(base, changed, A_BOX), _box_change(base, changed, B_BOX)
    assert in_b >= 2.0 * in_a > 0, (in_a, in_b)  # measured 6.45 vs 2.03 (unmasked: 3.47 vs 3.25)
    flat_base, flat_changed = run(ramu, False), run(other, False)
    assert _box_change(flat_base, flat_changed, B_BOX) < 1.5 * _box_change(flat_base, flat_changed, A_BOX)
    assert _plain(pipe, processors)


def test_a_two_character_scene_on_the_reference_path_uses_both_sheets(adapter, registry, tiny_models, tmp_path):
    res = WorkerResources(Settings(home=tmp_path, models_file=tiny_models, gen_max_side=64, gen_steps=2,
                                   identity_reference_adapter_dir=adapter))
    res.extras["atelier_gpu.registry"] = registry
    pipe = registry.load("sdxl-tiny")
    processors = dict(pipe.unet.attn_processors)
    seen: list[Any] = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw["added_cond_kwargs"]["image_embeds"][0].shape,
                                      {type(p) for n, p in pipe.unet.attn_processors.items()
                                       if n.endswith("attn2.processor")},
                                      (kw.get("cross_attention_kwargs") or {}).get("ip_adapter_masks"))),
        with_kwargs=True)
    try:
        ctx, _ = scene_ctx(res, {"c0": face(128, **ASHA, bg=SHEET_BG), "c1": face(128, **RAMU, bg=SHEET_BG)},
                           {"c0": LEFT, "c1": RIGHT})
        out = scene_stage.stage_fn(ctx)
    finally:
        hook.remove()
    ident = out["identity"]
    assert ident["mode"] == "reference" and ident["method"] == "ip_adapter"
    assert ident["references"] == ["c0", "c1"] and ident["face_region"] == "boxes"
    assert len(seen) == 2 and all(shape[:2] == (2, 2) and procs == {IPAdapterAttnProcessor2_0}
                                  and masks is not None and tuple(masks[0].shape[:2]) == (1, 2)
                                  for shape, procs, masks in seen)
    image = Image.open(io.BytesIO(ctx.get(out["scene_key"])))
    assert image.size == (out["width"], out["height"])
    assert _plain(pipe, processors)
