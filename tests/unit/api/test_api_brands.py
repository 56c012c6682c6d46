"""/v1/brands: brand kits, their fonts, and their use at job submission (brand_id, banned words)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from api_testkit import TenantCtx, campaign_spec, png_bytes
from atelier_control.models import Job
from fastapi.testclient import TestClient

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf")


def _brand(client: TestClient, t: TenantCtx, **over: Any) -> dict[str, Any]:
    body = {"name": "Lumen", "palette": ["#3b2416", "#F5E6D3"], "tone": "warm, confident",
            "banned_words": ["cheap", "best ever"], **over}
    r = client.post("/v1/brands", json=body, headers=t.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_crud_is_tenant_scoped(client: TestClient, tenant: TenantCtx, other_tenant: TenantCtx) -> None:
    b = _brand(client, tenant)
    assert b["palette"] == ["#3B2416", "#F5E6D3"] and b["banned_words"] == ["cheap", "best ever"]
    assert client.get(f"/v1/brands/{b['id']}", headers=tenant.headers).json()["tone"] == "warm, confident"
    assert client.get(f"/v1/brands/{b['id']}", headers=other_tenant.headers).status_code == 404
    assert client.get("/v1/brands", headers=other_tenant.headers).json()["items"] == []
    r = client.patch(f"/v1/brands/{b['id']}", json={"palette": ["#000000"], "tone": None}, headers=tenant.headers)
    assert r.status_code == 200 and r.json()["palette"] == ["#000000"] and r.json()["tone"] is None
    assert client.post("/v1/brands", json={"name": "Lumen", "palette": ["#FFFFFF"]}, headers=tenant.headers).status_code == 409
    assert client.delete(f"/v1/brands/{b['id']}", headers=other_tenant.headers).status_code == 404
    assert client.delete(f"/v1/brands/{b['id']}", headers=tenant.headers).status_code == 204
    assert client.get(f"/v1/brands/{b['id']}", headers=tenant.headers).status_code == 404


def test_bad_palette_and_foreign_logo_name_the_field(client: TestClient, tenant: TenantCtx,
                                                     other_tenant: TenantCtx) -> None:
    r = client.post("/v1/brands", json={"name": "X", "palette": ["red"]}, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "palette.0"
    up = client.post("/v1/uploads", files={"file": ("l.png", png_bytes(), "image/png")}, headers=other_tenant.headers)
    r = client.post("/v1/brands", json={"name": "X", "palette": ["#FFFFFF"], "logo": up.json()["id"]},
                    headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "logo"


def test_font_upload_is_checked_and_stored(client: TestClient, tenant: TenantCtx, store: Any) -> None:
    if not DEJAVU.is_file():
        pytest.skip("fonts-dejavu-core is not installed")
    b = _brand(client, tenant)
    bad = client.post(f"/v1/brands/{b['id']}/font", files={"file": ("x.ttf", b"hello world", "font/ttf")},
                      headers=tenant.headers)
    assert bad.status_code == 415 and bad.json()["errors"][0]["field"] == "file"
    r = client.post(f"/v1/brands/{b['id']}/font", files={"file": ("serif.ttf", DEJAVU.read_bytes(), "font/ttf")},
                    headers=tenant.headers)
    assert r.status_code == 200, r.text
    kit = r.json()
    assert kit["font_family"] == "DejaVuSerif" and kit["font_artifact_id"].startswith("art_")
    assert store.get(f"tenants/{tenant.id}/fonts/{kit['font_artifact_id']}.font") == DEJAVU.read_bytes()


def test_job_with_brand_id_gets_the_kit_resolved(client: TestClient, tenant: TenantCtx, factory: Any) -> None:
    up = client.post("/v1/uploads", files={"file": ("l.png", png_bytes(), "image/png")}, headers=tenant.headers)
    b = _brand(client, tenant, logo=up.json()["id"], font_family="NotoSerif")
    spec = campaign_spec(brand_id=b["id"])
    del spec["brand"]
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": spec}, headers=tenant.headers)
    assert r.status_code == 202, r.text
    brand = {k: v for k, v in r.json()["spec"]["brand"].items() if v is not None}
    assert brand == {"name": "Lumen", "palette": ["#3B2416", "#F5E6D3"], "font": "NotoSerif", "logo": up.json()["id"],
                     "tone": "warm, confident"}
    # the job keeps what it was given: a later kit edit does not change it
    client.patch(f"/v1/brands/{b['id']}", json={"palette": ["#000000"]}, headers=tenant.headers)
    with factory() as s:
        assert s.get(Job, r.json()["id"]).spec["brand"]["palette"] == ["#3B2416", "#F5E6D3"]
    # fields the spec sets itself win over the kit's
    spec2 = campaign_spec(brand_id=b["id"], brand={"name": "Lumen Summer"})
    r2 = client.post("/v1/jobs", json={"kind": "campaign", "spec": spec2, "external_id": "crm-1",
                                       "metadata": {"team": "growth"}}, headers=tenant.headers)
    assert r2.status_code == 202 and r2.json()["spec"]["brand"]["name"] == "Lumen Summer"
    assert r2.json()["spec"]["brand"]["palette"] == ["#000000"]
    # the kit fills the brand; the job's own reference and labels stay
    assert r2.json()["external_id"] == "crm-1" and r2.json()["metadata"] == {"team": "growth"}


def test_banned_word_in_a_tagline_is_a_422_naming_the_field(client: TestClient, tenant: TenantCtx,
                                                              factory: Any) -> None:
    b = _brand(client, tenant)
    spec = campaign_spec(brand_id=b["id"], taglines=["Fresh every morning", "The BEST   ever coffee"], cta="Cheap!")
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": spec}, headers=tenant.headers)
    assert r.status_code == 422
    fields = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert set(fields) == {"spec.taglines.1", "spec.cta"}
    assert "'best ever'" in fields["spec.taglines.1"] and "'cheap'" in fields["spec.cta"]
    # a word that merely contains a banned one is fine ("cheapest" is not "cheap")
    ok = client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec(brand_id=b["id"],
                                                                               taglines=["Cheapest? No. Finest."])},
                     headers=tenant.headers)
    assert ok.status_code == 202, ok.text
    with factory() as s:
        assert s.query(Job).count() == 1  # the refused job wrote nothing


def test_unknown_brand_id_and_foreign_font_name_the_field(client: TestClient, tenant: TenantCtx,
                                                          other_tenant: TenantCtx) -> None:
    b = _brand(client, other_tenant)
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec(brand_id=b["id"])},
                    headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "spec.brand_id"
    spec = campaign_spec(brand={"name": "A", "font_artifact": "art_nope"})
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": spec}, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "spec.brand.font_artifact"
