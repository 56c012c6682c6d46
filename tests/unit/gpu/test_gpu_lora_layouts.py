"""LoRAs in the layouts people have, through diffusers' loaders: kohya sd-scripts files (SGM block names,
``lora_down``/``lora_up``/``alpha``, 3x3 conv layers) as the few-step LoRAs ship, PEFT files, several at once with their
scales — fused once at load, exactly ``W + scale * alpha / rank * up @ down``; damaged or foreign files are clear,
non-retryable StageErrors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from atelier_contracts.errors import StageError
from atelier_gpu import tiny
from atelier_gpu.recipes import text_to_image as t2i
from atelier_gpu.registry import ModelRegistry
from safetensors.torch import load_file, save_file

CONV = "down_blocks.0.resnets.0.conv1"
LAYERS = 1  # the tiny SDXL UNet's layers_per_block (checked below against its config)
ATTN = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def loras(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    return {"a": tiny.write_kohya_lora(folder / "a.safetensors", models_dir / "sdxl-tiny", seed=5, alpha=2.0),
            "b": tiny.write_kohya_lora(folder / "b" / "lightning_lora.safetensors", models_dir / "sdxl-tiny", seed=6,
                                       rank=8, alpha=8.0)}


def registry_with(models_dir: Path, folder: Path, models: dict[str, list[dict]]) -> ModelRegistry:
    base = {"family": "sdxl", "path": str(models_dir / "sdxl-tiny"), "dtype": "float32", "steps": 2, "guidance": 5.0}
    doc = {"models": {"base": base, **{name: {**base, "loras": spec} for name, spec in models.items()}}}
    (folder / "models.yaml").write_text(yaml.safe_dump(doc))
    return ModelRegistry(folder / "models.yaml", device="cpu", cache_size=len(doc["models"]))


def kohya_delta(file: Path, module: str, *, kernel: bool) -> torch.Tensor:
    """What a kohya LoRA adds to one module's weight at scale 1: alpha / rank * up @ down."""
    state = load_file(str(file))
    key = next(k[: -len(".lora_down.weight")] for k in state if k.endswith(".lora_down.weight")
               and tiny.sgm_lora_name(module, LAYERS) == k[: -len(".lora_down.weight")])
    down, up, alpha = state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"], state[f"{key}.alpha"]
    rank = down.shape[0]
    if kernel:  # up: out x r x 1 x 1, down: r x in x 3 x 3
        delta = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
    else:
        delta = up @ down
    return delta * (alpha.item() / rank)


def test_the_writer_uses_kohya_sgm_names_with_alphas_and_conv_kernels(models_dir: Path,
                                                                      loras: dict[str, Path]) -> None:
    config = yaml.safe_load((models_dir / "sdxl-tiny" / "unet" / "config.json").read_text())
    assert config["layers_per_block"] == LAYERS
    state = load_file(str(loras["a"]))
    assert all(k.startswith("lora_unet_") for k in state) and any("input_blocks" in k for k in state)
    assert any("output_blocks" in k for k in state) and any("middle_block" in k for k in state)
    assert any(k.endswith("in_layers_2.lora_down.weight") and v.ndim == 4 for k, v in state.items())
    assert sum(k.endswith(".alpha") for k in state) * 3 == len(state)


def test_a_kohya_lora_with_conv_layers_and_alphas_fuses_exactly(models_dir: Path, tmp_path: Path,
                                                               loras: dict[str, Path]) -> None:
    assert tiny.sgm_lora_name(CONV, LAYERS) == "lora_unet_input_blocks_1_0_in_layers_2"
    assert tiny.sgm_lora_name(ATTN, 2) == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"  # real SDXL
    reg = registry_with(models_dir, tmp_path, {"styled": [{"path": str(loras["a"]), "scale": 0.7, "name": "a"}]})
    base, styled = reg.load("base"), reg.load("styled")
    for module, kernel in ((CONV, True), (ATTN, False)):
        w0 = base.unet.get_submodule(module).weight.detach()
        w1 = styled.unet.get_submodule(module).weight.detach()
        torch.testing.assert_close(w1 - w0, 0.7 * kohya_delta(loras["a"], module, kernel=kernel), atol=1e-5, rtol=1e-4)
    # fused and unloaded: plain layers again, no adapter left behind
    assert type(styled.unet.get_submodule(CONV)) is torch.nn.Conv2d
    assert not any("lora" in n for n, _ in styled.unet.named_parameters())
    # and the image changes with the same seed
    run = {"family": "sdxl", "prompt": "a red bottle", "width": 64, "height": 64, "steps": 2, "guidance": 5.0, "seed": 3}
    a, b = np.asarray(t2i.run(base, **run), dtype=float), np.asarray(t2i.run(styled, **run), dtype=float)
    assert np.abs(a - b).mean() > 1.0


def test_several_loras_stack_with_their_scales(models_dir: Path, tmp_path: Path, loras: dict[str, Path]) -> None:
    reg = registry_with(models_dir, tmp_path, {"both": [
        {"path": str(loras["a"]), "scale": 0.5, "name": "a"},
        {"path": str(loras["b"].parent), "scale": 1.2, "name": "b"},  # a folder holding the file works too
    ]})
    base, both = reg.load("base"), reg.load("both")
    w0 = base.unet.get_submodule(CONV).weight.detach()
    expected = 0.5 * kohya_delta(loras["a"], CONV, kernel=True) + 1.2 * kohya_delta(loras["b"], CONV, kernel=True)
    torch.testing.assert_close(both.unet.get_submodule(CONV).weight.detach() - w0, expected, atol=1e-5, rtol=1e-4)


def test_the_peft_layout_still_loads(models_dir: Path, tmp_path: Path) -> None:
    peft = models_dir / "loras" / "sdxl-tiny-style.safetensors"  # init_tiny's diffusers/PEFT-layout LoRA
    reg = registry_with(models_dir, tmp_path, {"styled": [{"path": str(peft), "scale": 1.0}]})
    w0 = reg.load("base").unet.get_submodule(ATTN).weight
    assert not torch.equal(w0, reg.load("styled").unet.get_submodule(ATTN).weight)


def test_a_damaged_or_foreign_lora_is_a_clear_stage_error(models_dir: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    foreign = tmp_path / "flux_lora.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(8, 4)}, str(foreign))
    reg = registry_with(models_dir, tmp_path, {"damaged": [{"path": str(damaged)}], "foreign": [{"path": str(foreign)}],
                                               "absent": [{"path": str(tmp_path / "nope.safetensors")}]})
    for model_id, words in (("damaged", "not a readable"), ("foreign", "flux_lora.safetensors"), ("absent", "not found")):
        with pytest.raises(StageError, match=words) as err:
            reg.load(model_id)
        assert err.value.retryable is False, model_id


def test_a_kohya_lora_folds_into_an_svdquant_model(models_dir: Path, tmp_path: Path, loras: dict[str, Path]) -> None:
    """On an SVDQuant model a kohya LoRA is converted by diffusers' loaders on the 16-bit weights, then its
    attention projections are concatenated onto the quantised layers' low-rank branches and its conv kernels added
    to the (unquantised) convolutions: W + scale * alpha / rank * up @ down, as the 16-bit path fuses it."""
    from atelier_gpu.quant.svdquant import SVDQuantLinear

    svdq = {"quantization": "svdquant-int4", "svdquant": str(models_dir / "sdxl-tiny-svdq" / "unet.safetensors")}
    base = {"family": "sdxl", "path": str(models_dir / "sdxl-tiny"), "dtype": "float32", "steps": 2, "guidance": 5.0}
    doc = {"models": {"q": {**base, **svdq},
                      "q-styled": {**base, **svdq, "loras": [{"path": str(loras["a"]), "scale": 0.7, "name": "a"}]}}}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(doc))
    reg = ModelRegistry(tmp_path / "models.yaml", device="cpu", cache_size=2)
    plain, styled = reg.load("q"), reg.load("q-styled")
    conv0, conv1 = (p.unet.get_submodule(CONV).weight.detach() for p in (plain, styled))
    torch.testing.assert_close(conv1 - conv0, 0.7 * kohya_delta(loras["a"], CONV, kernel=True), atol=1e-5, rtol=1e-4)
    q0, q1 = plain.unet.get_submodule(ATTN), styled.unet.get_submodule(ATTN)
    assert isinstance(q0, SVDQuantLinear) and isinstance(q1, SVDQuantLinear)
    assert q1.lora_down.shape[0] == q0.lora_down.shape[0] + 4  # the LoRA's rank, concatenated; nothing re-quantised
    assert torch.equal(q0.qweight, q1.qweight) and torch.equal(q0.wscale, q1.wscale)
    x = torch.randn(2, q0.in_features)
    expected = 0.7 * kohya_delta(loras["a"], ATTN, kernel=False)
    torch.testing.assert_close(q1(x) - q0(x), x @ expected.T, atol=1e-4, rtol=1e-3)
    assert not any("lora_A" in n or "lora_B" in n for n, _ in styled.unet.named_parameters())  # no adapter left
