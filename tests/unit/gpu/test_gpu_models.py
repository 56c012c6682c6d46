"""models.yaml beyond the basics: families, presets, LoRAs, ControlNets, quantisation, the memory budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from atelier_contracts.errors import StageError
from atelier_gpu.presets import PRESETS
from atelier_gpu.quant.svdquant import SVDQuantLinear, svdquant_layers
from atelier_gpu.recipes import text_to_image as t2i
from atelier_gpu.registry import ModelRegistry, read_models_file, resident_bytes


def _write(path: Path, models: dict) -> Path:
    path.write_text(yaml.safe_dump({"models": models}))
    return path


@pytest.mark.parametrize("model_id", ["sd3-tiny", "pixart-tiny"])
def test_every_family_has_a_tiny_model_that_generates(registry, model_id):
    spec = registry.spec(model_id)
    image = t2i.run(registry.load(model_id), family=spec.family, prompt="a red bottle", negative_prompt="blurry",
                    width=64, height=48, steps=2, guidance=4.0, seed=1)
    assert image.size == (64, 48) and np.asarray(image).std() > 0


def test_tiny_controlnets_and_the_svdquant_model_are_registered(registry, models_dir):
    assert registry.spec("sdxl-tiny").controlnet("canny").kind == "canny"
    assert registry.spec("flux-tiny").controlnet("canny").path == (models_dir / "flux-tiny-controlnet").resolve()
    with pytest.raises(StageError, match="no ControlNet 'depth'"):
        registry.spec("sdxl-tiny").controlnet("depth")
    svdq = registry.spec("sdxl-tiny-svdq")
    assert svdq.quantization == "svdquant-int4" and svdq.svdquant.is_file()
    assert [lora.scale for lora in svdq.loras] == [0.5]


def test_svdquant_model_loads_packed_layers_with_the_lora_folded(models_file):
    reg = ModelRegistry(models_file, device="cpu")
    pipe = reg.load("sdxl-tiny-svdq")
    layers = svdquant_layers(pipe.unet)
    assert len(layers) > 20 and all(m.mode == "packed" for m in layers.values())
    folded = [m for n, m in layers.items() if n.endswith(("to_q", "to_k", "to_v"))]
    assert folded and all(m.rank == 32 + 4 for m in folded)  # rank-4 LoRA concatenated onto the branch
    assert all(m.rank == 32 for n, m in layers.items() if not n.endswith(("to_q", "to_k", "to_v")))
    image = t2i.run(pipe, family="sdxl", prompt="a red bottle", width=64, height=64, steps=2, guidance=5.0, seed=1)
    plain = t2i.run(reg.load("sdxl-tiny"), family="sdxl", prompt="a red bottle", width=64, height=64, steps=2,
                    guidance=5.0, seed=1)
    assert image.size == (64, 64) and not np.array_equal(np.asarray(image), np.asarray(plain))


def test_presets_set_scheduler_steps_guidance_and_timesteps(models_dir, tmp_path):
    path = _write(tmp_path / "models.yaml", {
        "lightning": {"family": "sdxl", "path": str(models_dir / "sdxl-tiny"), "preset": "sdxl-lightning"},
        "dmd2": {"family": "sdxl", "path": str(models_dir / "sdxl-tiny"), "preset": "dmd2"},
        "hyper": {"family": "sdxl", "path": str(models_dir / "sdxl-tiny"), "preset": "hyper-sd", "steps": 8},
        "tcd": {"family": "sdxl", "path": str(models_dir / "sdxl-tiny"), "preset": "hyper-sd-tcd"},
    })
    specs = read_models_file(path)
    assert (specs["lightning"].steps, specs["lightning"].guidance) == (4, 0.0)
    assert specs["lightning"].scheduler == {"class": "EulerDiscreteScheduler", "timestep_spacing": "trailing"}
    assert specs["dmd2"].timesteps == (999, 749, 499, 249) and specs["dmd2"].steps == 4
    assert specs["hyper"].steps == 8 and specs["hyper"].scheduler["class"] == "DDIMScheduler"
    assert specs["tcd"].eta == 1.0 and specs["tcd"].steps == 1
    reg = ModelRegistry(path, device="cpu")
    pipe = reg.load("dmd2")
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    steps: list[tuple[int, int]] = []
    image = t2i.run(pipe, family="sdxl", prompt="a cat", width=64, height=64, steps=4, guidance=0.0, seed=1,
                    timesteps=list(specs["dmd2"].timesteps), on_step=lambda s, t: steps.append((s, t)))
    assert image.size == (64, 64) and steps[-1] == (4, 4)
    assert [int(t) for t in pipe.scheduler.timesteps] == [999, 749, 499, 249]
    tcd = t2i.run(reg.load("tcd"), family="sdxl", prompt="a cat", width=64, height=64, steps=1, guidance=0.0,
                  seed=1, eta=1.0)
    assert tcd.size == (64, 64)
    assert set(PRESETS) >= {"hyper-sd", "hyper-sd-tcd", "sdxl-lightning", "dmd2", "lcm"}


@pytest.mark.parametrize("entry,message", [
    ({"family": "pixart", "path": "x", "preset": "dmd2"}, "for sdxl models"),
    ({"family": "sdxl", "path": "x", "preset": "turbo9"}, "preset 'turbo9' is unknown"),
    ({"family": "sdxl", "path": "x", "loras": [{"scale": 1}]}, r"loras\[0\] needs a `path`"),
    ({"family": "sdxl", "path": "x", "controlnets": {"c": {"path": "y", "kind": "sketch"}}}, "kind is 'sketch'"),
    ({"family": "sdxl", "path": "x", "quantization": "int2"}, "svdquant-int4"),
    ({"family": "sdxl", "path": "x", "timesteps": [2000]}, "0..999"),
])
def test_bad_entries_say_what_to_fix(tmp_path, entry, message):
    with pytest.raises(StageError, match=message):
        read_models_file(_write(tmp_path / "models.yaml", {"m": entry}))


def test_lora_is_fused_into_a_plain_model(models_dir, tmp_path):
    lora = models_dir / "loras" / "sdxl-tiny-style.safetensors"
    path = _write(tmp_path / "models.yaml", {
        "base": {"family": "sdxl", "path": str(models_dir / "sdxl-tiny")},
        "styled": {"family": "sdxl", "path": str(models_dir / "sdxl-tiny"), "loras": [{"path": str(lora),
                                                                                      "scale": 1.0}]},
    })
    reg = ModelRegistry(path, device="cpu", cache_size=2)
    base, styled = reg.load("base"), reg.load("styled")
    name = next(n for n, m in base.unet.named_modules() if n.endswith("attn1.to_q"))
    w0, w1 = base.unet.get_submodule(name).weight, styled.unet.get_submodule(name).weight
    assert not torch.equal(w0, w1)
    other = next(n for n, m in base.unet.named_modules() if n.endswith("attn1.to_out.0"))
    assert torch.equal(base.unet.get_submodule(other).weight, styled.unet.get_submodule(other).weight)


def test_quanto_int8_quantises_the_denoiser(models_dir, tmp_path):
    pytest.importorskip("optimum.quanto")
    path = _write(tmp_path / "models.yaml", {"q8": {"family": "sdxl", "path": str(models_dir / "sdxl-tiny"),
                                                    "quantization": "quanto-int8"}})
    pipe = ModelRegistry(path, device="cpu").load("q8")
    assert any("QLinear" in type(m).__name__ for m in pipe.unet.modules())
    image = t2i.run(pipe, family="sdxl", prompt="a cat", width=64, height=64, steps=2, guidance=5.0, seed=1)
    assert image.size == (64, 64)


def test_unavailable_backends_fail_with_the_reason(models_dir, tmp_path):
    path = _write(tmp_path / "models.yaml", {
        "s": {"family": "sdxl", "path": str(models_dir / "sdxl-tiny"), "quantization": "svdquant-int4",
              "svdquant": "missing.safetensors"},
    })
    reg = ModelRegistry(path, device="cpu")
    with pytest.raises(StageError, match="atelier_gpu.quant.pipeline") as err:
        reg.load("s")
    assert err.value.retryable is False
    # nunchaku was an option that always raised; a models.yaml naming it is now told what to use instead
    with pytest.raises(StageError, match="'nunchaku' was removed.*svdquant-int4"):
        read_models_file(_write(tmp_path / "old.yaml", {"n": {"family": "flux", "path": "x",
                                                               "quantization": "nunchaku"}}))


def test_memory_budget_evicts_least_recently_used(models_dir, tmp_path):
    path = _write(tmp_path / "models.yaml", {
        "a": {"family": "sdxl", "path": str(models_dir / "sdxl-tiny")},
        "b": {"family": "flux", "path": str(models_dir / "flux-tiny")},
    })
    probe = ModelRegistry(path, device="cpu", cache_size=4)
    size_a, size_b = resident_bytes(probe.load("a")), resident_bytes(probe.load("b"))
    assert probe.resident() == size_a + size_b
    reg = ModelRegistry(path, device="cpu", cache_size=4, memory_budget_bytes=max(size_a, size_b) + 1000)
    reg.load("a")
    reg.load("b")
    assert reg.cached() == ["b"]  # both do not fit: "a" went
    big = ModelRegistry(path, device="cpu", cache_size=4, memory_budget_bytes=10 * (size_a + size_b))
    big.load("a")
    big.load("b")
    assert big.cached() == ["a", "b"]


def test_controlnets_share_the_lru(models_file):
    reg = ModelRegistry(models_file, device="cpu", cache_size=2)
    reg.load("sdxl-tiny")
    cn = reg.controlnet("sdxl-tiny", "canny")
    assert type(cn).__name__ == "ControlNetModel"
    assert reg.cached() == ["sdxl-tiny", "sdxl-tiny/controlnet/canny"]
    reg.load("flux-tiny")
    assert reg.cached() == ["sdxl-tiny/controlnet/canny", "flux-tiny"]
    assert isinstance(next(iter(svdquant_layers(reg.load("sdxl-tiny-svdq").unet).values())), SVDQuantLinear)
