"""Tiny SDXL / FLUX through the text-to-image recipe: sizes, seeds, step callbacks, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from atelier_contracts.errors import StageError
from atelier_gpu.recipes import text_to_image
from atelier_gpu.recipes.text_to_image import check_inputs, generation_size

PROMPT = "a photo of a red bottle on a marble table, soft morning light"


def _run(pipe, family, *, seed=7, width=128, height=96, steps=2, on_step=None):
    return text_to_image.run(pipe, family=family, prompt=PROMPT, negative_prompt="blurry, lowres", width=width,
                             height=height, steps=steps, guidance=5.0, seed=seed, on_step=on_step)


@pytest.mark.parametrize("family,width,height", [("sdxl", 128, 96), ("flux", 96, 128)])
def test_tiny_pipeline_makes_an_image_of_the_requested_size(request, family, width, height):
    pipe = request.getfixturevalue(family)
    image = _run(pipe, family, width=width, height=height)
    assert image.size == (width, height)
    assert image.mode == "RGB"
    assert np.asarray(image).std() > 0  # not a blank frame


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_same_seed_same_image_and_other_seed_other_image(request, family):
    pipe = request.getfixturevalue(family)
    first = np.asarray(_run(pipe, family, seed=11))
    again = np.asarray(_run(pipe, family, seed=11))
    other = np.asarray(_run(pipe, family, seed=12))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_on_step_sees_every_step(request, family):
    calls: list[tuple[int, int]] = []
    _run(request.getfixturevalue(family), family, steps=3, on_step=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_on_step_raising_stops_the_run(request, family):
    pipe = request.getfixturevalue(family)

    class Stop(Exception):
        pass

    calls: list[int] = []

    def on_step(step: int, total: int) -> None:
        calls.append(step)
        if step == 2:
            raise Stop("canceled")

    with pytest.raises(Stop):
        _run(pipe, family, steps=4, on_step=on_step)
    assert calls == [1, 2]


def test_flux_ignores_negative_prompt(flux):
    a = text_to_image.run(flux, family="flux", prompt=PROMPT, negative_prompt="", width=64, height=64, steps=2,
                          guidance=3.5, seed=3)
    b = text_to_image.run(flux, family="flux", prompt=PROMPT, negative_prompt="something else", width=64, height=64,
                          steps=2, guidance=3.5, seed=3)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_sdxl_negative_prompt_changes_the_image(sdxl):
    a = text_to_image.run(sdxl, family="sdxl", prompt=PROMPT, negative_prompt="", width=64, height=64, steps=2,
                          guidance=5.0, seed=3)
    b = text_to_image.run(sdxl, family="sdxl", prompt=PROMPT, negative_prompt="dark stone wall", width=64, height=64,
                          steps=2, guidance=5.0, seed=3)
    assert not np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("bad,field", [
    ({"width": 100}, "width"),
    ({"height": 16}, "height"),
    ({"prompt": "  "}, "prompt"),
    ({"steps": 0}, "steps"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"),
    ({"guidance": "high"}, "guidance"),
    ({"family": "sd15"}, "family"),
    ({"negative_prompt": 3}, "negative_prompt"),
    ({"on_step": "nope"}, "on_step"),
])
def test_check_inputs_names_the_bad_argument(sdxl, bad, field):
    args = {"family": "sdxl", "prompt": PROMPT, "negative_prompt": "", "width": 128, "height": 96, "steps": 4,
            "guidance": 5.0, "seed": 1, "on_step": None}
    check_inputs(sdxl, **args)  # the good call passes
    args.update(bad)
    with pytest.raises(StageError) as err:
        check_inputs(sdxl, **args)
    assert err.value.retryable is False
    assert err.value.field == field
    assert f"`{field}`" in str(err.value)


def test_check_inputs_rejects_a_pipeline_of_the_other_family(sdxl):
    with pytest.raises(StageError, match="not a flux pipeline"):
        check_inputs(sdxl, family="flux", prompt=PROMPT, negative_prompt=None, width=64, height=64, steps=2,
                     guidance=3.5, seed=0)


@pytest.mark.parametrize("target,max_side,expected", [
    ((1080, 1080), 128, (128, 128)),
    ((1080, 1920), 128, (80, 128)),  # 1080*128/1920 = 72, half-up to 80
    ((1920, 1080), 1024, (1024, 576)),
    ((64, 64), 1024, (64, 64)),  # never upscales
    ((100, 50), 1024, (96, 48)),
    ((4096, 64), 512, (512, 32)),  # short side floored at 32
    ((1000, 1000), 100, (96, 96)),  # cap rounded down to a multiple of 16
    ((1280, 960), 128, (128, 96)),
])
def test_generation_size_cases(target, max_side, expected):
    assert generation_size(*target, max_side) == expected


def test_generation_size_invariants():
    for w in (64, 100, 333, 720, 1080, 1920, 4096):
        for h in (64, 99, 480, 1080, 1350, 1920):
            for cap in (32, 128, 256, 1000, 1024):
                gw, gh = generation_size(w, h, cap)
                assert gw % 16 == 0 and gh % 16 == 0
                assert 32 <= gw <= max(cap, 32) and 32 <= gh <= max(cap, 32)
                assert max(gw, gh) <= cap
                assert gw <= max(w, 32) + 8 and gh <= max(h, 32) + 8  # no upscaling beyond rounding
                if min(w, h) * cap / max(w, h) >= 64:  # aspect ratio kept unless the short side was clamped
                    assert abs(gw / gh - w / h) / (w / h) < 0.25


def test_generation_size_rejects_a_cap_below_32():
    with pytest.raises(StageError, match="max_side"):
        generation_size(100, 100, 31)


def test_tiny_models_file_and_tokenizers(models_file, sdxl, flux):
    doc = yaml.safe_load(models_file.read_text())["models"]
    assert doc["sdxl-tiny"]["family"] == "sdxl" and doc["flux-tiny"]["family"] == "flux"
    assert doc["sdxl-tiny"]["max_side"] == 128 and doc["flux-tiny"]["max_side"] == 128
    assert (models_file.parent / doc["sdxl-tiny"]["path"] / "model_index.json").is_file()
    assert sdxl.tokenizer.model_max_length == 77 and sdxl.tokenizer_2.model_max_length == 77
    assert flux.tokenizer.model_max_length == 77
    assert flux.vae.config.latent_channels == 16
    ids = sdxl.tokenizer(PROMPT).input_ids
    assert ids[0] == sdxl.tokenizer.bos_token_id and ids[-1] == sdxl.tokenizer.eos_token_id
    assert len(ids) < 40  # common words are whole tokens, so prompts fit in 77
    t5 = flux.tokenizer_2(PROMPT).input_ids
    assert t5[-1] == flux.tokenizer_2.eos_token_id and flux.tokenizer_2.unk_token_id not in t5


def test_tiny_weights_are_seeded():
    from atelier_gpu.tiny import build_flux_tiny

    a, b = build_flux_tiny().transformer.state_dict(), build_flux_tiny().transformer.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_tiny_reuses_folders_and_keeps_other_models(tmp_path):
    from atelier_gpu.tiny import init_tiny

    models_file = init_tiny(tmp_path)
    weights = next((tmp_path / "flux-tiny" / "transformer").glob("*.safetensors"))
    before = weights.stat().st_mtime_ns
    doc = yaml.safe_load(models_file.read_text())
    doc["models"]["real-sdxl"] = {"family": "sdxl", "path": "/models/sdxl", "dtype": "float16", "steps": 30}
    models_file.write_text(yaml.safe_dump(doc))
    assert init_tiny(tmp_path) == models_file
    after = yaml.safe_load(models_file.read_text())["models"]
    assert weights.stat().st_mtime_ns == before  # same version → folder reused, not rewritten
    assert after["real-sdxl"]["path"] == "/models/sdxl"
    assert {"sdxl-tiny", "flux-tiny"} <= set(after) and "sdxl-bench" not in after
    init_tiny(tmp_path, force=True)
    assert weights.exists() is False or weights.stat().st_mtime_ns != before  # force rewrites the folder
