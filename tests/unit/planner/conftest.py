"""Fixtures for planner tests: LLM doubles (the stage-context fixtures come from tests/unit/conftest.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from atelier_runtime.settings import Settings

# ---------------------------------------------------------------- LLM doubles

sys.path.insert(0, str(Path(__file__).parent))
from llm_double import ChatDouble  # noqa: E402


@pytest.fixture
def llm_double() -> Iterator[ChatDouble]:
    """A chat-completions server on 127.0.0.1 (a thread) that answers every planner prompt."""
    double = ChatDouble().start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def openai_settings(llm_double: ChatDouble, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, planner_backend="openai", llm_base_url=llm_double.base_url, llm_model="double-llm",
                    llm_timeout_s=0.5, llm_max_retries=1, llm_retry_backoff_s=0.01)


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_llm import write_tiny_llm

    return write_tiny_llm(tmp_path_factory.mktemp("tiny-llm") / "tiny-llm")


@pytest.fixture(scope="session")
def tiny_engine(tiny_llm_dir: Path) -> Any:
    """The transformers engine on the tiny model (loaded once per session; one torch thread keeps it fast)."""
    pytest.importorskip("xgrammar", reason="the transformers backend needs xgrammar (constraints.txt pins it)")
    from atelier_planner.llm.engines import TransformersEngine

    return TransformersEngine(tiny_llm_dir, max_new_tokens=400, threads=1)
