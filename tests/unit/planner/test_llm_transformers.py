"""The ``transformers`` backend on a tiny random-init causal LM built in the test (offline, CPU).

The model's tokens are noise; only xgrammar's constrained decoding makes its answers parse as the schema's
JSON, and the planners' validation and repair turn them into valid plans. The schema limits are small
(``Limits.tiny()``) so every string closes within the token budget; the decoding path is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from atelier.demo import CAMPAIGN, STORY
from atelier_contracts.plans import AdPlan, LayoutPlan, RegionalPlan, StoryPlan
from atelier_contracts.specs import StorySpec
from atelier_planner.backends import backend_from_settings
from atelier_planner.backends.llm import LLMBackend
from atelier_planner.llm.engines import JsonRequest, TransformersEngine
from atelier_planner.llm.errors import EngineError, EngineUnavailable
from atelier_planner.llm.prompts import load_prompt
from atelier_planner.llm.runner import parse_answer
from atelier_planner.llm.schema import Limits, validate
from atelier_planner.metrics import regional_metrics
from atelier_planner.preview import preview_plans
from atelier_planner.prompt_schemas import schema_for
from atelier_runtime.settings import Settings

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tiny_backend(tiny_engine: TransformersEngine) -> LLMBackend:
    return LLMBackend(tiny_engine, limits=Limits.tiny())


def test_constrained_decoding_yields_schema_json(tiny_engine: TransformersEngine) -> None:
    template = load_prompt("kahani.scenes")
    data = template.examples[0]["data"]
    schema = schema_for("kahani.scenes", data, Limits.tiny())
    text = tiny_engine.generate(JsonRequest(template.render(data, schema=schema), schema, "kahani_scenes")).text
    answer = parse_answer(text)
    assert validate(answer, schema) == []
    assert len(answer["scenes"]) == data["pages"]
    assert {m["character"] for s in answer["scenes"] for m in s["cast"]} <= {c["name"] for c in data["characters"]}


def test_the_same_model_without_the_grammar_writes_no_json(tiny_llm_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir, local_files_only=True)
    ids = tok.apply_chat_template([{"role": "user", "content": "Answer in JSON."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    with pytest.raises(json.JSONDecodeError):
        json.loads(tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True))


def test_every_method_yields_a_valid_llm_plan(tiny_backend: LLMBackend) -> None:
    campaign = preview_plans(tiny_backend, kind="campaign", spec=CAMPAIGN)["stages"]
    story = preview_plans(tiny_backend, kind="story", spec=STORY)["stages"]
    runs = {stage: out["planner"] for stage, out in {**campaign, **story}.items()}
    for stage, run in runs.items():
        assert run["backend"] == "llm" and run["engine"] == "transformers", (stage, run.get("fallback"))
    ad = AdPlan.model_validate(campaign["plan.ad_layout"]["plan"])
    assert ad.planner.model == "transformers:tiny-llm" and len(ad.variants) == len(CAMPAIGN["sizes"])
    for size, m in campaign["plan.ad_layout"]["metrics"].items():
        # whatever noise the model drew, the repair keeps text off the product and inside the safe zone
        assert m["text_product_overlap"] == 0 and m["safe_zone_violation"] == 0 and m["out_of_bounds"] == 0, size
    regional = RegionalPlan.model_validate(campaign["plan.ad_prompts"]["regional"])
    assert regional_metrics(regional)["covers_canvas_exactly_once"]
    plan = StoryPlan.model_validate(story["plan.scenes"]["plan"])
    assert len(plan.scenes) == STORY["pages"] and len(plan.characters) <= 3
    for lp in story["plan.scene_layout"]["layouts"]:
        LayoutPlan.model_validate(lp)
    rp = tiny_backend.recaption("a red apple above a blue book", plan_id="p", seed=0, width=512, height=512)
    assert rp.run["backend"] == "llm" and len(rp.value.regions) <= 6
    dl = tiny_backend.design_layout("a cat and a dog", width=512, height=512)
    assert dl.run["backend"] == "llm" and 1 <= len(dl.value.boxes) <= 10


def test_settings_build_the_transformers_backend(tiny_llm_dir: Path, tmp_path: Path) -> None:
    b = backend_from_settings(Settings(home=tmp_path, planner_backend="transformers",
                                       transformers_model_dir=tiny_llm_dir, transformers_max_new_tokens=64))
    assert isinstance(b, LLMBackend) and isinstance(b.engine, TransformersEngine)
    assert b.engine.model_dir == tiny_llm_dir and b.engine.max_new_tokens == 64 and b.name == "transformers"


def test_a_budget_too_small_is_an_engine_error_and_falls_back(tiny_llm_dir: Path) -> None:
    engine = TransformersEngine(tiny_llm_dir, max_new_tokens=3, threads=1)
    with pytest.raises(EngineError, match="did not close within 3"):
        engine.generate(JsonRequest([{"role": "user", "content": "x"}],
                                    schema_for("kahani.story", {}, Limits.tiny()), "kahani_story"))
    out = LLMBackend(engine, limits=Limits.tiny()).culture(StorySpec.model_validate(STORY), job_id="j")
    assert out["planner"]["backend"] == "rules" and "did not close" in out["planner"]["fallback"]["error"]


def test_missing_model_folder_is_unavailable(tmp_path: Path) -> None:
    engine = TransformersEngine(tmp_path / "nowhere")
    with pytest.raises(EngineUnavailable, match="not a model folder"):
        engine.generate(JsonRequest([{"role": "user", "content": "x"}], {"type": "object"}, "x"))


def test_images_need_a_vlm(tiny_engine: TransformersEngine) -> None:
    msg: dict[str, Any] = {"role": "user", "content": [{"type": "text", "text": "x"},
                                                       {"type": "image_url", "image_url": {"url": "data:,"}}]}
    with pytest.raises(EngineUnavailable, match="VLM"):
        tiny_engine.generate(JsonRequest([msg], {"type": "object"}, "x"))
