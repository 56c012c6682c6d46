"""Model registry: ``models.yaml`` → model specs → warm pipelines in a small LRU per worker process.

``models.yaml`` (paths are relative to the file)::

    models:
      sdxl-tiny: {family: sdxl, path: sdxl-tiny, dtype: float32, quantization: none,
                  steps: 4, guidance: 5.0, scheduler: null, max_side: 128}

``scheduler`` is null (keep the one saved with the pipeline), a diffusers scheduler class name
(``EulerDiscreteScheduler``), or ``{class: <name>, <config key>: <value>, ...}`` for presets such as
``{class: EulerDiscreteScheduler, timestep_spacing: trailing}``. ``max_side`` caps the generated size.

Weights are only ever read from the local folder: loads pass ``local_files_only=True`` and the
process runs with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import gc
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from atelier_shared.errors import StageError

FAMILIES = ("sdxl", "flux")
DTYPES = ("float32", "float16", "bfloat16")
QUANTIZATIONS = ("none",)


@dataclass(frozen=True)
class ModelSpec:
    """One entry of ``models.yaml``, with its folder resolved to an absolute path."""

    id: str
    family: Literal["sdxl", "flux"]
    path: Path
    dtype: str = "float32"
    quantization: str = "none"
    steps: int = 4
    guidance: float = 5.0
    scheduler: str | dict[str, Any] | None = None
    max_side: int | None = None


def _bad(models_file: Path, detail: str) -> StageError:
    return StageError(f"{models_file}: {detail}", retryable=False)


def read_models_file(models_file: Path) -> dict[str, ModelSpec]:
    """Parse and validate ``models.yaml``; every problem names the model and the key to fix."""
    models_file = Path(models_file)
    if not models_file.is_file():
        raise StageError(
            f"models file {models_file} not found; write the tiny models with "
            f"`python -m atelier_gpu.tiny {models_file.parent}` or set ATELIER_MODELS_FILE",
            retryable=False,
        )
    try:
        doc = yaml.safe_load(models_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise _bad(models_file, f"is not valid YAML: {exc}") from exc
    entries = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise _bad(models_file, "needs a non-empty `models:` mapping of id → settings")
    base = models_file.parent
    specs: dict[str, ModelSpec] = {}
    for model_id, entry in entries.items():
        where = f"models.{model_id}"
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
        if quantization not in QUANTIZATIONS:
            raise _bad(models_file, f"{where}.quantization {quantization!r} is not supported (supported: none)")
        scheduler = entry.get("scheduler")
        if scheduler is not None and not isinstance(scheduler, str | dict):
            raise _bad(models_file, f"{where}.scheduler must be null, a class name or a mapping with `class`")
        if isinstance(scheduler, dict) and not scheduler.get("class"):
            raise _bad(models_file, f"{where}.scheduler mapping needs a `class` key")
        try:
            steps = int(entry.get("steps", 4))
            guidance = float(entry.get("guidance", 5.0))
            max_side = entry.get("max_side")
            max_side = int(max_side) if max_side is not None else None
        except (TypeError, ValueError) as exc:
            raise _bad(models_file, f"{where}: steps, guidance and max_side must be numbers ({exc})") from exc
        if steps < 1:
            raise _bad(models_file, f"{where}.steps must be >= 1")
        if max_side is not None and max_side < 32:
            raise _bad(models_file, f"{where}.max_side must be >= 32")
        path = Path(entry["path"])
        specs[str(model_id)] = ModelSpec(
            id=str(model_id), family=family, path=path if path.is_absolute() else (base / path).resolve(),
            dtype=dtype, quantization=quantization, steps=steps, guidance=guidance, scheduler=scheduler,
            max_side=max_side,
        )
    return specs


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _apply_scheduler(pipe: Any, scheduler: str | dict[str, Any], model_id: str) -> None:
    import diffusers

    overrides = dict(scheduler) if isinstance(scheduler, dict) else {"class": scheduler}
    name = str(overrides.pop("class"))
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise StageError(f"model {model_id}: scheduler {name!r} is not a diffusers scheduler class", retryable=False)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)


def quiet_progress_bars() -> None:
    """Turn off diffusers/transformers tqdm bars: a worker's log wants one line per stage, not per shard."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def load_pipeline(spec: ModelSpec, *, device: str | None = None) -> Any:
    """Load one pipeline from its local folder (never from a hub) and move it to ``device``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from diffusers import FluxPipeline, StableDiffusionXLPipeline

    if not (spec.path / "model_index.json").is_file():
        raise StageError(f"model {spec.id}: {spec.path} has no model_index.json (not a saved diffusers pipeline)",
                         retryable=False)
    dtype = getattr(torch, spec.dtype)
    quiet_progress_bars()
    try:
        if spec.family == "sdxl":
            # our own watermark runs after rendering; SDXL's built-in one would only add noise here
            pipe = StableDiffusionXLPipeline.from_pretrained(spec.path, local_files_only=True, dtype=dtype,
                                                             add_watermarker=False)
        else:
            pipe = FluxPipeline.from_pretrained(spec.path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise StageError(f"model {spec.id}: cannot load {spec.path}: {exc}", retryable=False) from exc
    if spec.scheduler is not None:
        _apply_scheduler(pipe, spec.scheduler, spec.id)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or _default_device())


class ModelRegistry:
    """Specs from ``models.yaml`` and up to ``cache_size`` warm pipelines, least recently used evicted.

    Thread-safe: one lock guards the cache and loading, so two threads asking for the same model
    load it once (a GPU worker runs one task at a time, so the lock is rarely contended).
    """

    def __init__(self, models_file: Path, *, cache_size: int = 2, device: str | None = None) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self.models_file = Path(models_file)
        self.cache_size = cache_size
        self.device = device
        self._specs = read_models_file(self.models_file)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # pipelines loaded from disk so far (evictions make it grow)

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
        """Ids of the warm pipelines, least recently used first."""
        with self._lock:
            return list(self._cache)

    def load(self, model_id: str) -> Any:
        """The warm pipeline for ``model_id``, loading it (and evicting the least recently used) if needed."""
        spec = self.spec(model_id)
        with self._lock:
            pipe = self._cache.get(model_id)
            if pipe is not None:
                self._cache.move_to_end(model_id)
                return pipe
            while len(self._cache) >= self.cache_size:
                self._evict_oldest()
            pipe = load_pipeline(spec, device=self.device)
            self.loads += 1
            self._cache[model_id] = pipe
            return pipe

    def clear(self) -> None:
        with self._lock:
            while self._cache:
                self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, pipe = self._cache.popitem(last=False)
        del pipe
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
