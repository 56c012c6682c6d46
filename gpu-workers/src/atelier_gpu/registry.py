"""Model registry: ``models.yaml`` → model specs → warm pipelines in an LRU within a memory budget.

``models.yaml`` (paths are relative to the file)::

    models:
      sdxl-tiny:
        family: sdxl                 # sdxl | flux | sd3 | pixart
        path: sdxl-tiny              # a saved diffusers pipeline (model_index.json)
        dtype: float32               # float32 | float16 | bfloat16
        quantization: none           # none | torchao-float8dq | torchao-int8wo | torchao-int8dq | svdquant-int4
                                     # | quanto-int8 | quanto-int4   (torchao-int8 = torchao-int8wo)
        compile: {mode: max-autotune-no-cudagraphs, dynamic: false}   # optional torch.compile of the denoiser
                                     # (also: regional: true | false, backend: inductor | eager | aot_eager, fullgraph)
        preset: sdxl-lightning       # optional few-step preset (atelier_gpu.presets): scheduler, steps, guidance
        steps: 4                     # these three win over the preset's
        guidance: 5.0
        scheduler: null              # null | class name | {class: <name>, <config key>: <value>, ...}
        timesteps: null              # explicit timesteps (DMD2: [999, 749, 499, 249])
        max_side: 128                # cap on the generated size
        loras: [{path: loras/style.safetensors, scale: 0.8}]
        controlnets:                 # name → folder of a saved ControlNet and what it reads
          canny: {path: controlnet-canny, kind: canny}
        svdquant: svdquant/unet.safetensors   # the SVDQuant checkpoint (quantization: svdquant-int4)
        svdquant_mode: packed                 # packed (INT4 in memory) | fake (dequantised once, 16-bit memory)

Weights are only ever read from local folders: loads pass ``local_files_only=True`` and the process
runs with ``HF_HUB_OFFLINE=1``. LoRAs (kohya/A1111, PEFT or diffusers layouts, through diffusers' loaders) are
fused into the weights once at load (before torchao/quanto quantise them); on an SVDQuant model a PEFT-layout LoRA
is concatenated onto the low-rank branches instead.

torchao options quantise the denoiser's linear layers with ``torchao.quantization.quantize_`` after the LoRAs are
fused and the pipeline is on its device (quantising on the GPU takes seconds where the CPU takes minutes):
``torchao-float8dq`` float8 weights and per-token/per-row float8 activations (CUDA compute capability 8.9+: Ada,
Hopper, Blackwell), ``torchao-int8wo`` int8 weights only, ``torchao-int8dq`` int8 weights and dynamic int8
activations. ``compile`` wraps the denoiser in ``torch.compile`` in place (``module.compile``): nothing is compiled
until the first pipeline call, and the module keeps its class, so recipes still set attention processors on it. By
default only the repeated transformer blocks are compiled (diffusers' regional compilation,
``compile_repeated_blocks``: one compile serves every block, so a worker's first call waits seconds, not minutes);
``regional: false`` compiles the whole denoiser.

The LRU keeps at most ``cache_size`` pipelines and, when ``memory_budget_bytes`` is set, evicts the
least recently used until the new model fits (the estimate before loading is the size of its weight
files; the resident size is measured after loading and kept up to date).
"""

from __future__ import annotations

import gc
import importlib.util
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from atelier_contracts.errors import StageError

from .presets import PRESETS

FAMILIES = ("sdxl", "flux", "sd3", "pixart")
DTYPES = ("float32", "float16", "bfloat16")
TORCHAO = ("torchao-float8dq", "torchao-int8wo", "torchao-int8dq")
QUANTIZATIONS = ("none", *TORCHAO, "svdquant-int4", "quanto-int8", "quanto-int4")
# older spellings still read; names that were removed say what to use instead
QUANTIZATION_ALIASES = {"torchao-int8": "torchao-int8wo"}
REMOVED_QUANTIZATIONS = {
    "nunchaku": "it was never wired to Nunchaku's model classes (its package is not installed with this project); "
                "use svdquant-int4 for the same 4-bit method in plain PyTorch, or torchao-float8dq / torchao-int8dq "
                "for speed",
}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# inductor generates kernels; eager / aot_eager only capture graphs (debugging, and the CPU tests)
COMPILE_BACKENDS = ("inductor", "eager", "aot_eager")
CONTROL_KINDS = ("canny", "depth", "pose", "other")
DENOISER = {"sdxl": "unet", "flux": "transformer", "sd3": "transformer", "pixart": "transformer"}
# float8 matmuls (torch._scaled_mm) need CUDA compute capability 8.9+: Ada (L4, L40S, RTX 40xx), Hopper, Blackwell
FLOAT8_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    scale: float = 1.0
    name: str = ""


@dataclass(frozen=True)
class ControlNetSpec:
    name: str
    path: Path
    kind: str = "other"


@dataclass(frozen=True)
class CompileSpec:
    """``compile:`` of a models.yaml entry: how ``torch.compile`` wraps the denoiser."""

    mode: str = "default"
    dynamic: bool | None = None  # None: torch's default (a shape is made dynamic once it changes)
    backend: str = "inductor"
    fullgraph: bool = False
    regional: bool = True  # compile the repeated blocks only (the whole denoiser where it declares none)


@dataclass(frozen=True)
class ModelSpec:
    """One entry of ``models.yaml``, with its folders resolved to absolute paths and its preset applied."""

    id: str
    family: Literal["sdxl", "flux", "sd3", "pixart"]
    path: Path
    dtype: str = "float32"
    quantization: str = "none"
    steps: int = 4
    guidance: float = 5.0
    scheduler: str | dict[str, Any] | None = None
    max_side: int | None = None
    preset: str | None = None
    timesteps: tuple[int, ...] | None = None
    eta: float | None = None
    loras: tuple[LoraSpec, ...] = ()
    controlnets: dict[str, ControlNetSpec] = field(default_factory=dict)
    svdquant: Path | None = None
    svdquant_mode: str = "packed"
    compile: CompileSpec | None = None

    @property
    def denoiser(self) -> str:
        return DENOISER[self.family]

    def controlnet(self, name: str) -> ControlNetSpec:
        try:
            return self.controlnets[name]
        except KeyError:
            known = ", ".join(sorted(self.controlnets)) or "none"
            raise StageError(f"model {self.id} has no ControlNet {name!r} (configured: {known})", retryable=False,
                             field="controlnet") from None


def _bad(models_file: Path, detail: str) -> StageError:
    return StageError(f"{models_file}: {detail}", retryable=False)


def _resolve(base: Path, value: Any) -> Path:
    path = Path(str(value))
    return path if path.is_absolute() else (base / path).resolve()


def _parse_entry(models_file: Path, model_id: str, entry: Any) -> ModelSpec:
    where = f"models.{model_id}"
    base = models_file.parent
    if not isinstance(entry, dict):
        raise _bad(models_file, f"{where} must be a mapping")
    family = entry.get("family")
    if family not in FAMILIES:
        raise _bad(models_file, f"{where}.family is {family!r}; expected one of {', '.join(FAMILIES)}")
    if not entry.get("path"):
        raise _bad(models_file, f"{where}.path is missing")
    dtype = str(entry.get("dtype") or "float32")
    if dtype not in DTYPES:
        raise _bad(models_file, f"{where}.dtype is {dtype!r}; expected one of {', '.join(DTYPES)}")
    quantization = str(entry.get("quantization") or "none")
    quantization = QUANTIZATION_ALIASES.get(quantization, quantization)
    if quantization in REMOVED_QUANTIZATIONS:
        raise _bad(models_file, f"{where}.quantization {quantization!r} was removed: "
                                f"{REMOVED_QUANTIZATIONS[quantization]}")
    if quantization not in QUANTIZATIONS:
        raise _bad(models_file, f"{where}.quantization {quantization!r} is not supported "
                                f"(supported: {', '.join(QUANTIZATIONS)})")
    preset_name = entry.get("preset")
    preset = None
    if preset_name is not None:
        preset = PRESETS.get(str(preset_name))
        if preset is None:
            raise _bad(models_file, f"{where}.preset {preset_name!r} is unknown; known: {', '.join(sorted(PRESETS))}")
        if family not in preset.families:
            raise _bad(models_file, f"{where}.preset {preset_name!r} is for {'/'.join(preset.families)} models, "
                                    f"not {family}")
    scheduler = entry["scheduler"] if "scheduler" in entry else (preset.scheduler if preset else None)
    if scheduler is not None and not isinstance(scheduler, str | dict):
        raise _bad(models_file, f"{where}.scheduler must be null, a class name or a mapping with `class`")
    if isinstance(scheduler, dict) and not scheduler.get("class"):
        raise _bad(models_file, f"{where}.scheduler mapping needs a `class` key")
    try:
        timesteps_raw = entry.get("timesteps", list(preset.timesteps) if preset and preset.timesteps else None)
        timesteps = tuple(int(t) for t in timesteps_raw) if timesteps_raw else None
        steps = len(timesteps) if timesteps else int(entry.get("steps", preset.steps if preset else 4))
        guidance = float(entry.get("guidance", preset.guidance if preset else 5.0))
        eta_raw = entry.get("eta", preset.eta if preset else None)
        eta = float(eta_raw) if eta_raw is not None else None
        max_side = entry.get("max_side")
        max_side = int(max_side) if max_side is not None else None
    except (TypeError, ValueError) as exc:
        raise _bad(models_file, f"{where}: steps, guidance, eta, timesteps and max_side must be numbers ({exc})") from exc
    if steps < 1:
        raise _bad(models_file, f"{where}.steps must be >= 1")
    if timesteps and any(not 0 <= t < 1000 for t in timesteps):
        raise _bad(models_file, f"{where}.timesteps must lie in 0..999")
    if max_side is not None and max_side < 32:
        raise _bad(models_file, f"{where}.max_side must be >= 32")
    loras = []
    for i, lora in enumerate(entry.get("loras") or []):
        if not isinstance(lora, dict) or not lora.get("path"):
            raise _bad(models_file, f"{where}.loras[{i}] needs a `path` (and optionally `scale`, `name`)")
        try:
            scale = float(lora.get("scale", 1.0))
        except (TypeError, ValueError) as exc:
            raise _bad(models_file, f"{where}.loras[{i}].scale must be a number") from exc
        loras.append(LoraSpec(_resolve(base, lora["path"]), scale, str(lora.get("name") or f"lora{i}")))
    controlnets: dict[str, ControlNetSpec] = {}
    raw_cn = entry.get("controlnets") or {}
    if not isinstance(raw_cn, dict):
        raise _bad(models_file, f"{where}.controlnets must map a name to {{path, kind}}")
    for name, cn in raw_cn.items():
        if not isinstance(cn, dict) or not cn.get("path"):
            raise _bad(models_file, f"{where}.controlnets.{name} needs a `path`")
        kind = str(cn.get("kind") or "other")
        if kind not in CONTROL_KINDS:
            raise _bad(models_file, f"{where}.controlnets.{name}.kind is {kind!r}; expected one of "
                                    f"{', '.join(CONTROL_KINDS)}")
        controlnets[str(name)] = ControlNetSpec(str(name), _resolve(base, cn["path"]), kind)
    path = _resolve(base, entry["path"])
    svdquant = entry.get("svdquant")
    svdquant_path = _resolve(base, svdquant) if svdquant else None
    if quantization == "svdquant-int4" and svdquant_path is None:
        svdquant_path = path / "svdquant" / f"{DENOISER[family]}.safetensors"
    svdquant_mode = str(entry.get("svdquant_mode") or "packed")
    if svdquant_mode not in ("packed", "fake"):
        raise _bad(models_file, f"{where}.svdquant_mode must be 'packed' or 'fake'")
    compile_spec = _parse_compile(models_file, where, entry.get("compile"))
    return ModelSpec(
        id=model_id, family=family, path=path, dtype=dtype, quantization=quantization, steps=steps, guidance=guidance,
        scheduler=scheduler, max_side=max_side, preset=str(preset_name) if preset_name else None, timesteps=timesteps,
        eta=eta, loras=tuple(loras), controlnets=controlnets, svdquant=svdquant_path, svdquant_mode=svdquant_mode,
        compile=compile_spec,
    )


def _parse_compile(models_file: Path, where: str, raw: Any) -> CompileSpec | None:
    """``compile: true`` (torch's defaults), ``false``/absent, or ``{mode, dynamic, backend, fullgraph, regional}``."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return CompileSpec()
    if not isinstance(raw, dict):
        raise _bad(models_file, f"{where}.compile must be true, false or a mapping "
                                f"{{mode, dynamic, backend, fullgraph, regional}}; got {raw!r}")
    unknown = sorted(set(raw) - {"mode", "dynamic", "backend", "fullgraph", "regional"})
    if unknown:
        raise _bad(models_file, f"{where}.compile has unknown key(s) {', '.join(map(str, unknown))}; "
                                f"known: mode, dynamic, backend, fullgraph, regional")
    mode = raw.get("mode") or "default"
    if mode not in COMPILE_MODES:
        raise _bad(models_file, f"{where}.compile.mode is {mode!r}; expected one of {', '.join(COMPILE_MODES)}")
    backend = raw.get("backend") or "inductor"
    if backend not in COMPILE_BACKENDS:
        raise _bad(models_file, f"{where}.compile.backend is {backend!r}; expected one of "
                                f"{', '.join(COMPILE_BACKENDS)}")
    if backend != "inductor" and mode != "default":
        raise _bad(models_file, f"{where}.compile.mode {mode!r} is an inductor mode; backend {backend!r} takes none")
    dynamic = raw.get("dynamic")
    if dynamic is not None and not isinstance(dynamic, bool):
        raise _bad(models_file, f"{where}.compile.dynamic must be true, false or null; got {dynamic!r}")
    flags = {}
    for key, default in (("fullgraph", False), ("regional", True)):
        flags[key] = raw.get(key, default)
        if not isinstance(flags[key], bool):
            raise _bad(models_file, f"{where}.compile.{key} must be true or false; got {flags[key]!r}")
    return CompileSpec(mode=mode, dynamic=dynamic, backend=backend, **flags)


def read_models_file(models_file: Path) -> dict[str, ModelSpec]:
    """Parse and validate ``models.yaml``; every problem names the model and the key to fix."""
    models_file = Path(models_file)
    if not models_file.is_file():
        raise StageError(
            f"models file {models_file} not found; put your models' folders and a models.yaml there, set "
            f"ATELIER_MODELS_FILE, or write the tiny test models (atelier_gpu.tiny) with "
            f"`atelier models init-tiny {models_file.parent}`",
            retryable=False,
        )
    try:
        doc = yaml.safe_load(models_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise _bad(models_file, f"is not valid YAML: {exc}") from exc
    entries = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise _bad(models_file, "needs a non-empty `models:` mapping of id → settings")
    return {str(mid): _parse_entry(models_file, str(mid), entry) for mid, entry in entries.items()}


def _default_device() -> str:
    import torch  # heavy (torch): loaded on first use

    return "cuda" if torch.cuda.is_available() else "cpu"


def _apply_scheduler(pipe: Any, scheduler: str | dict[str, Any], model_id: str) -> None:
    import diffusers  # heavy (diffusers): loaded on first use

    overrides = dict(scheduler) if isinstance(scheduler, dict) else {"class": scheduler}
    name = str(overrides.pop("class"))
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise StageError(f"model {model_id}: scheduler {name!r} is not a diffusers scheduler class", retryable=False)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)


def quiet_progress_bars() -> None:
    """Turn off diffusers/transformers tqdm bars: a worker's log wants one line per stage, not per shard."""
    import diffusers.utils.logging  # heavy (diffusers, transformers): loaded on first use
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _pipeline_class(family: str) -> Any:
    import diffusers  # heavy (diffusers): loaded on first use

    return {"sdxl": diffusers.StableDiffusionXLPipeline, "flux": diffusers.FluxPipeline,
            "sd3": diffusers.StableDiffusion3Pipeline, "pixart": diffusers.PixArtSigmaPipeline}[family]


def float8_support(device: str) -> tuple[bool, str]:
    """Whether torchao's float8 matmuls can run on ``device``, and why not."""
    import torch  # heavy (torch): loaded on first use

    if not str(device).startswith("cuda"):
        return False, f"float8 matmuls need a CUDA GPU and this pipeline runs on {device}"
    if not torch.cuda.is_available():
        return False, "float8 matmuls need a CUDA GPU and torch sees none here"
    cap = torch.cuda.get_device_capability(torch.device(device))
    if cap < FLOAT8_MIN_CAPABILITY:
        return False, (f"{torch.cuda.get_device_name(torch.device(device))} has compute capability {cap[0]}.{cap[1]}; "
                       f"float8 needs 8.9+ (Ada L4/L40S/RTX 40xx, Hopper H100/H200, Blackwell)")
    return True, ""


def _lora_file(path: Path) -> Path:
    """The LoRA's .safetensors file: ``path`` itself, or the first one in the folder ``path`` names."""
    file = path if path.is_file() else next(iter(sorted(path.glob("*.safetensors"))), None) if path.is_dir() else None
    if file is None or not file.is_file():
        raise StageError(f"LoRA {path} not found (a .safetensors file or a folder holding one)", retryable=False)
    return file


def _load_lora_state(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file  # heavy (safetensors (torch)): loaded on first use

    file = _lora_file(path)
    try:
        return load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise StageError(f"LoRA {file}: not a readable .safetensors file ({exc})", retryable=False) from exc


def _load_adapters(pipe: Any, spec: ModelSpec) -> list[str]:
    """Load every LoRA of ``spec`` as a named adapter through diffusers' loaders (which convert kohya / A1111 /
    PEFT / diffusers layouts) and set their scales; the adapter names. A damaged file, one that does not fit, or
    one that matches no layer is a StageError naming the file (and nothing stays loaded)."""
    names = []
    for lora in spec.loras:
        file = _lora_file(lora.path)
        _load_lora_state(file)  # a damaged file is named as such, not as a conversion error
        try:
            pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=lora.name,
                                   local_files_only=True)
        except (ValueError, KeyError, IndexError, RuntimeError, TypeError, OSError) as exc:
            pipe.unload_lora_weights()
            raise StageError(f"model {spec.id}: LoRA {file} does not fit this {spec.family} pipeline: {exc}",
                             retryable=False) from exc
        if not any(lora.name in adapters for adapters in pipe.get_list_adapters().values()):
            pipe.unload_lora_weights()
            raise StageError(f"model {spec.id}: LoRA {file} matches no layer of this {spec.family} pipeline "
                             "(a LoRA for another model family?)", retryable=False)
        names.append(lora.name)
    pipe.set_adapters(names, adapter_weights=[lora.scale for lora in spec.loras])
    return names


def _apply_loras(pipe: Any, spec: ModelSpec) -> None:
    """Fuse every LoRA into the weights, once, at load.

    Pipelines with diffusers' LoRA loaders (SDXL, FLUX, SD3) take any layout those loaders convert — kohya /
    A1111 (``lora_unet_*.lora_down`` / ``lora_up`` / ``alpha``, SGM block names, conv layers), PEFT, diffusers —
    for the denoiser and the text encoders; several LoRAs are set as adapters with their scales, fused together and
    the adapter layers unloaded (the fused weights stay). On pipelines without loaders (PixArt) a PEFT-layout LoRA
    of the denoiser is folded in by hand (``quant.svdquant.fold_lora``). SVDQuant models: ``_denoiser_lora_deltas``
    before quantising, ``_fold_deltas`` after."""
    if not spec.loras:
        return
    if not hasattr(pipe, "load_lora_weights"):
        _fold_loras(pipe, spec)
        return
    names = _load_adapters(pipe, spec)
    pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()  # the LoRA layers go; what was fused into the weights stays


def _denoiser_lora_deltas(pipe: Any, spec: ModelSpec) -> list[tuple[str, Any, Any, float]]:
    """Every LoRA of ``spec`` converted by diffusers' loaders on the 16-bit pipeline (any layout they read), as
    ``(denoiser module, down, up, scale)`` — the adapter's scaling: alpha / rank times the LoRA's scale — for
    ``_fold_deltas`` to add after quantising; the text encoders' part is fused as usual, and the adapters are
    unloaded, leaving the denoiser's own weights to be quantised."""
    names = _load_adapters(pipe, spec)
    deltas = []
    for path, module in getattr(pipe, spec.denoiser).named_modules():
        lora_a, lora_b, scaling = (getattr(module, n, None) for n in ("lora_A", "lora_B", "scaling"))
        if lora_a is None or lora_b is None or not isinstance(scaling, dict):
            continue
        for name in names:
            if name in lora_a:
                # PEFT's scaling is alpha / rank times the weight set_adapters gave the adapter
                deltas.append((path, lora_a[name].weight.detach().clone(), lora_b[name].weight.detach().clone(),
                               float(scaling[name])))
    encoders = [c for c in ("text_encoder", "text_encoder_2", "text_encoder_3") if getattr(pipe, c, None) is not None]
    if encoders:
        pipe.fuse_lora(components=encoders, adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()
    return deltas


def _fold_deltas(pipe: Any, spec: ModelSpec, deltas: list[tuple[str, Any, Any, float]]) -> None:
    from .quant.svdquant import fold_delta  # heavy (torch, diffusers): loaded on first use

    denoiser = getattr(pipe, spec.denoiser)
    for path, down, up, scale in deltas:
        try:
            fold_delta(denoiser, path, down, up, scale)
        except ValueError as exc:
            raise StageError(f"model {spec.id}: a LoRA does not fold into {path}: {exc}", retryable=False) from exc


def _fold_loras(pipe: Any, spec: ModelSpec) -> None:
    from .quant.svdquant import fold_lora  # heavy (torch, diffusers): loaded on first use

    denoiser = getattr(pipe, spec.denoiser)
    for lora in spec.loras:
        state = _load_lora_state(lora.path)
        prefix = f"{spec.denoiser}."
        own = {k: v for k, v in state.items() if k.startswith(prefix)} or state
        try:
            fold_lora(denoiser, own, scale=lora.scale, prefix=prefix)
        except ValueError as exc:
            raise StageError(f"model {spec.id}: LoRA {lora.path}: {exc} (diffusers/PEFT format expected: "
                             f"'{prefix}<module>.lora_A.weight')", retryable=False) from exc


def _quantize(pipe: Any, spec: ModelSpec) -> None:
    denoiser = getattr(pipe, spec.denoiser)
    q = spec.quantization
    if q == "none":
        return
    if q == "svdquant-int4":
        from .quant.svdquant import load_svdquant  # heavy (torch, diffusers): loaded on first use

        if spec.svdquant is None or not spec.svdquant.is_file():
            raise StageError(f"model {spec.id}: SVDQuant checkpoint {spec.svdquant} not found; write it with "
                             f"`python -m atelier_gpu.quant.pipeline --models-file ... --model <16-bit id> --out <file>`",
                             retryable=False)
        try:
            load_svdquant(denoiser, spec.svdquant, mode=spec.svdquant_mode)
        except (ValueError, KeyError) as exc:
            raise StageError(f"model {spec.id}: cannot apply {spec.svdquant}: {exc}", retryable=False) from exc
        return
    if q in ("quanto-int8", "quanto-int4"):
        if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.quanto") is None:
            raise StageError(f"model {spec.id}: quantization {q} needs the optimum-quanto package", retryable=False)
        from optimum.quanto import freeze, qint4, qint8, quantize  # heavy (optimum-quanto): loaded on first use

        quantize(denoiser, weights=qint8 if q == "quanto-int8" else qint4)
        freeze(denoiser)
        return


def torchao_config(quantization: str, dtype: str) -> Any:
    """The torchao ``AOBaseConfig`` of a ``torchao-*`` option (float8: per-row scales on bfloat16, else per-tensor)."""
    from torchao.quantization import (  # heavy (torchao): loaded on first use
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        PerRow,
        PerTensor,
    )

    if quantization == "torchao-float8dq":
        # per-row (one scale per output channel and token) is the accurate choice; torchao takes it on bf16 only
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if dtype == "bfloat16" else PerTensor())
    if quantization == "torchao-int8dq":
        return Int8DynamicActivationInt8WeightConfig()
    if quantization == "torchao-int8wo":
        return Int8WeightOnlyConfig()
    raise ValueError(f"not a torchao option: {quantization}")


def _quantize_torchao(pipe: Any, spec: ModelSpec, device: str) -> None:
    """Quantise the denoiser's linear layers in place with ``torchao.quantization.quantize_`` on its device."""
    if importlib.util.find_spec("torchao") is None:
        raise StageError(f"model {spec.id}: quantization {spec.quantization} needs the torchao package "
                         f"(pip install 'atelier-gpu' installs torchao; see constraints.txt)", retryable=False)
    if spec.quantization == "torchao-float8dq":
        ok, why = float8_support(device)
        if not ok:
            raise StageError(f"model {spec.id}: quantization torchao-float8dq cannot run here: {why}; use "
                             f"torchao-int8dq or torchao-int8wo on this machine", retryable=False)
    from torchao.quantization import quantize_  # heavy (torchao): loaded on first use

    try:
        quantize_(getattr(pipe, spec.denoiser), torchao_config(spec.quantization, spec.dtype))
    except (AssertionError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise StageError(f"model {spec.id}: torchao cannot apply {spec.quantization} to the {spec.denoiser} "
                         f"({spec.dtype} on {device}): {exc}", retryable=False) from exc


def compile_denoiser(denoiser: Any, c: CompileSpec) -> None:
    """Wrap ``denoiser`` (or its repeated blocks) in ``torch.compile`` in place; graphs are captured on first call."""
    options: dict[str, Any] = {"backend": c.backend, "dynamic": c.dynamic, "fullgraph": c.fullgraph}
    if c.mode != "default":
        options["mode"] = c.mode
    if c.regional and getattr(denoiser, "_repeated_blocks", None) and hasattr(denoiser, "compile_repeated_blocks"):
        denoiser.compile_repeated_blocks(**options)
    else:
        denoiser.compile(**options)


def _compile(pipe: Any, spec: ModelSpec) -> None:
    if spec.compile is not None:
        compile_denoiser(getattr(pipe, spec.denoiser), spec.compile)


def load_pipeline(spec: ModelSpec, *, device: str | None = None) -> Any:
    """Load one pipeline from its local folder (never from a hub), apply LoRAs and quantisation, move it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch  # heavy (torch): loaded on first use

    if not (spec.path / "model_index.json").is_file():
        raise StageError(f"model {spec.id}: {spec.path} has no model_index.json (not a saved diffusers pipeline)",
                         retryable=False)
    dtype = getattr(torch, spec.dtype)
    quiet_progress_bars()
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    if spec.family == "sdxl":
        kwargs["add_watermarker"] = False  # our own watermark runs after rendering
    try:
        pipe = _pipeline_class(spec.family).from_pretrained(spec.path, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise StageError(f"model {spec.id}: cannot load {spec.path}: {exc}", retryable=False) from exc
    if spec.scheduler is not None:
        _apply_scheduler(pipe, spec.scheduler, spec.id)
    if spec.quantization == "svdquant-int4":
        # LoRAs in any layout diffusers' loaders read: converted on the 16-bit pipeline, then concatenated onto the
        # quantised layers' low-rank branches (convolutions and unquantised linears take them in their weights)
        loaders = bool(spec.loras) and hasattr(pipe, "load_lora_weights")
        deltas = _denoiser_lora_deltas(pipe, spec) if loaders else []
        _quantize(pipe, spec)
        if loaders:
            _fold_deltas(pipe, spec, deltas)
        else:
            _apply_loras(pipe, spec)
    else:
        _apply_loras(pipe, spec)  # fused into the 16-bit weights before any quantisation
        if spec.quantization not in TORCHAO:
            _quantize(pipe, spec)
    pipe.set_progress_bar_config(disable=True)
    device = device or _default_device()
    pipe = pipe.to(device)
    if spec.quantization in TORCHAO:
        _quantize_torchao(pipe, spec, device)
    _compile(pipe, spec)
    return pipe


def load_controlnet(spec: ModelSpec, name: str, *, device: str | None = None) -> Any:
    """Load one of the model's ControlNets from its local folder."""
    import torch  # heavy (torch, diffusers): loaded on first use
    from diffusers import ControlNetModel, FluxControlNetModel, SD3ControlNetModel

    cn = spec.controlnet(name)
    cls = {"sdxl": ControlNetModel, "flux": FluxControlNetModel, "sd3": SD3ControlNetModel}.get(spec.family)
    if cls is None:
        raise StageError(f"model {spec.id}: ControlNets are not supported for the {spec.family} family",
                         retryable=False)
    if not (cn.path / "config.json").is_file():
        raise StageError(f"model {spec.id}: ControlNet {name} folder {cn.path} has no config.json", retryable=False)
    try:
        model = cls.from_pretrained(cn.path, local_files_only=True, torch_dtype=getattr(torch, spec.dtype))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise StageError(f"model {spec.id}: cannot load ControlNet {name} from {cn.path}: {exc}",
                         retryable=False) from exc
    return model.to(device or _default_device())


def resident_bytes(obj: Any) -> int:
    """Bytes of every parameter and buffer of a pipeline's modules (or of one module)."""
    import torch  # heavy (torch): loaded on first use

    modules = [obj] if isinstance(obj, torch.nn.Module) else [
        c for c in getattr(obj, "components", {}).values() if isinstance(c, torch.nn.Module)]
    seen: set[int] = set()
    total = 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += tensor_bytes(t)
    return total


def tensor_bytes(t: Any) -> int:
    """Bytes a tensor holds; a tensor subclass (torchao's Int8Tensor, Float8Tensor) counts its inner tensors, not
    the high-precision dtype it presents."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass  # heavy (torch): loaded on first use

    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(inner) for inner in (getattr(t, name) for name in names) if inner is not None)
    return t.numel() * t.element_size()


def estimate_bytes(folder: Path) -> int:
    """Bytes a model folder will take once loaded, estimated from its weight files."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors") if "svdquant" not in p.parts)


class ModelRegistry:
    """Specs from ``models.yaml`` and warm pipelines, least recently used evicted by count and memory.

    Thread-safe: one lock guards the cache and loading, so two threads asking for the same model
    load it once (a GPU worker runs one task at a time, so the lock is rarely contended).
    """

    def __init__(self, models_file: Path, *, cache_size: int = 2, device: str | None = None,
                 memory_budget_bytes: int | None = None) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self.models_file = Path(models_file)
        self.cache_size = cache_size
        self.device = device
        self.memory_budget_bytes = memory_budget_bytes
        self._specs = read_models_file(self.models_file)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._bytes: dict[str, int] = {}
        self._lock = threading.RLock()
        # one pipeline call at a time per process (one GPU): warm pipelines share schedulers and attention
        # processors, so two threads (the embedded worker's pool) must not run them at once
        self.call_lock = threading.RLock()
        self.loads = 0  # pipelines and ControlNets loaded from disk so far (evictions make it grow)

    def ids(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, model_id: str) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            raise StageError(
                f"unknown model {model_id!r}; known models in {self.models_file}: {', '.join(self.ids())}",
                retryable=False, field="model",
            ) from None

    def cached(self) -> list[str]:
        """Keys of the warm entries (model ids; ``<id>/controlnet/<name>`` for ControlNets), LRU first."""
        with self._lock:
            return list(self._cache)

    def resident(self) -> int:
        """Bytes held by the warm entries."""
        with self._lock:
            return sum(self._bytes.values())

    def load(self, model_id: str) -> Any:
        """The warm pipeline for ``model_id``, loading it (and evicting least recently used ones) if needed."""
        spec = self.spec(model_id)
        return self._get(model_id, estimate_bytes(spec.path), lambda: load_pipeline(spec, device=self.device))

    def controlnet(self, model_id: str, name: str) -> Any:
        """A warm ControlNet of ``model_id`` (counted in the same LRU and budget)."""
        spec = self.spec(model_id)
        cn = spec.controlnet(name)
        return self._get(f"{model_id}/controlnet/{name}", estimate_bytes(cn.path),
                         lambda: load_controlnet(spec, name, device=self.device))

    def _get(self, key: str, estimate: int, loader: Any) -> Any:
        with self._lock:
            obj = self._cache.get(key)
            if obj is not None:
                self._cache.move_to_end(key)
                return obj
            while self._cache and (len(self._cache) >= self.cache_size or self._over_budget(estimate)):
                self._evict_oldest()
            obj = loader()
            self.loads += 1
            self._cache[key] = obj
            self._bytes[key] = resident_bytes(obj)
            # the estimate can be low (dtype upcast): make room after the fact, never evicting the new entry
            while len(self._cache) > 1 and self._over_budget(0):
                self._evict_oldest()
            return obj

    def _over_budget(self, extra: int) -> bool:
        return self.memory_budget_bytes is not None and sum(self._bytes.values()) + extra > self.memory_budget_bytes

    def clear(self) -> None:
        with self._lock:
            while self._cache:
                self._evict_oldest()

    def _evict_oldest(self) -> None:
        key, obj = self._cache.popitem(last=False)
        self._bytes.pop(key, None)
        del obj
        gc.collect()
        import torch  # heavy (torch): loaded on first use

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
