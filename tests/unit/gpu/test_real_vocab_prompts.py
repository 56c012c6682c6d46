"""Prompts with OpenAI CLIP's real vocabulary (issue 14): the tiny SDXL and FLUX pipelines' tokenizers built from the
BPE merges the open_clip_torch wheel ships (``atelier_gpu.tiny.build_real_clip_tokenizer``), written and loaded
through the real load path. The tiny test vocabulary keeps prompts short; with the real one the demo story's scenes
are 83-139 tokens (the long prompt here is 199), and these tests show what that does: nothing is cut, weights are
weights, the counts an artifact records are CLIP's own (and the plan's), and what a window does drop is said."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from atelier_gpu import prompt_encoding, recipes_dispatch, tiny
from atelier_gpu.recipes import text_to_image
from atelier_gpu.registry import ModelSpec, load_pipeline
from atelier_gpu.serving import GenRequest

# a story scene as the KAHANI planner writes it (the demo's story, page 2), in the papers' (text:1.3) weights
SCENE = ("Ammu and Ammachi Saramma, ((Ammu, 7-year-old girl from Kerala, India, wearing a silk pattu pavada skirt and "
         "blouse with a gold border:1.3), (shoulders slumped, looking down, sad:1.2)), ((Ammachi Saramma, 66-year-old "
         "grandmother from Kerala, India, wearing a cream set-mundu with a thin gold border:1.3), (kneeling, hand on "
         "the child's shoulder, kind:1.2)), (a nalukettu house with a central courtyard and a sloping clay-tiled roof "
         "in the backwaters of Alappuzha:1.1), children's picture-book illustration, soft watercolour colours")
# SCENE without its weights, in OpenAI CLIP tokens (no start/end): counted once with OpenAI's own BPE code
SCENE_TOKENS = 129
# … and a tail that takes it to about 200 tokens: only the last words differ between the two long prompts
TAIL = (", monsoon rain on the courtyard tiles, a small paper boat floating in a puddle by the steps, coconut palms "
        "bending in the wind, a brass lamp glowing in the doorway, ripples and reflections in the water, jasmine flowers "
        "in her hair, a row of clay pots along the veranda, a cat asleep on a woven mat, ")
LONG = (SCENE + TAIL + "warm morning light", SCENE + TAIL + "cold blue moonlight")
ARGS = {"width": 64, "height": 64, "steps": 2, "guidance": 5.0}


@pytest.fixture(scope="module")
def clip_pipes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``sdxl-tiny-clip`` and ``flux-tiny-clip`` written with save_pretrained and loaded as real weights are."""
    assert tiny.clip_bpe_file() is not None, "open_clip_torch is not installed (make venv installs it --no-deps)"
    dest = tmp_path_factory.mktemp("clip-models")
    pipes = {}
    for model_id, (family, build, _) in tiny.REAL_VOCAB_MODELS.items():
        build().save_pretrained(dest / model_id, safe_serialization=True)
        pipes[family] = load_pipeline(ModelSpec(id=model_id, family=family, path=dest / model_id), device="cpu")
    return pipes


def _image(pipe: Any, family: str, prompt: str, report: dict[str, Any] | None = None) -> np.ndarray:
    (im,) = text_to_image.run_batch(pipe, family=family, prompt=prompt, negative_prompt="text, watermark",
                                    report=report, seeds=[3], **ARGS)
    return np.asarray(im, dtype=np.int16)


def _clip_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)


def test_the_vocabulary_is_openai_clips(tmp_path: Path) -> None:
    tok = tiny.build_real_clip_tokenizer()
    assert len(tok) == tiny.CLIP_VOCAB_SIZE == 49408
    # ids of OpenAI's CLIP (openai/clip-vit-large-patch14, SDXL's first tokenizer)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("Hello   World").input_ids == [49406, 3306, 1002, 49407]  # lower-cased, whitespace folded
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    assert tiny.build_real_clip_tokenizer(pad_token="!").pad_token_id == 0  # SDXL's second tokenizer pads with "!"
    folder = tiny.write_clip_vocabulary(tmp_path / "tokenizer")
    assert (folder / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\ni n\nt h\n")
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "vocab.json"]


def test_the_tiny_pipelines_carry_it_through_save_and_load(clip_pipes: dict[str, Any]) -> None:
    sdxl, flux = clip_pipes["sdxl"], clip_pipes["flux"]
    for tok, encoder in ((sdxl.tokenizer, sdxl.text_encoder), (sdxl.tokenizer_2, sdxl.text_encoder_2),
                         (flux.tokenizer, flux.text_encoder)):
        assert len(tok) == encoder.config.vocab_size == 49408
        assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert encoder.config.hidden_size == 32  # the encoders stay tiny: only the embedding table grew
    assert sdxl.tokenizer_2.pad_token_id == 0 and sdxl.tokenizer.pad_token_id == 49407


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_a_200_token_prompts_last_words_change_the_image(clip_pipes: dict[str, Any], family: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    pipe = clip_pipes[family]
    report: dict[str, Any] = {}
    with caplog.at_level(logging.WARNING):
        one = _image(pipe, family, LONG[0], report)
        other = _image(pipe, family, LONG[1])
    assert report["tokens"]["tokenizer"] == 199  # real CLIP tokens: nearly three of CLIP's 75-token chunks
    # the last three words reach the image (same seed): a random tiny model reads 3 tokens of 231 only a little
    # (about 6% of SDXL's and 2% of FLUX's pixel values move by one level), but they are read …
    assert (one != other).mean() > 0.005
    assert not [r for r in caplog.records if "truncated" in r.getMessage() or "longer than" in r.getMessage()]
    assert "dropped_words" not in report  # … and nothing said anything was dropped: nothing was


def test_sdxl_own_encoding_would_have_cut_them_at_77_real_tokens(clip_pipes: dict[str, Any]) -> None:
    pipe = clip_pipes["sdxl"]
    a, *_ = pipe.encode_prompt(LONG[0], device="cpu", do_classifier_free_guidance=False)
    b, *_ = pipe.encode_prompt(LONG[1], device="cpu", do_classifier_free_guidance=False)
    assert a.shape[1] == 77 and torch.equal(a, b)  # the pipeline alone: the same image for both prompts
    ea, eb = (prompt_encoding.encode(pipe, "sdxl", [p], None) for p in LONG)
    assert ea is not None and eb is not None
    assert ea.kwargs["prompt_embeds"].shape[1] == 3 * 77  # compel: three chunks, all of it encoded
    assert not torch.equal(ea.kwargs["prompt_embeds"], eb.kwargs["prompt_embeds"])


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_a_weight_is_a_weight_not_text(clip_pipes: dict[str, Any], family: str) -> None:
    pipe = clip_pipes[family]
    plain = "a brass lamp on a wooden table, soft light"
    weighted = "a (brass lamp:1.5) on a wooden table, soft light"
    ep, ew = (prompt_encoding.encode(pipe, family, [p], None, count=True) for p in (plain, weighted))
    assert ep is not None and ew is not None
    assert ep.tokens == ew.tokens and ep.tokens["tokenizer"] == 10 and ep.tokens.get("tokenizer_2", 10) == 10
    assert ep.kwargs["prompt_embeds"].shape == ew.kwargs["prompt_embeds"].shape  # the same tokens (no "(", ":1.5")
    assert not torch.equal(ep.kwargs["prompt_embeds"], ew.kwargs["prompt_embeds"])  # … one of them weighted
    assert (_image(pipe, family, plain) != _image(pipe, family, weighted)).mean() > 0.005


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_the_recorded_token_counts_are_clips_own(clip_pipes: dict[str, Any], family: str) -> None:
    pipe = clip_pipes[family]
    req = GenRequest(ctx=None, recipe="text_to_image", model=f"{family}-tiny-clip", seed=3, prompt=SCENE,
                     negative_prompt="text, watermark", steps=2, **{k: v for k, v in ARGS.items() if k != "steps"})
    ((image, info),) = recipes_dispatch.run(None, ModelSpec(id=req.model, family=family, path=Path(".")), pipe,
                                            [req], lambda step, total: None)
    tokens = info["prompt_encoding"]["tokens"]
    assert tokens["tokenizer"] == SCENE_TOKENS == _clip_count(pipe.tokenizer, prompt_encoding.words_of(SCENE))
    if family == "sdxl":  # both SDXL encoders read OpenAI's vocabulary (OpenCLIP bigG was trained on it)
        assert tokens["tokenizer_2"] == SCENE_TOKENS
    assert "warnings" not in info and image.size == (64, 64)


def test_what_flux_t5_window_drops_is_a_warning_naming_the_words(clip_pipes: dict[str, Any]) -> None:
    """The one window compel cannot chunk past is FLUX's T5 (its tokenizer's length, 512 tokens): words beyond it
    are listed in the stage's warning (a job.warning), the words before it are not."""
    pipe = clip_pipes["flux"]
    window = int(pipe.tokenizer_2.model_max_length)
    words = [f"lantern{i}" for i in range(window // 2)] + ["kettuvallam", "houseboats", "at", "dusk"]
    prompt = " ".join(words)
    t5 = len(pipe.tokenizer_2(prompt, add_special_tokens=False, verbose=False).input_ids)
    assert t5 > window  # "lantern", then its number spelled out: past the window
    req = GenRequest(ctx=None, recipe="text_to_image", model="flux-tiny-clip", seed=3, prompt=prompt, steps=2,
                     **{k: v for k, v in ARGS.items() if k != "steps"})
    ((_, info),) = recipes_dispatch.run(None, ModelSpec(id=req.model, family="flux", path=Path(".")), pipe, [req],
                                        lambda step, total: None)
    dropped = info["prompt_encoding"]["dropped_words"]
    assert {"kettuvallam", "houseboats", "dusk"} <= set(dropped) and "lantern0" not in dropped
    (warning,) = info["warnings"]
    assert "dropped" in warning and "kettuvallam" in warning and "houseboats" in warning


def test_what_flux_regional_t5_window_drops_is_a_warning_too(clip_pipes: dict[str, Any]) -> None:
    """FLUX's regional encoding gives the base prompt and each region its own T5 window (256 tokens): words past it
    are named in the stage's warning, as text-to-image's are."""
    from atelier_gpu.recipes import regional

    pipe = clip_pipes["flux"]
    window = regional.flux_text_window(pipe)
    base = " ".join([f"lantern{i}" for i in range(window // 2)] + ["kettuvallam", "houseboats", "at", "dusk"])
    regions = [{"box": [0.0, 0.0, 0.5, 1.0], "prompt": "a red kite"}, {"box": [0.5, 0.0, 1.0, 1.0],
                                                                        "prompt": "a green boat"}]
    req = GenRequest(ctx=None, recipe="regional", model="flux-tiny-clip", seed=3, prompt=base, steps=2,
                     params={"regions": regions, "source": "layout"}, **{k: v for k, v in ARGS.items() if k != "steps"})
    ((_, info),) = recipes_dispatch.run(None, ModelSpec(id=req.model, family="flux", path=Path(".")), pipe, [req],
                                        lambda step, total: None)
    (warning,) = info["warnings"]
    assert "kettuvallam" in warning and "dusk" in warning and "lantern0 " not in warning
    assert "kite" not in warning and info["regional"]["mode"] == "text_to_image"
    short = GenRequest(ctx=None, recipe="regional", model="flux-tiny-clip", seed=3, prompt="a harbour at dusk",
                       steps=2, params={"regions": regions, "source": "layout"},
                       **{k: v for k, v in ARGS.items() if k != "steps"})
    ((_, quiet),) = recipes_dispatch.run(None, ModelSpec(id=req.model, family="flux", path=Path(".")), pipe, [short],
                                         lambda step, total: None)
    assert "warnings" not in quiet


def test_every_weight_the_planners_write_reaches_compel_as_a_weight() -> None:
    """The demo's story, planned by the rules planner: each sheet and scene prompt's ``(text:w)`` groups become
    compel weights, even where the text holds a colon or plain parentheses; no ``:1.3`` is left as text."""
    from atelier.demo import STORY
    from atelier_contracts.specs import StorySpec
    from atelier_planner.backends.rules import RulesBackend
    from compel.prompt_parser import PromptParser

    plan = RulesBackend().scenes(StorySpec.model_validate(STORY), job_id="demo", story_output=None,
                                 characters_output=None, culture_output=None)["plan"]
    prompts = [c["sheet_prompt"] for c in plan["characters"]] + [s["scene_prompt"] for s in plan["scenes"]]
    for prompt in prompts:
        (parsed,) = PromptParser().parse_conjunction(prompt_encoding.to_compel(prompt)).prompts
        weights = {round(f.weight, 2) for f in parsed.children}
        texts = " ".join(f.text for f in parsed.children)
        assert weights - {1.0}, prompt  # the planner's weights are weights …
        assert not re.search(r":\s*\d", texts), prompt  # … and none of them is left in the text


def test_a_plans_token_counts_are_what_the_gpu_records(clip_pipes: dict[str, Any]) -> None:
    """The planner counts each prompt with the same vocabulary (atelier_planner.tokens, pure Python): the count a
    story plan carries for a scene is the count the scene image's artifact records."""
    from atelier.demo import STORY
    from atelier_contracts.specs import StorySpec
    from atelier_planner.backends.rules import RulesBackend
    from atelier_planner.tokens import with_prompt_tokens

    out = with_prompt_tokens(RulesBackend().scenes(StorySpec.model_validate(STORY), job_id="demo", story_output=None,
                                                   characters_output=None, culture_output=None))
    scene = out["plan"]["scenes"][2]["scene_prompt"]
    planned = out["prompt_tokens"]["plan.scenes[2].scene_prompt"]["clip"]
    report: dict[str, Any] = {}
    _image(clip_pipes["sdxl"], "sdxl", scene, report)
    assert report["tokens"] == {"tokenizer": planned, "tokenizer_2": planned} and planned > 77
