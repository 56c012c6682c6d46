"""Prompts are encoded whole and weighted (issue 14): compel for SDXL and FLUX, on the real diffusers pipeline
classes (the session's tiny ones). A long prompt's last words reach the image; `(x:1.5)` is a weight, not text;
what a window drops (FLUX's T5) is reported; nothing logs CLIP's "truncated" line."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from atelier_gpu import prompt_encoding
from atelier_gpu.recipes import text_to_image

BASE = ("Ammu and Appachan, ((Ammu, an 8-year-old girl with long black hair, wearing a silk pattu pavada:1.3), "
        "(standing at the doorway, waving, cheerful:1.2)), ((Appachan Varghese, a grandfather with white hair, "
        "wearing a white mundu:1.3), (bending down, warm smile:1.2)), (the palm-lined backwaters of Alappuzha with "
        "kettuvallam houseboats:1.1), children's picture-book illustration, soft watercolour colours")
ARGS = {"width": 64, "height": 64, "steps": 2, "guidance": 5.0, "seeds": [3]}


def _image(pipe: object, family: str, prompt: str, report: dict[str, object] | None = None) -> np.ndarray:
    (im,) = text_to_image.run_batch(pipe, family=family, prompt=prompt, negative_prompt="text, watermark",
                                    report=report, **ARGS)
    return np.asarray(im, dtype=np.int16)


@pytest.mark.parametrize("a1111,compel", [
    ("(red:1.3)", "(red)1.3"),
    ("((a girl, smiling:1.3), (standing:1.2))", "((a girl, smiling)1.3, (standing)1.2)"),
    ("a (lamp: 0.8) on a table", "a (lamp)0.8 on a table"),
    ("no weights (here)", "no weights (here)"),
    # the KAHANI planner's scene prompts (the demo's story): a colon and plain parentheses inside a weighted group
    ("(Onam in Alappuzha: pookalam flower carpets:1.1), style", "(Onam in Alappuzha: pookalam flower carpets)1.1, style"),
    ("((Saramma, in a set-mundu (mundu and neriyathu) with a gold border:1.3), (kneeling:1.2))",
     "((Saramma, in a set-mundu (mundu and neriyathu) with a gold border)1.3, (kneeling)1.2)"),
    ("((a lamp:1.2) on a table:1.3)", "((a lamp)1.2 on a table)1.3"),
    ("a ratio:1.5) without its opening", "a ratio:1.5) without its opening"),
])
def test_a1111_weights_become_compel_weights(a1111: str, compel: str) -> None:
    assert prompt_encoding.to_compel(a1111) == compel


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_the_last_words_of_a_long_prompt_change_the_image(request: pytest.FixtureRequest, family: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    pipe = request.getfixturevalue(family)
    report: dict[str, object] = {}
    with caplog.at_level(logging.WARNING):
        one = _image(pipe, family, BASE + ", warm morning light", report)
        other = _image(pipe, family, BASE + ", cold blue moonlight")
    assert report["encoder"] == "compel"
    tokens = report["tokens"]
    assert isinstance(tokens, dict) and tokens["tokenizer"] > 77  # longer than CLIP's window …
    assert np.abs(one - other).max() > 0  # … and its last words still reach the image (same seed)
    assert not [r for r in caplog.records if "truncated" in r.getMessage() or "longer than" in r.getMessage()]


def test_the_pipelines_own_encoding_would_have_cut_them(sdxl: object) -> None:
    """What compel fixes: the same two prompts through SDXL's own encode_prompt are identical past token 77."""
    a, _, _, _ = sdxl.encode_prompt(BASE + ", warm morning light", device="cpu", do_classifier_free_guidance=False)
    b, _, _, _ = sdxl.encode_prompt(BASE + ", cold blue moonlight", device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(a, b)
    ea = prompt_encoding.encode(sdxl, "sdxl", [BASE + ", warm morning light"], None)
    eb = prompt_encoding.encode(sdxl, "sdxl", [BASE + ", cold blue moonlight"], None)
    assert ea is not None and eb is not None
    assert ea.kwargs["prompt_embeds"].shape[1] > 77 and not torch.equal(ea.kwargs["prompt_embeds"],
                                                                          eb.kwargs["prompt_embeds"])


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_a_weight_is_a_weight(request: pytest.FixtureRequest, family: str) -> None:
    pipe = request.getfixturevalue(family)
    plain = prompt_encoding.encode(pipe, family, ["a brass lamp on a wooden table"], None)
    weighted = prompt_encoding.encode(pipe, family, ["a (brass lamp:1.5) on a wooden table"], None)
    assert plain is not None and weighted is not None
    assert plain.kwargs["prompt_embeds"].shape == weighted.kwargs["prompt_embeds"].shape  # the same tokens …
    assert not torch.equal(plain.kwargs["prompt_embeds"], weighted.kwargs["prompt_embeds"])  # … weighted
    assert prompt_encoding.token_counts(pipe, ["a brass lamp on a wooden table"]) == \
        prompt_encoding.token_counts(pipe, ["a brass lamp on a wooden table"])


def test_a_batch_of_prompts_of_different_lengths_is_one_call(sdxl: object) -> None:
    images = text_to_image.run_batch(sdxl, family="sdxl", prompt=[BASE, "a lamp"], negative_prompt=None,
                                     **{**ARGS, "seeds": [3, 4]})
    assert len(images) == 2 and images[0].size == (64, 64)


def test_what_flux_t5_window_drops_is_reported_and_becomes_a_warning(flux: object) -> None:
    window = int(flux.tokenizer_2.model_max_length)
    words = [f"lantern{i}" for i in range(window)]  # every word at least one T5 token: past the window
    encoded = prompt_encoding.encode(flux, "flux", [" ".join(words)], None)
    assert encoded is not None and encoded.dropped and set(encoded.dropped) <= set(words)
    assert encoded.report()["dropped_words"] == encoded.dropped
    short = prompt_encoding.encode(flux, "flux", ["a lamp"], None)
    assert short is not None and short.dropped == [] and "dropped_words" not in short.report()


def test_other_families_keep_their_pipelines_encoding(request: pytest.FixtureRequest) -> None:
    assert prompt_encoding.encode(object(), "sd3", ["x"], None) is None
