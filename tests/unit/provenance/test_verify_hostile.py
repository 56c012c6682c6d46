"""A manifest's claimed watermark size cannot choose how much work a verify costs.

Before: a 4.4 KB PNG signed by any CA and claiming 3000x3000 took ~10-17 s of CPU (the image was resized to the
claim and read under 21 chroma gains); 20000x20000 asked for ~10 GB; -300x-300 raised a ValueError (a 500).
"""

from __future__ import annotations

import io
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atelier_contracts.errors import InvalidInput
from atelier_provenance import manifests as pv
from atelier_provenance import watermark as wm
from atelier_provenance.verify import MAX_CLAIM_SCALE, verify_image
from atelier_runtime.settings import Settings
from PIL import Image

PAYLOAD = bytes.fromhex("a1b2c3d4e5f6")


def small_png() -> bytes:
    """~4.4 KB: 40x36 pixels of noise."""
    arr = np.random.default_rng(0).integers(0, 256, (36, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def sign(data: bytes, settings: Settings, width: Any, height: Any) -> bytes:
    return pv.sign_asset(data, "image/png", credentials=pv.load_credentials(settings), title="x.png",
                         generation={"job_id": "job_1", "model": "m", "seed": 1,
                                     "watermark": {"method": wm.METHOD, "payload_hex": PAYLOAD.hex(),
                                                   "width": width, "height": height}})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


@pytest.fixture
def stranger(tmp_path: Path) -> Settings:
    """Another development CA: its manifests verify but read as untrusted under ``settings``."""
    return Settings(home=tmp_path / "stranger")


def timed(data: bytes, settings: Settings, **kw: Any) -> tuple[dict[str, Any], float, int]:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.process_time()
    report = verify_image(data, settings=settings, **kw)
    cpu = time.process_time() - t0
    return report, cpu, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) * 1024  # ru_maxrss: KiB on Linux


def test_a_trusted_20000_square_claim_on_a_4kb_png_costs_well_under_a_second(settings):
    data = small_png()
    assert 3000 < len(data) < 6000
    signed = sign(data, settings, 20000, 20000)
    report, cpu, grew = timed(signed, settings)
    assert report["c2pa"]["state"] == "trusted"
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"
    assert grew < 200 * 2**20, f"peak memory grew {grew / 2**20:.0f} MB"  # the old read asked for ~10 GB
    claim = report["watermark"]["claimed_size"]
    assert claim["width"] == claim["height"] == 20000 and claim["used"] is False
    assert f"more than {MAX_CLAIM_SCALE}x the image's 40x36" in claim["reason"]
    assert report["watermark"]["detected"] is False and report["watermark"]["expected_size"] is None


def test_an_untrusted_claim_is_ignored_and_the_report_says_why(settings, stranger):
    signed = sign(small_png(), stranger, 20000, 20000)
    report, cpu, _ = timed(signed, settings)
    assert report["c2pa"]["state"] == "untrusted"
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"
    claim = report["watermark"]["claimed_size"]
    assert claim["used"] is False and "untrusted" in claim["reason"]


def test_an_untrusted_sane_claim_is_not_read_at_either(settings, stranger):
    # the same resized copy that a trusted claim lets us read (below) stays unread when the signer is a stranger
    signed = sign(resized_copy(), stranger, 512, 384)
    report = verify_image(signed, settings=settings)
    assert report["c2pa"]["state"] == "untrusted"
    assert report["watermark"]["detected"] is False and report["watermark"]["claimed_size"]["used"] is False


def resized_copy() -> bytes:
    rng = np.random.default_rng(1)
    base = Image.fromarray(np.clip(rng.normal(128, 40, (384, 512, 3)), 0, 255).astype(np.uint8))
    small = wm.embed(base, PAYLOAD).resize((256, 192), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return buf.getvalue()


def test_a_trusted_sane_claim_still_reads_a_resized_copy(settings):
    signed = sign(resized_copy(), settings, 512, 384)
    report = verify_image(signed, settings=settings)
    assert report["c2pa"]["state"] == "trusted"
    mark = report["watermark"]
    assert mark["detected"] and mark["payload_hex"] == PAYLOAD.hex() and mark["expected_size"] == [512, 384]
    assert mark["claimed_size"] == {"width": 512, "height": 384, "used": True, "reason": None}
    assert report["watermark_matches_manifest"] is True


@pytest.mark.parametrize("width,height,name", [(-300, -300, "width"), (0, 384, "width"), (512, -1, "height"),
                                               ("512", 384, "width"), (512, 384.5, "height"), (True, 384, "width")])
def test_a_trusted_claim_that_is_not_a_positive_whole_number_is_invalid_input(settings, width, height, name):
    signed = sign(small_png(), settings, width, height)
    t0 = time.process_time()
    with pytest.raises(InvalidInput) as err:
        verify_image(signed, settings=settings)
    assert time.process_time() - t0 < 1.0
    assert err.value.status == 422 and err.value.field == "file" and f"watermark.{name}" in err.value.detail


def test_an_untrusted_negative_claim_is_just_ignored(settings, stranger):
    report = verify_image(sign(small_png(), stranger, -300, -300), settings=settings)
    claim = report["watermark"]["claimed_size"]
    assert (claim["width"], claim["height"], claim["used"]) == (None, None, False)
    assert "untrusted" in claim["reason"] and report["c2pa"]["state"] == "untrusted"


def test_a_claim_over_the_pixel_cap_is_not_read_even_within_the_scale(settings):
    data = resized_copy()  # 256x192: 1024x768 is 4x a side, but over a 500k-pixel cap
    report = verify_image(sign(data, settings, 1024, 768), settings=settings, max_pixels=500_000)
    claim = report["watermark"]["claimed_size"]
    assert claim["used"] is False and "500000-pixel limit" in claim["reason"]


class Records:
    """A tenant whose delivered assets are huge next to the file sent: their sizes are held to the same bounds."""

    tenant_id = "ten_1"

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        self.sizes = sizes
        self.asked = 0

    def jobs(self) -> list[tuple[str, str]]:
        return [(f"job_{n}", "campaign") for n in range(50)]

    def asset_sizes(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        self.asked += 1
        return self.sizes

    def job(self, job_id: str) -> dict[str, Any] | None:
        return None


def test_tenant_asset_sizes_beyond_the_scale_are_not_read(settings):
    records = Records([(4000, 3600), (20000, 18000), (-5, 0)] + [(4000 + n, 3600) for n in range(100)])
    report, cpu, _ = timed(small_png(), settings, tenant=records)
    assert records.asked == 1 and report["c2pa"]["state"] == "absent"
    assert report["watermark"]["claimed_size"] is None
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"


def test_tenant_asset_sizes_within_the_scale_still_find_a_stripped_copy(settings):
    payload = wm.payload_for("ten_1", "job_7")
    rng = np.random.default_rng(2)
    base = Image.fromarray(np.clip(rng.normal(128, 40, (384, 512, 3)), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    wm.embed(base, payload).resize((256, 192), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=85)

    class Mine(Records):
        def jobs(self) -> list[tuple[str, str]]:
            return [("job_7", "story")]

    report = verify_image(buf.getvalue(), settings=settings, tenant=Mine([(4096, 3072), (512, 384)]))
    mark = report["watermark"]
    assert mark["detected"] and mark["expected_size"] == [512, 384] and mark["ownership"] == "yours"


def test_detect_does_not_read_far_beyond_the_image():
    img = Image.open(io.BytesIO(resized_copy()))
    t0 = time.process_time()
    det = wm.detect(img, expected_size=(20000, 20000))
    assert time.process_time() - t0 < 1.0
    assert not det.detected and det.hypotheses == 0 and "not read" in det.geometry
    with pytest.raises(wm.WatermarkError, match="positive"):
        wm.detect(img, expected_size=(-300, -300))
    # within the scale it still reads: the copy is half the size the mark was embedded at
    assert wm.detect(img, expected_size=(512, 384)).payload == PAYLOAD


def test_atelier_verify_command_answers_a_hostile_file_and_still_reads_a_good_one(settings, tmp_path, monkeypatch):
    from atelier.cli import app
    from typer.testing import CliRunner

    monkeypatch.setenv("ATELIER_HOME", str(settings.home))
    huge, bad, good = tmp_path / "huge.png", tmp_path / "bad.png", tmp_path / "good.png"
    huge.write_bytes(sign(small_png(), settings, 20000, 20000))
    bad.write_bytes(sign(small_png(), settings, -300, -300))
    good.write_bytes(sign(resized_copy(), settings, 512, 384))
    runner = CliRunner()
    t0 = time.process_time()
    out = runner.invoke(app, ["verify", str(huge), "--json"])
    assert time.process_time() - t0 < 1.0
    assert out.exit_code == 1, out.output  # no watermark found
    assert '"used": false' in out.output and "more than 4x" in out.output
    out = runner.invoke(app, ["verify", str(bad)])
    assert out.exit_code == 2 and "watermark.width" in out.output
    out = runner.invoke(app, ["verify", str(good)])
    assert out.exit_code == 0, out.output
    assert "made by Atelier" in out.output


def test_one_verify_tries_a_bounded_set_of_sizes_whatever_the_tenant_returns(settings, monkeypatch):
    seen: list[Any] = []
    real = wm.detect

    def counting(image: Image.Image, **kw: Any) -> wm.Detection:
        seen.append(kw.get("expected_size"))
        return real(image, **kw)

    monkeypatch.setattr(wm, "detect", counting)
    # 300 sizes of the right shape, all within 4x of the 40x36 file, and a huge one first
    records = Records([(40000, 36000)] + [(40 + n, 36 + n * 36 // 40) for n in range(1, 301)])
    t0 = time.process_time()
    verify_image(small_png(), settings=settings, tenant=records)
    assert time.process_time() - t0 < 1.0
    sizes = set(seen)
    assert None in sizes and len(sizes) == 1 + 4  # as is, then the first four sizes within bounds
    assert all(s[0] <= 4 * 40 and s[1] <= 4 * 36 for s in sizes if s is not None)
    assert len(seen) <= 2 * len(sizes)  # one blind pass and one pass over the tenant's jobs
