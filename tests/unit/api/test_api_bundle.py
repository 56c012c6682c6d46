"""GET /v1/jobs/{id}/bundle: a streamed zip of the assets with manifest.json and manifest.csv."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from typing import Any

from api_testkit import TenantCtx, campaign_spec, png_bytes, set_job, story_spec
from atelier_control.db import session_scope
from atelier_control.models import Artifact, new_id
from fastapi.testclient import TestClient

GATES = [{"name": "ocr.headline", "score": 0.0, "passed": True, "detail": "cer 0.000"},
         {"name": "contrast.headline", "score": 7.1, "passed": True, "detail": "7.1:1"},
         {"name": "safe_zone", "score": 1.0, "passed": True, "detail": "inside"}]


def _art(factory: Any, store: Any, t: TenantCtx, job_id: str, *, kind: str, stage: str, name: str, data: bytes,
         ext: str = "png", meta: dict[str, Any] | None = None, content_type: str = "image/png") -> str:
    key = f"tenants/{t.id}/jobs/{job_id}/{stage}/{name}.{ext}"
    stored = store.put(key, data, content_type)
    with session_scope(factory) as s:
        a = Artifact(id=new_id("art"), tenant_id=t.id, job_id=job_id, kind=kind, name=name, key=key,
                     content_type=content_type, size_bytes=stored.size_bytes, sha256=stored.sha256, width=64,
                     height=48, meta=meta or {})
        s.add(a)
        return a.id


def _submit(client: TestClient, t: TenantCtx, kind: str = "campaign", **spec: Any) -> str:
    body = campaign_spec(**spec) if kind == "campaign" else story_spec(**spec)
    r = client.post("/v1/jobs", json={"kind": kind, "spec": body}, headers=t.headers)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_campaign_bundle_lists_every_asset_with_its_checksum(client: TestClient, tenant: TenantCtx,
                                                            other_tenant: TenantCtx, factory: Any, store: Any) -> None:
    job_id = _submit(client, tenant, sizes=["1080x1080", "1200x628"], variants=2, taglines=["Go faster", "Arrive first"])
    items = [f"{s}-v{v}" for s in ("1080x1080", "1200x628") for v in (0, 1)]
    for n, item in enumerate(items):
        _art(factory, store, tenant, job_id, kind="render", stage="render.ad", name=item, data=png_bytes(color=(n, 0, 0)),
             meta={"gates": GATES if n else [*GATES[:2], {**GATES[2], "passed": False, "score": 0.9}],
                   "taglines": ["Go faster", "Arrive first"], "cta": None})
        _art(factory, store, tenant, job_id, kind="asset", stage="gpu.watermark", name=item,
             data=png_bytes(color=(n, 9, 9)), meta={"watermark": {"method": "dwtDctSvd", "readback_ok": True},
                                                    "c2pa": {"state": "trusted"}})
    assert client.get(f"/v1/jobs/{job_id}/bundle", headers=tenant.headers).status_code == 409  # still queued
    set_job(factory, job_id, status="succeeded")
    assert client.get(f"/v1/jobs/{job_id}/bundle", headers=other_tenant.headers).status_code == 404
    r = client.get(f"/v1/jobs/{job_id}/bundle", headers=tenant.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"].startswith('attachment; filename="atelier_acme_')
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert zf.testzip() is None
    names = zf.namelist()
    assert names == ["1080x1080/ad_1080x1080_v0.png", "1080x1080/ad_1080x1080_v1.png", "1200x628/ad_1200x628_v0.png",
                     "1200x628/ad_1200x628_v1.png", "manifest.json", "manifest.csv"]
    manifest = json.loads(zf.read("manifest.json"))
    assert manifest["job_id"] == job_id and manifest["count"] == 4 and manifest["brand"] == "Acme"
    for row in manifest["files"]:
        assert hashlib.sha256(zf.read(row["file"])).hexdigest() == row["sha256"]
        assert row["bytes"] == len(zf.read(row["file"])) and row["c2pa"] == "trusted"
        assert row["taglines"] == ["Go faster", "Arrive first"] and row["watermark"]["readback_ok"] is True
    first = manifest["files"][0]
    assert (first["size"], first["variant"], first["kind"]) == ("1080x1080", 0, "ad")
    assert first["gates_passed"] is False and manifest["files"][1]["gates_passed"] is True
    assert [g["name"] for g in first["gates"]] == ["ocr.headline", "contrast.headline", "safe_zone"]
    rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
    assert [r["file"] for r in rows] == names[:4]
    assert rows[0]["size"] == "1080x1080" and rows[0]["variant"] == "0" and rows[0]["taglines"] == "Go faster | Arrive first"
    assert rows[0]["sha256"] == first["sha256"] and rows[0]["c2pa_state"] == "trusted"
    assert "safe_zone=0.9:FAIL" in rows[0]["gates"] and rows[0]["gates_passed"] == "false"
    # each file's row says where to fetch it again without a key: a signed, expiring URL of the same bytes
    assert first["url"].startswith("/v1/assets/") and first["url_expires_at"].endswith("Z")
    again = client.get(first["url"])
    assert again.status_code == 200 and hashlib.sha256(again.content).hexdigest() == first["sha256"]


def test_story_bundle_has_pages_and_the_storybook(client: TestClient, tenant: TenantCtx, factory: Any,
                                                  store: Any) -> None:
    job_id = _submit(client, tenant, kind="story", pages=2)
    for i in range(2):
        _art(factory, store, tenant, job_id, kind="asset", stage="gpu.watermark", name=f"s{i}", data=png_bytes())
    _art(factory, store, tenant, job_id, kind="document", stage="deliver", name="storybook", data=b"%PDF-1.7 x",
         ext="pdf", content_type="application/pdf", meta={"c2pa": {"state": "untrusted"}})
    _art(factory, store, tenant, job_id, kind="document", stage="deliver", name="storybook", data=b"<html></html>",
         ext="html", content_type="text/html")
    set_job(factory, job_id, status="succeeded")
    zf = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{job_id}/bundle", headers=tenant.headers).content))
    assert zf.namelist() == ["pages/page_01.png", "pages/page_02.png", "storybook.pdf", "storybook.html",
                             "manifest.json", "manifest.csv"]
    files = {f["file"]: f for f in json.loads(zf.read("manifest.json"))["files"]}
    assert files["pages/page_02.png"]["page"] == 2 and files["storybook.pdf"]["c2pa"] == "untrusted"
    assert files["pages/page_01.png"]["c2pa"] == "unsigned"
    assert zf.read("storybook.pdf") == b"%PDF-1.7 x"


def test_a_changed_object_is_flagged_not_hidden(client: TestClient, tenant: TenantCtx, factory: Any,
                                                store: Any) -> None:
    job_id = _submit(client, tenant, sizes=["1080x1080"], variants=1)
    _art(factory, store, tenant, job_id, kind="asset", stage="gpu.watermark", name="1080x1080-v0", data=png_bytes())
    store.put(f"tenants/{tenant.id}/jobs/{job_id}/gpu.watermark/1080x1080-v0.png", b"tampered", "image/png")
    set_job(factory, job_id, status="succeeded")
    zf = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{job_id}/bundle", headers=tenant.headers).content))
    row = json.loads(zf.read("manifest.json"))["files"][0]
    assert row["sha256"] == hashlib.sha256(b"tampered").hexdigest() and row["stored_sha256"] != row["sha256"]
