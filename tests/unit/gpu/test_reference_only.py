"""Reference-only attention (recipes.reference_attn) on the tiny SDXL: installation, the read pass, boxes, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from atelier_contracts.errors import JobCanceled, StageError
from atelier_contracts.plans import Box
from atelier_gpu.recipes import reference_attn, text_to_image
from atelier_gpu.recipes.reference_attn import ReferenceAttnProcessor, ReferenceState, reference_attention
from PIL import Image, ImageDraw

GEN = {"prompt": "a girl in a red dress", "negative_prompt": "", "width": 64, "height": 64, "steps": 3,
       "guidance": 5.0, "seed": 11}
ATTN1 = "down_blocks.1.attentions.0.transformer_blocks.0.attn1"
ATTN2 = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"


def sheet(colour: tuple[int, int, int]) -> Image.Image:
    """A character sheet: a figure of one colour on a plain light backdrop."""
    im = Image.new("RGB", (128, 128), (245, 245, 245))
    d = ImageDraw.Draw(im)
    d.ellipse([48, 12, 80, 44], fill=(230, 190, 160))
    d.rectangle([40, 44, 88, 120], fill=colour)
    return im


RED, BLUE = sheet((200, 30, 30)), sheet((30, 60, 200))


def key_lengths(unet, name: str) -> tuple[list[int], object]:
    """Sequence lengths the layer's ``to_k`` sees (the keys' token count), and the hook handle."""
    seen: list[int] = []
    handle = unet.get_submodule(name).to_k.register_forward_hook(lambda m, i, o: seen.append(int(i[0].shape[1])))
    return seen, handle


def test_processors_go_on_self_attention_only_and_come_back(sdxl):
    unet = sdxl.unet
    before = dict(unet.attn_processors)
    hooks = len(unet._forward_pre_hooks)
    with reference_attention(sdxl, [RED], cfg=True, seed=1) as state:
        during = unet.attn_processors
        for name, proc in during.items():
            if name.endswith("attn1.processor"):
                assert isinstance(proc, ReferenceAttnProcessor) and proc.plain is before[name] and proc.active
            else:
                assert proc is before[name]  # cross-attention untouched
        assert len(unet._forward_pre_hooks) == hooks + 1
        assert isinstance(state, ReferenceState) and state.writes == 0
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert len(unet._forward_pre_hooks) == hooks
    with pytest.raises(RuntimeError, match="boom"), reference_attention(sdxl, [RED], cfg=True, seed=1):
        raise RuntimeError("boom")
    assert all(unet.attn_processors[n] is before[n] for n in before) and len(unet._forward_pre_hooks) == hooks


def test_read_pass_attends_over_the_reference_tokens(sdxl):
    unet = sdxl.unet
    seen, handle = key_lengths(unet, ATTN1)
    cross, handle2 = key_lengths(unet, ATTN2)
    try:
        text_to_image.run(sdxl, family="sdxl", **GEN)
        plain, plain_cross = sorted(set(seen)), sorted(set(cross))
        seen.clear()
        cross.clear()
        reference_attn.run(sdxl, references=[RED], **GEN)
        one = list(seen)
        seen.clear()
        reference_attn.run(sdxl, references=[RED, BLUE], **GEN)
        two = list(seen)
    finally:
        handle.remove()
        handle2.remove()
    [n] = plain  # the layer's own tokens (4x4 at 64x64)
    # every step: one write pass (own tokens only) then the read pass over [x, ref] — keys doubled
    assert one.count(n) == GEN["steps"] and one.count(2 * n) == GEN["steps"] and set(one) == {n, 2 * n}
    assert set(two) == {n, 3 * n} and two.count(3 * n) == GEN["steps"]  # two sheets, concatenated
    assert sorted(set(cross)) == plain_cross  # cross-attention still reads the text only


def test_reference_changes_the_image_and_is_deterministic(sdxl):
    prompt_only = np.asarray(text_to_image.run(sdxl, family="sdxl", **GEN), dtype=np.int16)
    first = np.asarray(reference_attn.run(sdxl, references=[RED], **GEN), dtype=np.int16)
    again = np.asarray(reference_attn.run(sdxl, references=[RED], **GEN), dtype=np.int16)
    other = np.asarray(reference_attn.run(sdxl, references=[BLUE], **GEN), dtype=np.int16)
    assert first.shape == prompt_only.shape == (64, 64, 3)
    assert np.array_equal(first, again)
    assert np.abs(first - prompt_only).mean() > 0.1  # same seed, the reference made the difference
    assert not np.array_equal(first, other)  # and which reference matters
    adain = np.asarray(reference_attn.run(sdxl, references=[RED], adain=True, **GEN), dtype=np.int16)
    assert not np.array_equal(adain, first)
    assert all(not h for h in (m._forward_hooks for m in sdxl.unet.modules()))  # AdaIN hooks removed


def test_cancel_mid_run_stops_and_restores(sdxl):
    before = dict(sdxl.unet.attn_processors)
    steps: list[int] = []

    def on_step(step: int, total: int) -> None:
        steps.append(step)
        if step == 2:
            raise JobCanceled("job was canceled")

    with pytest.raises(JobCanceled):
        reference_attn.run(sdxl, references=[RED], on_step=on_step, **{**GEN, "steps": 5})
    assert steps == [1, 2]
    assert all(sdxl.unet.attn_processors[n] is before[n] for n in before)
    assert not sdxl.unet._forward_pre_hooks


def _processor_call(sdxl, state: ReferenceState, hidden: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    attn = sdxl.unet.get_submodule(ATTN1)
    plain = attn.processor
    proc = ReferenceAttnProcessor(state, ATTN1 + ".processor", plain, active=True)
    state.bank[proc.name] = bank
    state.mode = "read"
    with torch.no_grad():
        return proc(attn, hidden)


@pytest.mark.parametrize("style_fidelity", [0.0, 1.0])
def test_box_limited_reference_and_style_fidelity(sdxl, style_fidelity):
    attn = sdxl.unet.get_submodule(ATTN1)
    channels = attn.to_q.in_features
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 16, channels, generator=gen)  # batch [uncond, cond], a 4x4 grid
    bank = torch.randn(2, 16, channels, generator=gen)  # one reference, written for both halves
    left_box = Box(bbox=(0.0, 0.0, 0.5, 1.0), role="character")  # the left half of the grid
    state = ReferenceState(references=[RED], regions=[left_box], cfg=True, style_fidelity=style_fidelity, seed=0)
    state.latents = torch.zeros(1, 4, 4, 4)  # a 4x4 latent grid, as the write pass would have encoded
    with torch.no_grad():
        plain = attn.processor(attn, hidden)
    out = _processor_call(sdxl, state, hidden, bank)
    grid = torch.arange(16).view(4, 4)
    left, right = grid[:, :2].flatten(), grid[:, 2:].flatten()
    assert torch.allclose(out[:, right], plain[:, right], atol=1e-5)  # outside the box: self-attention only
    assert not torch.allclose(out[1, left], plain[1, left], atol=1e-3)  # the cond half reads the reference
    if style_fidelity == 1.0:
        assert torch.allclose(out[0], plain[0], atol=1e-5)  # the uncond half never sees it
    else:
        assert not torch.allclose(out[0, left], plain[0, left], atol=1e-3)  # both halves read it


def test_bad_arguments_are_named(sdxl):
    with pytest.raises(StageError, match="references"):
        reference_attn.check_inputs(sdxl, references=[])
    with pytest.raises(StageError, match="regions"):
        reference_attn.check_inputs(sdxl, references=[RED, BLUE], regions=[(0, 0, 1, 1)])
    with pytest.raises(StageError, match=r"regions\[0\]"):
        reference_attn.check_inputs(sdxl, references=[RED], regions=[(0.5, 0, 0.2, 1)])
    with pytest.raises(StageError, match="style_fidelity"):
        reference_attn.check_inputs(sdxl, references=[RED], style_fidelity=1.5)
    with pytest.raises(StageError, match="pipe"):
        reference_attn.check_inputs(object(), references=[RED])


def test_fit_reference_keeps_the_whole_sheet_undistorted():
    tall = Image.new("RGB", (50, 100), (240, 240, 240))
    tall.paste((10, 200, 10), (0, 50, 50, 100))  # the lower half green, edge to edge
    px = np.asarray(reference_attn.fit_reference(tall, 128, 64))
    assert px.shape == (64, 128, 3)
    green = np.nonzero((px[:, :, 1] > 150) & (px[:, :, 0] < 60))
    assert green[0].min() >= 30 and green[0].max() == 63  # the whole height is used: scale 0.64
    assert 46 <= green[1].min() and green[1].max() <= 81  # 32 px wide, centred: aspect kept
    assert tuple(px[10, 5]) == (240, 240, 240)  # the letterbox is the sheet's own backdrop colour
