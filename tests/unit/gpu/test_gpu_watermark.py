"""DWT-DCT-SVD watermark with Reed-Solomon: round trips, JPEG 75, resizing, unmarked images."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from atelier_gpu import watermark as wm
from PIL import Image

PAYLOAD = wm.payload_for("tenant-a", "job-123")


def _noise(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return 10 * np.log10(255.0**2 / np.mean(diff**2))


@pytest.fixture(scope="module")
def marked_512() -> tuple[Image.Image, Image.Image]:
    original = _noise(512, seed=1)
    return original, wm.embed(original, PAYLOAD)


def test_payload_is_tenant_and_job_hashes():
    assert PAYLOAD == hashlib.sha256(b"tenant-a").digest()[:2] + hashlib.sha256(b"job-123").digest()[:4]
    assert len(PAYLOAD) == 6
    assert wm.payload_for("tenant-a", "job-124") != PAYLOAD
    assert len(wm.codeword(PAYLOAD)) * 8 == wm.CODEWORD_BITS == 96


def test_round_trip_1080_and_jpeg_75():
    original = _noise(1080, seed=2)
    marked = wm.embed(original, PAYLOAD)
    assert marked.size == (1080, 1080) and marked.mode == "RGB"
    assert _psnr(original, marked) > 36  # invisible: ~39 dB
    found = wm.detect(marked)
    assert found.payload == PAYLOAD and found.bit_accuracy(PAYLOAD) == 1.0 and not found.corrected
    after_jpeg = wm.detect(_jpeg(marked, 75))
    assert after_jpeg.payload == PAYLOAD
    assert after_jpeg.bit_accuracy(PAYLOAD) > 0.95


def test_round_trip_512_and_jpeg_75(marked_512):
    original, marked = marked_512
    assert _psnr(original, marked) > 36
    assert wm.detect(marked).matches(PAYLOAD)
    assert wm.detect(_jpeg(marked, 75)).payload == PAYLOAD


def test_detect_resizes_to_the_expected_size(marked_512):
    _, marked = marked_512
    small = marked.resize((384, 384), Image.Resampling.BICUBIC)
    assert wm.detect(small, expected_size=(512, 512)).payload == PAYLOAD
    assert wm.detect(small).payload != PAYLOAD  # without resizing back the grid no longer lines up


def test_unmarked_images_do_not_read_as_this_payload(marked_512):
    original, _ = marked_512
    for image in (original, _noise(640, seed=5), Image.new("RGB", (512, 512), (128, 128, 128)),
                  Image.new("RGB", (512, 512), (0, 0, 0))):
        found = wm.detect(image)
        assert found.payload is None or found.payload != PAYLOAD
        assert found.bit_accuracy(PAYLOAD) < 0.8


def test_another_payload_reads_as_itself_not_as_ours(marked_512):
    original, _ = marked_512
    other = wm.payload_for("tenant-b", "job-123")
    found = wm.detect(wm.embed(original, other))
    assert found.payload == other
    assert not found.matches(PAYLOAD)


def test_survives_local_damage(marked_512):
    _, marked = marked_512
    # paint over the left third: those blocks vote at random, the rest of the image still carries the bits
    arr = np.array(marked)
    arr[:, :170] = np.random.default_rng(9).integers(0, 256, arr[:, :170].shape, dtype=np.uint8)
    assert wm.detect(Image.fromarray(arr)).payload == PAYLOAD


@pytest.mark.parametrize("bad_bytes,recovered", [(3, True), (4, False)])
def test_reed_solomon_fixes_up_to_three_bytes(monkeypatch, marked_512, bad_bytes, recovered):
    original, _ = marked_512
    good = wm.codeword(PAYLOAD)
    damaged = bytes(b ^ 0xA5 if i in (0, 4, 8, 11)[:bad_bytes] else b for i, b in enumerate(good))
    monkeypatch.setattr(wm, "codeword", lambda payload: damaged)  # embed the damaged codeword
    image = wm.embed(original, PAYLOAD)
    monkeypatch.undo()
    found = wm.detect(image)
    assert found.bit_accuracy(PAYLOAD) < 1.0
    if recovered:
        assert found.payload == PAYLOAD and found.corrected and found.errors == 3
    else:
        assert found.payload != PAYLOAD


def test_small_images_and_bad_payloads_are_refused():
    with pytest.raises(wm.WatermarkError, match="256x256"):
        wm.embed(_noise(128), PAYLOAD)
    with pytest.raises(wm.WatermarkError, match="6 bytes"):
        wm.embed(_noise(512), b"\x01\x02")
    assert wm.detect(_noise(128)).payload is None
