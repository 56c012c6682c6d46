"""The in-process ``vllm`` backend: an optional extra for GPU planner hosts, never installed on CPU machines."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from atelier.demo import STORY
from atelier_contracts.specs import StorySpec
from atelier_planner.backends import backend_from_settings
from atelier_planner.backends.llm import LLMBackend
from atelier_planner.llm.engines import JsonRequest, VLLMEngine
from atelier_planner.llm.errors import EngineUnavailable
from atelier_runtime.settings import Settings

HAS_VLLM = importlib.util.find_spec("vllm") is not None
SKIP_REASON = ("vLLM is not installed: it is the optional `atelier-planner[vllm]` extra for GPU planner hosts and "
               "is never installed on CPU machines")


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here; this test covers machines without it")
def test_without_vllm_every_stage_falls_back_and_says_why(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, planner_backend="vllm", vllm_model_dir=tmp_path)
    b = backend_from_settings(settings)
    out = b.culture(StorySpec.model_validate(STORY), job_id="j")
    assert out["planner"]["backend"] == "rules" and out["culture_notes"]
    assert "vllm is not installed" in out["planner"]["fallback"]["error"]
    with pytest.raises(EngineUnavailable, match="optional extra"):
        backend_from_settings(settings.model_copy(update={"planner_fallback": False}))


def test_the_vllm_engine_asks_for_structured_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The call shape against vLLM's API (a stand-in module when vLLM is absent; the real one when present)."""
    calls: dict[str, Any] = {}
    if not HAS_VLLM:
        import sys
        import types

        fake = types.ModuleType("vllm")
        sp = types.ModuleType("vllm.sampling_params")

        class StructuredOutputsParams:
            def __init__(self, json: Any) -> None:
                self.json = json

        class SamplingParams:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs

        sp.StructuredOutputsParams = StructuredOutputsParams  # type: ignore[attr-defined]
        fake.SamplingParams = SamplingParams  # type: ignore[attr-defined]
        fake.sampling_params = sp  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "vllm", fake)
        monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)

    class Output:
        text = '{"a": "b"}'
        finish_reason = "stop"

    class LLM:
        def chat(self, messages: Any, sampling_params: Any, use_tqdm: bool) -> Any:
            calls["messages"], calls["params"] = messages, sampling_params
            return [type("R", (), {"outputs": [Output()]})()]

    engine = VLLMEngine("/models/llm", llm=LLM(), max_tokens=77, temperature=0.1)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    out = engine.generate(JsonRequest([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], schema, "t"))
    assert out.text == '{"a": "b"}'
    assert calls["messages"] == [{"role": "user", "content": "hi"}]
    params = calls["params"]
    if not HAS_VLLM:
        assert params.kwargs["structured_outputs"].json == schema
        assert params.kwargs["max_tokens"] == 77 and params.kwargs["temperature"] == 0.1


@pytest.mark.skipif(not HAS_VLLM, reason=SKIP_REASON)
def test_vllm_plans_a_story_on_a_gpu(tmp_path: Path) -> None:  # pragma: no cover - GPU planner hosts only
    model_dir = Path(__import__("os").environ.get("ATELIER_TEST_VLLM_MODEL_DIR", ""))
    if not (model_dir / "config.json").is_file():
        pytest.skip("set ATELIER_TEST_VLLM_MODEL_DIR to a local model folder to run vLLM end to end")
    b = backend_from_settings(Settings(home=tmp_path, planner_backend="vllm", vllm_model_dir=model_dir))
    assert isinstance(b, LLMBackend)
    out = b.culture(StorySpec.model_validate(STORY), job_id="j")
    assert out["planner"]["backend"] == "llm" and out["planner"]["engine"] == "vllm"
