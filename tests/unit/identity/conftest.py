"""Identity tests: the drawn faces and the TorchScript embedder of kit.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from kit import write_embedder  # noqa: E402


@pytest.fixture(scope="session")
def embedder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_embedder(tmp_path_factory.mktemp("embedder") / "colour_layout.pt")
