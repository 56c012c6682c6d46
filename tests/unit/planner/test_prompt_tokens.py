"""Plans say how long their prompts are in CLIP tokens (issue 14): every planning stage's output carries
``prompt_tokens``, counted with OpenAI CLIP's real vocabulary (open_clip_torch's BPE file), whichever backend
planned it; the counts are the ones transformers' CLIPTokenizer gives with that vocabulary (the GPU worker's);
the weights the planners write stay weighting syntax the encoder reads."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import pytest
from atelier.demo import CAMPAIGN, STORY
from atelier_contracts.plans import StoryPlan
from atelier_contracts.stage_io import ScenesOutput
from atelier_planner import kahani, tokens
from atelier_planner.stages.ad_layout import ad_layout as ad_layout_stage
from atelier_planner.stages.ad_prompts import ad_prompts as ad_prompts_stage
from atelier_planner.stages.characters import characters as characters_stage
from atelier_planner.stages.scene_layout import scene_layout as scene_layout_stage
from atelier_planner.stages.scenes import scenes as scenes_stage
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext

MakeCtx = Callable[..., StageContext]


@pytest.fixture(scope="module")
def clip_tokenizer() -> Any:
    """transformers' CLIPTokenizer with the same vocabulary, as the GPU worker's tiny writer builds it."""
    from atelier_gpu.tiny import build_real_clip_tokenizer

    return build_real_clip_tokenizer()


def _hf_count(tok: Any, text: str) -> int:
    return len(tok(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_the_vocabulary_is_openai_clips() -> None:
    bpe = tokens.clip_bpe()
    assert bpe is not None, "open_clip_torch is not installed (make venv installs it --no-deps)"
    assert len(bpe.vocab) == 49408
    assert bpe.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]  # OpenAI CLIP's ids
    assert bpe.encode("Hello   World") == [3306, 1002]
    assert tokens.clip_tokens("a (brass lamp:1.5) on a table") == tokens.clip_tokens("a brass lamp on a table") == 6


def test_the_counts_are_the_gpu_tokenizers_for_every_text_the_planner_ships(clip_tokenizer: Any) -> None:
    """Every string in the planner's data (lexicons, templates, 20 story languages) and a few hard cases: the
    planner's pure-Python BPE gives transformers' ids, so a plan's counts are what the GPU worker records."""
    bpe = tokens.clip_bpe()
    assert bpe is not None
    corpus = ["Naïve café — 7½ déjà-vu!! 東京 🙂 it's", "x² + y_1 __init__ C++ 3.14 1,000,000", "a\tb\n\nc   d",
              "O'Neil's kids' \"quoted\" ÀÉÎ straße ﬁ", "हिंदी कहानी, বাংলা গল্প, தமிழ், 日本語、中文。한국어"]
    data = resources.files("atelier_planner") / "data"
    for f in [*data.iterdir(), *(data / "story_lang").iterdir()]:
        if f.name.endswith(".json"):
            corpus.extend(_strings(json.loads(f.read_text(encoding="utf-8"))))
    assert len(corpus) > 5000
    mismatched = [s for s in corpus if bpe.encode(s) != clip_tokenizer(s, add_special_tokens=False,
                                                                         verbose=False).input_ids]
    assert mismatched == []


@pytest.mark.parametrize("prompt,words", [
    ("(a, b:1.3) c", "a, b c"),
    ("((Ammu, a girl:1.3), (waving:1.2)), (Alappuzha: pookalam carpets:1.1), style",
     "Ammu, a girl, waving, Alappuzha: pookalam carpets, style"),
    ("a cream set-mundu (mundu and neriyathu)", "a cream set-mundu mundu and neriyathu"),
])
def test_weights_are_not_counted(prompt: str, words: str) -> None:
    assert tokens.prompt_words(prompt) == words


def _story_chain(make_ctx: MakeCtx) -> dict[str, dict[str, Any]]:
    up: dict[str, Any] = {}
    up["plan.characters"] = characters_stage.stage_fn(make_ctx(stage="plan.characters", kind="story", spec=STORY))
    up["plan.scenes"] = scenes_stage.stage_fn(make_ctx(stage="plan.scenes", kind="story", spec=STORY,
                                                       upstream={"plan.characters": up["plan.characters"]}))
    plan = StoryPlan.model_validate(up["plan.scenes"]["plan"])
    sheets = {c.id: {"sheet_key": f"tenants/t1/jobs/job-1/gpu.character_sheet/{c.id}.png", "seed": 1}
              for c in plan.characters}
    up["plan.scene_layout"] = scene_layout_stage.stage_fn(make_ctx(
        stage="plan.scene_layout", kind="story", spec=STORY,
        upstream={"plan.scenes": up["plan.scenes"], "gpu.character_sheet": sheets}))
    return up


def test_the_demo_story_plans_carry_their_prompts_token_counts(make_ctx: MakeCtx, clip_tokenizer: Any) -> None:
    up = _story_chain(make_ctx)
    scenes = up["plan.scenes"]
    plan = StoryPlan.model_validate(scenes["plan"])
    counts = scenes["prompt_tokens"]
    assert ScenesOutput.model_validate(scenes).prompt_tokens == counts  # a field of the contract, not an extra
    for i, scene in enumerate(plan.scenes):
        n = counts[f"plan.scenes[{i}].scene_prompt"]["clip"]
        assert n == _hf_count(clip_tokenizer, tokens.prompt_words(scene.scene_prompt))
    assert max(counts[f"plan.scenes[{i}].scene_prompt"]["clip"] for i in range(len(plan.scenes))) > 75  # chunked
    assert counts["plan.negative_prompt"]["clip"] == _hf_count(clip_tokenizer, plan.negative_prompt)
    sheet = plan.characters[0].sheet_prompt
    assert up["plan.characters"]["prompt_tokens"]["characters[0].sheet_prompt"]["clip"] == \
        _hf_count(clip_tokenizer, tokens.prompt_words(sheet))
    layouts = up["plan.scene_layout"]
    assert layouts["prompt_tokens"]["layouts[1].global_caption"] == counts["plan.scenes[1].scene_prompt"]
    assert all(set(v) == {"clip"} for out in up.values() for v in out["prompt_tokens"].values())


def test_the_demo_campaign_plans_count_the_prompts_a_model_draws(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(stage="plan.ad_prompts", kind="campaign", spec=CAMPAIGN)
    prompts = ad_prompts_stage.stage_fn(ctx)
    assert {"prompts.foreground", "prompts.background", "negative_prompt", "regional.base_prompt",
            "regional.regions[0].prompt"} <= set(prompts["prompt_tokens"])
    out = ad_layout_stage.stage_fn(make_ctx(stage="plan.ad_layout", kind="campaign", spec=CAMPAIGN,
                                            upstream={"plan.ad_prompts": prompts}))
    counts = out["prompt_tokens"]
    assert counts["plan.prompts.background"] == prompts["prompt_tokens"]["prompts.background"]
    assert "plan.variants[0].layout.global_caption" in counts and "plan.variants[0].scene_captions[1]" in counts
    drawn = {f"plan.variants[0].layout.boxes[{i}].caption" for i, b in enumerate(out["plan"]["variants"][0]["layout"]
             ["boxes"]) if b["caption"] and b["role"] not in ("logo", "tagline", "cta", "underlay")}
    boxes = {k for k in counts if k.startswith("plan.variants[0].layout.boxes")}
    assert boxes == drawn and drawn  # the renderer's boxes (logo, taglines, CTA) are no prompts
    stored = json.loads(ctx.get(ctx.artifacts[0].key))
    assert stored["prompt_tokens"] == prompts["prompt_tokens"]  # the plan artifact carries them


def test_an_llm_plan_carries_them_too(make_ctx: MakeCtx, resources: Any, openai_settings: Settings) -> None:
    resources.settings = openai_settings
    out = characters_stage.stage_fn(make_ctx(stage="plan.characters", kind="story", spec=STORY))
    assert out["planner"]["backend"] == "llm"
    for i, c in enumerate(out["characters"]):
        assert out["prompt_tokens"][f"characters[{i}].sheet_prompt"] == {"clip": tokens.clip_tokens(c["sheet_prompt"])}


def test_without_the_vocabulary_the_counts_are_left_out(make_ctx: MakeCtx, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "clip_bpe", lambda: None)
    out = characters_stage.stage_fn(make_ctx(stage="plan.characters", kind="story", spec=STORY))
    assert "prompt_tokens" not in out and out["characters"]


@pytest.mark.parametrize("text,safe", [
    ("dawn at the ghat (5:30)", "dawn at the ghat (5 30)"),  # would have read as weight 30
    ("a cream set-mundu (mundu and neriyathu)", "a cream set-mundu (mundu and neriyathu)"),
    ("Onam: pookalam flower carpets", "Onam: pookalam flower carpets"),
    ("waving :) happily (", "waving : happily "),
])
def test_text_inside_a_weighted_group_cannot_break_it(text: str, safe: str) -> None:
    assert kahani.in_group(text) == safe
    prompt = f"({kahani.in_group(text)}:1.1), style"
    assert re.findall(r":\s*[0-9.]+\s*\)", prompt) == [":1.1)"]
