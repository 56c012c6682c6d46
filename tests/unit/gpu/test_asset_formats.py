"""Formats ad platforms take: the watermark stage delivers PNG, JPEG or WebP under the placement's byte cap, with
the mark read back from the delivered bytes and the C2PA manifest inside the file."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from atelier_contracts.errors import StageError
from atelier_contracts.keys import job_prefix
from atelier_contracts.specs import CampaignSpec
from atelier_contracts.tasks import StageTask
from atelier_gpu import watermark
from atelier_gpu.stages import watermark as watermark_stage
from atelier_provenance import manifests
from atelier_provenance.watermark import procedural
from atelier_runtime.images import png_bytes
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext, WorkerResources
from PIL import Image
from pydantic import ValidationError

TENANT = "tenant-formats"
BASE = {"brand": {"name": "B"}, "product": {"name": "P", "description": "d"}, "taglines": ["t"]}


class _App:
    def send_task(self, *args: Any, **kwargs: Any) -> None:
        return None


def _run(tmp_path: Path, size: tuple[int, int], formats: dict[str, Any]) -> tuple[StageContext, dict[str, Any]]:
    res = WorkerResources(Settings(home=tmp_path))
    job = uuid.uuid4().hex[:12]
    w, h = size
    key = f"{job_prefix(TENANT, job)}/render.ad/{w}x{h}-v0.png"
    res.store.put(key, png_bytes(procedural(max(size), 3).crop((0, 0, w, h))), "image/png")
    spec = CampaignSpec.model_validate({**BASE, "sizes": [f"{w}x{h}"], "formats": formats}).model_dump(mode="json")
    task = StageTask(job_id=job, tenant_id=TENANT, stage_id=f"{job}:wm", stage="gpu.watermark", item=f"{w}x{h}-v0",
                     kind="campaign", spec=spec, upstream={"render.ad": {"render_key": key, "width": w, "height": h}},
                     key_prefix=job_prefix(TENANT, job))
    ctx = StageContext(task, res, _App())  # type: ignore[arg-type]
    return ctx, watermark_stage.watermark_asset.stage_fn(ctx)


@pytest.mark.parametrize(("fmt", "ext"), [("jpeg", "jpg"), ("webp", "webp")])
def test_a_lossy_iab_asset_fits_its_cap_carries_the_mark_and_its_manifest(tmp_path: Path, fmt: str, ext: str) -> None:
    ctx, out = _run(tmp_path, (300, 250), {"iab-medium-rectangle": {"format": fmt}})
    data = ctx.get(out["asset_key"])
    assert out["asset_key"].endswith(f".{ext}")
    assert len(data) <= 150_000 and out["watermark"]["file"]["max_bytes"] == 150_000
    assert out["watermark"]["file"]["bytes"] == len(data) and out["watermark"]["file"]["format"] == fmt
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == fmt.upper() and im.size == (300, 250)
        assert watermark.detect(im).payload == watermark.payload_for(TENANT, ctx.task.job_id)  # from the file itself
    report = manifests.read_manifest(data, f"image/{fmt}", anchors=manifests.trust_anchors(ctx.settings))
    assert report.state == "trusted" and report.generation["watermark"]["carried"] is True


def test_a_tight_cap_lowers_the_quality_until_the_signed_file_fits(tmp_path: Path) -> None:
    _, loose = _run(tmp_path / "a", (1080, 1080), {"default": {"format": "jpeg", "max_bytes": 5_000_000}})
    ctx, tight = _run(tmp_path / "b", (1080, 1080), {"default": {"format": "jpeg", "max_bytes": 120_000}})
    assert loose["watermark"]["file"]["quality"] == watermark_stage.LOSSY_QUALITIES[0]
    assert tight["watermark"]["file"]["quality"] < loose["watermark"]["file"]["quality"]
    assert tight["watermark"]["file"]["bytes"] <= 120_000 < loose["watermark"]["file"]["bytes"]
    assert tight["watermark"]["carried"] is True


def test_a_cap_nothing_fits_fails_the_item_naming_spec_formats(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="does not fit its cap of 10000 bytes") as err:
        _run(tmp_path / "a", (1600, 900), {"default": {"format": "webp", "max_bytes": 10_000}})
    assert err.value.retryable is False and err.value.field == "spec.formats"
    with pytest.raises(StageError, match="deliver it as jpeg or webp"):
        _run(tmp_path / "b", (1600, 900), {"default": {"format": "png", "max_bytes": 10_000}})


def test_png_stays_the_default_with_no_cap(tmp_path: Path) -> None:
    ctx, out = _run(tmp_path, (728, 90), {})
    assert out["asset_key"].endswith(".png") and out["watermark"]["file"] == {
        "format": "png", "quality": None, "bytes": len(ctx.get(out["asset_key"])), "max_bytes": None, "tries": 1}


def test_formats_name_only_the_jobs_sizes() -> None:
    spec = CampaignSpec.model_validate({**BASE, "sizes": ["iab-leaderboard", "1080x1080"],
                                        "formats": {"leaderboard": {"format": "webp"}, "default": {"format": "jpeg"}}})
    assert spec.format_for("728x90") == ("webp", 150_000) and spec.format_for("1080x1080") == ("jpeg", None)
    with pytest.raises(ValidationError, match=r"formats\['300x250'\]: 300x250 is not one of sizes"):
        CampaignSpec.model_validate({**BASE, "sizes": ["1080x1080"], "formats": {"300x250": {"format": "jpeg"}}})
    with pytest.raises(ValidationError, match="gif"):
        CampaignSpec.model_validate({**BASE, "formats": {"default": {"format": "gif"}}})
