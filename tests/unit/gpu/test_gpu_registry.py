"""models.yaml parsing and the registry's LRU of warm pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from atelier_contracts.errors import StageError
from atelier_gpu.registry import ModelRegistry, read_models_file


def _write(path: Path, models: dict) -> Path:
    path.write_text(yaml.safe_dump({"models": models}))
    return path


@pytest.fixture()
def three_models(models_dir: Path, tmp_path: Path) -> Path:
    """Three ids over the two tiny folders (absolute paths), so a cache of 2 has to evict."""
    entry = {"dtype": "float32", "quantization": "none", "steps": 2, "guidance": 5.0, "scheduler": None,
             "max_side": 128}
    return _write(tmp_path / "models.yaml", {
        "a": {"family": "sdxl", "path": str(models_dir / "sdxl-tiny"), **entry},
        "b": {"family": "flux", "path": str(models_dir / "flux-tiny"), **entry},
        "c": {"family": "sdxl", "path": str(models_dir / "sdxl-tiny"), **entry},
    })


def test_specs_resolve_paths_relative_to_the_file(models_file: Path, models_dir: Path):
    reg = ModelRegistry(models_file)
    assert reg.ids() == ["flux-tiny", "pixart-tiny", "sd3-tiny", "sdxl-tiny", "sdxl-tiny-svdq"]
    spec = reg.spec("flux-tiny")
    assert spec.family == "flux" and spec.path == (models_dir / "flux-tiny").resolve()
    assert spec.steps == 4 and spec.guidance == 5.0 and spec.max_side == 128


def test_unknown_model_lists_known_ids(registry):
    with pytest.raises(StageError) as err:
        registry.spec("sdxl-huge")
    assert err.value.retryable is False
    assert "sdxl-huge" in str(err.value) and "flux-tiny, pixart-tiny, sd3-tiny, sdxl-tiny" in str(err.value)
    with pytest.raises(StageError):
        registry.load("sdxl-huge")


def test_lru_evicts_the_least_recently_used(three_models: Path):
    reg = ModelRegistry(three_models, cache_size=2, device="cpu")
    a = reg.load("a")
    reg.load("b")
    assert reg.load("a") is a  # hit: no new load, and "a" is now the most recent
    assert reg.loads == 2
    reg.load("c")
    assert reg.cached() == ["a", "c"]  # "b" was least recently used
    assert reg.loads == 3
    reg.load("b")
    assert reg.cached() == ["c", "b"]
    assert reg.loads == 4
    reg.clear()
    assert reg.cached() == []


def test_cache_of_one_keeps_only_the_last(three_models: Path):
    reg = ModelRegistry(three_models, cache_size=1, device="cpu")
    reg.load("a")
    reg.load("b")
    assert reg.cached() == ["b"]


def test_scheduler_preset_from_models_file(models_dir: Path, tmp_path: Path):
    path = _write(tmp_path / "models.yaml", {"fast": {
        "family": "sdxl", "path": str(models_dir / "sdxl-tiny"),
        "scheduler": {"class": "DDIMScheduler", "timestep_spacing": "leading"},
    }})
    pipe = ModelRegistry(path, device="cpu").load("fast")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.timestep_spacing == "leading"


def test_missing_models_file_says_how_to_make_one(tmp_path: Path):
    with pytest.raises(StageError, match="atelier_gpu.tiny") as err:
        ModelRegistry(tmp_path / "nope" / "models.yaml")
    assert err.value.retryable is False


@pytest.mark.parametrize("entry,message", [
    ({"family": "sd15", "path": "x"}, "models.m.family"),
    ({"family": "sdxl"}, "models.m.path"),
    ({"family": "sdxl", "path": "x", "dtype": "int3"}, "models.m.dtype"),
    ({"family": "sdxl", "path": "x", "quantization": "svdq-int4"}, "quantization"),
    ({"family": "sdxl", "path": "x", "steps": 0}, "models.m.steps"),
    ({"family": "sdxl", "path": "x", "scheduler": {"timestep_spacing": "trailing"}}, "scheduler"),
])
def test_bad_entries_name_the_key(tmp_path: Path, entry: dict, message: str):
    with pytest.raises(StageError, match=message):
        read_models_file(_write(tmp_path / "models.yaml", {"m": entry}))


def test_folder_without_a_pipeline_fails_without_retry(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    reg = ModelRegistry(_write(tmp_path / "models.yaml", {"m": {"family": "sdxl", "path": "empty"}}))
    with pytest.raises(StageError, match="model_index.json") as err:
        reg.load("m")
    assert err.value.retryable is False
