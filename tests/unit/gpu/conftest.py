"""Tiny random-init pipelines written once per session; everything loads them from disk, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def models_file(tiny_models: Path) -> Path:
    """models.yaml of the session's tiny pipelines (``tiny_models`` in tests/conftest.py runs init_tiny)."""
    return tiny_models


@pytest.fixture(scope="session")
def models_dir(models_file: Path) -> Path:
    return models_file.parent


@pytest.fixture(scope="session")
def registry(models_file: Path):
    from atelier_gpu.registry import ModelRegistry

    return ModelRegistry(models_file, cache_size=2, device="cpu")


@pytest.fixture(scope="session")
def sdxl(registry):
    return registry.load("sdxl-tiny")


@pytest.fixture(scope="session")
def flux(registry):
    return registry.load("flux-tiny")
