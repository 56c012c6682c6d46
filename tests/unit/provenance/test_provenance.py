"""C2PA: development CA, signing, verification states, one changed pixel, PDFs, the watermark stage, verify."""

from __future__ import annotations

import io
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atelier_provenance import manifests as pv
from atelier_provenance import watermark as wm
from atelier_provenance.verify import verify_image
from atelier_runtime.settings import Settings
from PIL import Image

GEN = {"job_id": "job_1", "plan_id": "plan-9", "model": "sdxl-tiny", "seed": 7,
       "watermark": {"method": wm.METHOD, "payload_hex": "00" * 6, "width": 300, "height": 200}}


def png(size: tuple[int, int] = (300, 200), seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def change_one_pixel(data: bytes) -> bytes:
    """Flip one byte of one pixel inside a PNG, keeping every chunk CRC and the zlib stream valid."""
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        chunks.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    raw = bytearray(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")))
    raw[1 + 10] ^= 0x01  # row 0 (after its filter byte), pixel 3, green
    out, done = [data[:8]], False
    for kind, body in chunks:
        if kind == b"IDAT":
            if done:
                continue
            body, done = zlib.compress(bytes(raw)), True
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


def test_development_ca_is_made_once_under_home(settings):
    a = pv.load_credentials(settings)
    b = pv.load_credentials(settings)
    assert a is not None and a.source == "development CA" and a.chain_pem == b.chain_pem
    assert (settings.home / "c2pa" / "ca.pem").is_file() and pv.trust_anchors(settings) == a.anchors_pem
    assert oct((settings.home / "c2pa" / "signer-key.pem").stat().st_mode & 0o777) == "0o600"
    assert pv.load_credentials(Settings(home=settings.home / "elsewhere"), create=False) is None


def test_signed_image_is_trusted_and_says_what_made_it(settings):
    cred = pv.load_credentials(settings)
    product = png((40, 80), seed=3)
    signed = pv.sign_asset(png(), "image/png", credentials=cred, title="ad.png", generation=GEN,
                           ingredients=[pv.Ingredient("product photo", product)])
    report = pv.read_manifest(signed, "image/png", anchors=cred.anchors_pem)
    assert report.state == "trusted" and report.valid and report.failures == []
    assert report.digital_source_type == pv.TRAINED_ALGORITHMIC_MEDIA
    assert report.actions == ["c2pa.created", "c2pa.placed"] and report.ingredients == ["product photo"]
    d = report.as_dict()
    assert (d["job_id"], d["plan_id"], d["model"], d["seed"]) == ("job_1", "plan-9", "sdxl-tiny", 7)
    assert d["created_at"] and d["watermark"]["width"] == 300
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(signed))), np.asarray(Image.open(io.BytesIO(png()))))


def test_states_untrusted_absent_and_one_changed_pixel_invalid(settings):
    cred = pv.load_credentials(settings)
    signed = pv.sign_asset(png(), "image/png", credentials=cred, title="x.png", generation=GEN)
    assert pv.read_manifest(signed).state == "untrusted"  # valid signature, signer not anchored here
    assert pv.read_manifest(png()).state == "absent"
    tampered = change_one_pixel(signed)
    before, after = (np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in (signed, tampered))
    assert int((before != after).sum()) == 1  # one byte of one pixel, and the file still decodes
    report = pv.read_manifest(tampered, anchors=cred.anchors_pem)
    assert report.state == "invalid" and not report.valid
    assert any("dataHash.mismatch" in f for f in report.failures)


def test_pdf_signing(settings):
    cred = pv.load_credentials(settings)
    pdf = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj "
           b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 100 100]>>endobj\nxref\n0 4\n0000000000 65535 f \n"
           b"0000000009 00000 n \n0000000052 00000 n \n0000000101 00000 n \ntrailer<</Size 4/Root 1 0 R>>\n"
           b"startxref\n170\n%%EOF\n")
    signed = pv.sign_pdf(pdf, credentials=cred, title="book.pdf", generation={"job_id": "job_2"})
    report = pv.read_manifest(signed, "application/pdf", anchors=cred.anchors_pem)
    assert report.state == "trusted" and report.generation["job_id"] == "job_2"


def test_production_credentials_must_come_in_pairs(tmp_path):
    with pytest.raises(pv.ProvenanceError, match="both"):
        pv.load_credentials(Settings(home=tmp_path, c2pa_cert_path=tmp_path / "c.pem"))


# --- the watermark stage and verify ----------------------------------------------------------------

class AppStub:
    def send_task(self, *_: Any, **__: Any) -> None:
        pass


def _stage(settings: Settings, kind: str = "campaign") -> tuple[Any, Any]:
    from atelier_contracts.keys import job_prefix
    from atelier_contracts.tasks import StageTask
    from atelier_gpu.stages.watermark import watermark_asset as watermark_stage
    from atelier_runtime.stage_runner import StageContext, WorkerResources

    res = WorkerResources(settings)
    job, tenant = f"job_{uuid.uuid4().hex[:8]}", "ten_1"
    prefix = job_prefix(tenant, job)
    render = res.store.put(f"{prefix}/render.ad/1080x1080-v0.png", png((384, 320), seed=5), "image/png").key
    upload = res.store.put(f"tenants/{tenant}/uploads/art_p.png", png((40, 40), seed=6), "image/png").key
    assert upload
    task = StageTask(job_id=job, tenant_id=tenant, stage_id="s", stage="gpu.watermark", item="1080x1080-v0",
                     kind=kind, spec={"product": {"name": "Cold Brew", "image": "art_p"}}, key_prefix=prefix,
                     upstream={"render.ad": {"render_key": render}, "plan.ad_layout": {"plan": {"plan_id": "ad-1"}},
                               "gpu.background": {"seed": 42, "model": "sdxl-tiny"}})
    ctx = StageContext(task, res, AppStub())
    return ctx, watermark_stage.stage_fn(ctx)


def test_watermark_stage_marks_then_signs(settings):
    ctx, out = _stage(settings)
    data = ctx.get(out["asset_key"])
    report = pv.read_manifest(data, anchors=pv.trust_anchors(settings))
    assert report.state == "trusted" and out["c2pa"]["state"] == "trusted"
    g = report.generation
    assert (g["job_id"], g["plan_id"], g["model"], g["seed"]) == (ctx.task.job_id, "ad-1", "sdxl-tiny", 42)
    assert g["watermark"] == {"method": wm.METHOD, "payload_hex": wm.payload_for("ten_1", ctx.task.job_id).hex(),
                              "width": 384, "height": 320, "carried": True}
    assert report.ingredients == ["Cold Brew (product photo art_p)"]
    [art] = ctx.artifacts
    assert art.meta["c2pa"]["state"] == "trusted" and art.meta["watermark"]["readback_ok"] is True
    assert wm.detect(Image.open(io.BytesIO(data))).payload == wm.payload_for("ten_1", ctx.task.job_id)


def test_verify_reads_a_resized_jpeg_copy_and_the_signed_original(settings):
    ctx, out = _stage(settings)
    data = ctx.get(out["asset_key"])
    full = verify_image(data, settings=settings)
    assert full["watermark"]["detected"] and full["c2pa"]["state"] == "trusted"
    assert full["watermark_matches_manifest"] is True and full["verdict"].startswith("made by Atelier")
    assert full["watermark"]["job_ref"] == wm.job_ref(ctx.task.job_id).hex()
    assert full["job"] is None  # no tenant: the job is not looked up
    img = Image.open(io.BytesIO(data)).resize((192, 160))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    copy = verify_image(buf.getvalue(), settings=settings)
    assert copy["c2pa"]["state"] == "absent" and copy["watermark"]["detected"] is False  # size unknown, too small
    tampered = verify_image(change_one_pixel(data), settings=settings)
    assert tampered["c2pa"]["state"] == "invalid" and tampered["watermark"]["detected"]
