"""DWT-DCT-SVD + Reed-Solomon watermark: round trips, the robustness thresholds it must meet, false positives."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from atelier_gpu import watermark as gwm
from atelier_provenance import watermark as wm
from PIL import Image, ImageEnhance

PAYLOAD = wm.payload_for("tenant-a", "job-123")
procedural = wm.procedural


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean(diff**2)))


@pytest.fixture(scope="module")
def marked() -> list[tuple[Image.Image, Image.Image]]:
    """20 test-sized (256 px) images and their marked copies."""
    return [(im, wm.embed(im, PAYLOAD)) for im in (procedural(256, s) for s in range(20))]


def test_payload_codeword_and_binomial_thresholds():
    assert PAYLOAD == hashlib.sha256(b"tenant-a").digest()[:2] + hashlib.sha256(b"job-123").digest()[:4]
    assert len(wm.codeword(PAYLOAD)) * 8 == wm.CODEWORD_BITS == 96
    # METHODS: 48 bits -> 33 (1%) / 36 (0.1%); 100 bits -> 63 / 66; ours, 96 bits -> 61 / 64
    assert (wm.binomial_threshold(48, 0.01), wm.binomial_threshold(48, 0.001)) == (33, 36)
    assert (wm.binomial_threshold(100, 0.01), wm.binomial_threshold(100, 0.001)) == (63, 66)
    assert wm.binomial_tail(96, wm.binomial_threshold(96, 0.001)) <= 0.001 < wm.binomial_tail(96, 63)
    assert gwm.embed is wm.embed and gwm.detect is wm.detect  # the GPU module re-exports the torch-free codec


def test_clean_and_jpeg75_bit_accuracy_and_invisibility(marked):
    clean = [wm.detect(m, expected=PAYLOAD).bit_accuracy for _, m in marked]
    after = [wm.detect(jpeg(m, 75), expected=PAYLOAD).bit_accuracy for _, m in marked]
    assert np.mean(clean) >= 0.99
    assert np.mean(after) >= 0.9
    assert min(psnr(o, m) for o, m in marked) > 38


def test_tpr_at_0_1pct_fpr_for_jpeg75_and_half_size(marked):
    size = marked[0][1].size
    jpeg_hits = [wm.detect(jpeg(m, 75), expected=PAYLOAD, fpr=1e-3).detected for _, m in marked]
    half = [wm.detect(m.resize((size[0] // 2, size[1] // 2), Image.Resampling.BICUBIC), expected_size=size,
                      expected=PAYLOAD, fpr=1e-3).detected for _, m in marked]
    assert np.mean(jpeg_hits) >= 0.95
    assert np.mean(half) >= 0.95
    # blind reads recover the payload itself (the job reference) from the same copies
    blind = wm.detect(jpeg(marked[0][1], 75))
    assert blind.detected and blind.payload == PAYLOAD and blind.job_ref == PAYLOAD[2:].hex()


def test_zero_false_positives_on_200_unmarked_images():
    hits_blind = hits_known = 0
    for seed in range(200):
        im = procedural(256, 1000 + seed) if seed % 2 else Image.fromarray(
            np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8))
        hits_blind += wm.detect(im, gains=(1.0,)).detected
        hits_known += wm.detect(im, expected=PAYLOAD, gains=(1.0,)).detected
    assert hits_blind == 0
    assert hits_known == 0


def test_geometry_and_gain_search(marked):
    _, m = marked[1]
    big = wm.embed(procedural(512, 77), PAYLOAD)
    crop = big.crop((51, 51, 461, 461))
    found = wm.detect(crop, expected_size=(512, 512))
    assert found.detected and found.payload == PAYLOAD and found.geometry.startswith("centre-crop")
    brighter = ImageEnhance.Brightness(big).enhance(1.3)
    assert not wm.detect(brighter, gains=(1.0,)).detected  # brightness moves every singular value off the lattice
    again = wm.detect(brighter, expected=PAYLOAD)
    assert again.detected and again.gain != 1.0
    assert again.hypotheses == len(wm.GAINS)  # the rate was shared among every gain tried


def test_unmarked_and_other_payload_are_not_ours(marked):
    original, _ = marked[2]
    other = wm.payload_for("tenant-b", "job-123")
    found = wm.detect(wm.embed(original, other))
    assert found.detected and found.payload == other
    assert not wm.detect(wm.embed(original, other), expected=PAYLOAD, gains=(1.0,)).detected
    for flat in (Image.new("RGB", (256, 256), (128, 128, 128)), Image.new("RGB", (256, 256), (0, 0, 0))):
        assert not wm.detect(flat, gains=(1.0,)).detected


def test_marks_read_back_with_the_invisible_watermark_library(marked):
    from imwatermark import WatermarkDecoder

    _, m = marked[3]
    bgr = np.ascontiguousarray(np.asarray(m)[:, :, ::-1])
    lib_bits = WatermarkDecoder("bits", wm.CODEWORD_BITS).decode(bgr, "dwtDctSvd", scales=[0, int(wm.SCALE), 0])
    want = np.unpackbits(np.frombuffer(wm.codeword(PAYLOAD), dtype=np.uint8))
    assert np.mean(np.array(lib_bits, dtype=np.uint8) == want) >= 0.95


@pytest.mark.parametrize("bad_bytes,recovered", [(3, True), (4, False)])
def test_reed_solomon_fixes_up_to_three_bytes(monkeypatch, marked, bad_bytes, recovered):
    original, _ = marked[4]
    good = wm.codeword(PAYLOAD)
    damaged = bytes(b ^ 0xA5 if i in (0, 4, 8, 11)[:bad_bytes] else b for i, b in enumerate(good))
    monkeypatch.setattr(wm, "codeword", lambda payload: damaged)
    image = wm.embed(original, PAYLOAD)
    monkeypatch.undo()
    found = wm.detect(image, gains=(1.0,))
    if recovered:
        assert found.payload == PAYLOAD and found.corrected_bytes == 3
    else:
        assert found.payload != PAYLOAD


def test_images_with_too_few_blocks_and_bad_payloads_are_refused():
    tiny = procedural(96, 0).crop((0, 0, 96, 64))  # 12 x 8 blocks: under two per codeword bit
    with pytest.raises(wm.WatermarkError, match="96 blocks .* needs at least 192"):
        wm.embed(tiny, PAYLOAD)
    with pytest.raises(wm.WatermarkError, match="6 bytes"):
        wm.embed(procedural(256, 0), b"\x01\x02")
    assert not wm.detect(tiny).detected


@pytest.mark.parametrize("size", [(320, 50), (728, 90), (300, 250), (160, 600), (234, 60)])
def test_small_and_extreme_placements_carry_the_mark_through_jpeg(size):
    """IAB units have fewer pixels than 256x256 but as many blocks per codeword bit (320x50: 2.5 votes a bit)."""
    w, h = size
    assert wm.capacity(w, h) >= wm.MIN_BLOCKS
    found = 0
    for seed in range(6):
        marked = wm.embed(procedural(max(size), seed).crop((0, 0, w, h)), PAYLOAD)
        buf = io.BytesIO()
        marked.save(buf, format="JPEG", quality=85)
        read = wm.detect(Image.open(io.BytesIO(buf.getvalue())), expected=PAYLOAD, fpr=1e-3)
        found += read.detected
    assert found == 6


def test_vine_backend_needs_its_weights(tmp_path):
    from atelier_runtime.settings import Settings

    with pytest.raises(wm.WatermarkError, match="VINE_DIR"):
        gwm.backend_from_settings(Settings(watermark_backend="vine"))
    with pytest.raises(wm.WatermarkError, match="encoder.pt"):
        gwm.VineBackend(tmp_path)
    assert gwm.backend_from_settings(Settings()).method == wm.METHOD


def test_vine_backend_round_trip_with_tiny_torchscript_networks(tmp_path):
    """A tiny stand-in encoder/decoder pair (100 orthogonal-ish patterns) exercises VineBackend's plumbing."""
    import torch

    class Enc(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.register_buffer("basis", torch.randn(100, 3, 256, 256, generator=g) * 0.02)

        def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return x + torch.einsum("bk,kchw->bchw", m * 2 - 1, self.basis)

    class Dec(torch.nn.Module):
        def __init__(self, basis: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("basis", basis)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bchw,kchw->bk", x - x.mean(dim=(2, 3), keepdim=True), self.basis)

    enc = Enc()
    torch.jit.save(torch.jit.script(enc), str(tmp_path / "encoder.pt"))
    torch.jit.save(torch.jit.script(Dec(enc.basis)), str(tmp_path / "decoder.pt"))
    vine = gwm.VineBackend(tmp_path)
    image = Image.new("RGB", (320, 320), (120, 130, 140))
    marked = vine.embed(image, PAYLOAD)
    assert marked.size == image.size
    found = vine.detect(marked)
    assert found.detected and found.payload == PAYLOAD and found.bits_read == 100
    assert not vine.detect(image, expected=PAYLOAD).detected
