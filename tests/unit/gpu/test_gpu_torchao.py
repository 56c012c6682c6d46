"""torchao quantisation (float8 / int8 weight-only / int8 dynamic) and torch.compile as models.yaml options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from atelier_contracts.errors import StageError
from atelier_gpu.recipes import text_to_image as t2i
from atelier_gpu.registry import CompileSpec, ModelRegistry, float8_support, read_models_file, resident_bytes

torchao_quantization = pytest.importorskip("torchao.quantization", reason="torchao is not installed")
Int8Tensor = torchao_quantization.Int8Tensor
Float8Tensor = torchao_quantization.Float8Tensor

SIZE = {"sdxl": (64, 48), "flux": (64, 48)}


def _write(path: Path, models: dict) -> Path:
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def _entry(models_dir: Path, family: str, **extra) -> dict:
    return {"family": family, "path": str(models_dir / f"{family}-tiny"), "steps": 2, **extra}


def _denoiser_linears(pipe, family: str) -> list[torch.nn.Linear]:
    denoiser = pipe.unet if family == "sdxl" else pipe.transformer
    return [m for m in denoiser.modules() if isinstance(m, torch.nn.Linear)]


def _image(pipe, family: str):
    w, h = SIZE[family]
    return t2i.run(pipe, family=family, prompt="a red bottle on a table", width=w, height=h, steps=2, guidance=4.0,
                   seed=3)


# ------------------------------------------------------------------ models.yaml parsing

def test_torchao_and_compile_options_parse(tmp_path):
    specs = read_models_file(_write(tmp_path / "models.yaml", {
        "f8": {"family": "flux", "path": "x", "dtype": "bfloat16", "quantization": "torchao-float8dq",
               "compile": {"mode": "max-autotune-no-cudagraphs", "dynamic": False}},
        "wo": {"family": "sdxl", "path": "x", "quantization": "torchao-int8wo", "compile": True},
        "dq": {"family": "sdxl", "path": "x", "quantization": "torchao-int8dq", "compile": False},
        "old": {"family": "sdxl", "path": "x", "quantization": "torchao-int8"},
    }))
    assert specs["f8"].quantization == "torchao-float8dq"
    assert specs["f8"].compile == CompileSpec(mode="max-autotune-no-cudagraphs", dynamic=False)
    assert specs["wo"].compile == CompileSpec(mode="default", dynamic=None, backend="inductor", regional=True)
    assert specs["dq"].compile is None
    assert specs["old"].quantization == "torchao-int8wo"  # the earlier spelling is read as weight-only


@pytest.mark.parametrize("entry,message", [
    ({"quantization": "torchao-fp8"}, r"models\.m\.quantization 'torchao-fp8' is not supported.*torchao-float8dq"),
    ({"quantization": "nunchaku"}, r"models\.m\.quantization 'nunchaku' was removed.*svdquant-int4"),
    ({"compile": "yes"}, r"models\.m\.compile must be true, false or a mapping"),
    ({"compile": {"mode": "fastest"}}, r"models\.m\.compile\.mode is 'fastest'.*max-autotune"),
    ({"compile": {"dynamic": "sometimes"}}, r"models\.m\.compile\.dynamic must be true, false or null"),
    ({"compile": {"backend": "tensorrt"}}, r"models\.m\.compile\.backend is 'tensorrt'"),
    ({"compile": {"backend": "eager", "mode": "max-autotune"}}, r"models\.m\.compile\.mode 'max-autotune' is an "
                                                                r"inductor mode"),
    ({"compile": {"fullgraph": 1}}, r"models\.m\.compile\.fullgraph must be true or false"),
    ({"compile": {"regional": "blocks"}}, r"models\.m\.compile\.regional must be true or false"),
    ({"compile": {"modes": "default"}}, r"models\.m\.compile has unknown key\(s\) modes"),
])
def test_bad_quantization_and_compile_values_name_the_field(tmp_path, entry, message):
    with pytest.raises(StageError, match=message) as err:
        read_models_file(_write(tmp_path / "models.yaml", {"m": {"family": "sdxl", "path": "x", **entry}}))
    assert err.value.retryable is False


# ------------------------------------------------------------------ int8 on the CPU

@pytest.mark.parametrize("family", ["sdxl", "flux"])
@pytest.mark.parametrize("option", ["torchao-int8wo", "torchao-int8dq"])
def test_int8_options_quantise_every_denoiser_linear_and_still_generate(models_dir, tmp_path, family, option):
    path = _write(tmp_path / "models.yaml", {"plain": _entry(models_dir, family),
                                             "q": _entry(models_dir, family, quantization=option)})
    reg = ModelRegistry(path, device="cpu", cache_size=2)
    plain, pipe = reg.load("plain"), reg.load("q")
    linears = _denoiser_linears(pipe, family)
    assert linears and all(isinstance(m.weight, Int8Tensor) for m in linears)
    assert all(m.weight.qdata.dtype == torch.int8 for m in linears)
    # weight-only keeps activations in float; the dynamic option quantises them per call
    assert all((m.weight.act_quant_kwargs is not None) == (option == "torchao-int8dq") for m in linears)
    # text encoders and VAE are left alone
    assert not any(isinstance(m.weight, Int8Tensor) for m in pipe.text_encoder.modules()
                   if isinstance(m, torch.nn.Linear))
    denoiser = pipe.unet if family == "sdxl" else pipe.transformer
    plain_denoiser = plain.unet if family == "sdxl" else plain.transformer
    linear_fp32 = sum(m.weight.numel() * 4 for m in linears)
    saved = resident_bytes(plain_denoiser) - resident_bytes(denoiser)
    assert saved > 0.7 * linear_fp32  # int8 weights + one scale per row instead of 4-byte floats
    image = _image(pipe, family)
    assert image.size == SIZE[family] and np.asarray(image).std() > 0
    reg.clear()


# ------------------------------------------------------------------ float8

def test_float8_on_a_machine_without_sm89_is_a_clear_error(models_dir, tmp_path):
    ok, why = float8_support("cpu")
    assert ok is False and "CUDA GPU" in why
    path = _write(tmp_path / "models.yaml", {"f8": _entry(models_dir, "sdxl", quantization="torchao-float8dq")})
    with pytest.raises(StageError, match=r"torchao-float8dq cannot run here: .*use torchao-int8dq") as err:
        ModelRegistry(path, device="cpu").load("f8")
    assert err.value.retryable is False


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_float8_quantises_the_denoiser_where_the_gpu_has_sm89(models_dir, tmp_path, family):
    ok, why = float8_support("cuda")
    if not ok:
        pytest.skip(f"torchao float8 needs a CUDA GPU of compute capability 8.9+ ({why})")
    path = _write(tmp_path / "models.yaml", {"f8": _entry(models_dir, family, dtype="bfloat16",
                                                           quantization="torchao-float8dq")})
    pipe = ModelRegistry(path, device="cuda").load("f8")
    quantised = [m for m in _denoiser_linears(pipe, family) if isinstance(m.weight, Float8Tensor)]
    assert quantised  # layers whose sides are not multiples of 16 stay bf16 (torchao skips them)
    assert all(m.weight.qdata.dtype == torch.float8_e4m3fn for m in quantised)
    assert _image(pipe, family).size == SIZE[family]


# ------------------------------------------------------------------ torch.compile

def _reset_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def test_compile_is_applied_in_place_and_lazily(models_dir, tmp_path):
    """Wrapped at load, nothing compiled until the first call; by default only the repeated transformer blocks
    (diffusers' regional compilation), with ``regional: false`` the whole denoiser."""
    _reset_dynamo()
    path = _write(tmp_path / "models.yaml", {
        "r": _entry(models_dir, "sdxl", compile={"mode": "max-autotune", "dynamic": False}),
        "w": _entry(models_dir, "flux", compile={"regional": False}),
    })
    reg = ModelRegistry(path, device="cpu", cache_size=2)
    regional, whole = reg.load("r"), reg.load("w")
    assert type(regional.unet).__name__ == "UNet2DConditionModel"  # the module keeps its class (recipes rely on it)
    blocks = [m for m in regional.unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks and all(m._compiled_call_impl is not None for m in blocks)
    assert regional.unet._compiled_call_impl is None and regional.vae._compiled_call_impl is None
    assert whole.transformer._compiled_call_impl is not None
    assert whole.text_encoder._compiled_call_impl is None
    assert not torch._dynamo.utils.counters["stats"]["unique_graphs"]  # lazy: no graph captured at load
    reg.clear()
    _reset_dynamo()


def test_inductor_compiled_int8_unet_generates_what_eager_does(models_dir, tmp_path, monkeypatch):
    """The registry's default compile (inductor, repeated blocks) over an int8 weight-only UNet, on the CPU."""
    # a kernel cache of this test's own: another process compiling into the shared /tmp/torchinductor_<user> at
    # the same time can leave it a half-written precompiled header (seen once: "'at::vec' has not been declared")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    _reset_dynamo()
    path = _write(tmp_path / "models.yaml", {
        "q": _entry(models_dir, "sdxl", quantization="torchao-int8wo"),
        "qc": _entry(models_dir, "sdxl", quantization="torchao-int8wo", compile={"dynamic": False}),
    })
    reg = ModelRegistry(path, device="cpu", cache_size=2)
    eager = np.asarray(_image(reg.load("q"), "sdxl")).astype(np.float32)
    image = _image(reg.load("qc"), "sdxl")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert image.size == SIZE["sdxl"]
    # generated kernels reorder float sums: the same image up to rounding
    assert np.abs(np.asarray(image).astype(np.float32) - eager).mean() < 2.0
    reg.clear()
    _reset_dynamo()


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_compiled_int8_denoiser_captures_graphs_and_gives_the_eager_image(models_dir, tmp_path, family):
    """The graph-capture half of torch.compile (Dynamo, backend ``eager``) over the whole int8 denoiser of both
    families: the captured graphs run, and give exactly the uncompiled pipeline's image."""
    _reset_dynamo()
    path = _write(tmp_path / "models.yaml", {
        "q": _entry(models_dir, family, quantization="torchao-int8wo"),
        "qc": _entry(models_dir, family, quantization="torchao-int8wo", compile={"backend": "eager", "regional": False}),
    })
    reg = ModelRegistry(path, device="cpu", cache_size=2)
    eager = np.asarray(_image(reg.load("q"), family))
    compiled = reg.load("qc")
    assert not torch._dynamo.utils.counters["stats"]["unique_graphs"]
    image = _image(compiled, family)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert image.size == SIZE[family] and np.array_equal(np.asarray(image), eager)
    reg.clear()
    _reset_dynamo()
