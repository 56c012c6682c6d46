"""Brand fonts at submission: the artifact id is the identity and must be the tenant's own font.

``spec.brand.font`` is a label the renderer never maps to an upload (see atelier_renderer.brand), so a kit font
named like an installed family is accepted; what is refused is naming a font artifact that is not this
tenant's font — another tenant's upload, or an image upload passed off as a font.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from api_testkit import TenantCtx, campaign_spec, png_bytes
from atelier_control.models import Job
from fastapi.testclient import TestClient

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf")


def _kit_with_font(client: TestClient, t: TenantCtx) -> dict[str, Any]:
    r = client.post("/v1/brands", json={"name": "Lumen", "palette": ["#3B2416", "#F5E6D3"]}, headers=t.headers)
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/brands/{r.json()['id']}/font", files={"file": ("brand.ttf", FONT.read_bytes(), "font/ttf")},
                    headers=t.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.fixture(autouse=True)
def _needs_font() -> None:
    if not FONT.is_file():
        pytest.skip("fonts-dejavu-core is not installed")


def test_own_upload_under_an_installed_family_name_is_accepted(client: TestClient, tenant: TenantCtx,
                                                              factory: Any) -> None:
    kit = _kit_with_font(client, tenant)
    spec = campaign_spec(brand={"name": "A", "palette": ["#112233"], "font": "NotoSans",
                                "font_artifact": kit["font_artifact_id"]})
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": spec}, headers=tenant.headers)
    assert r.status_code == 202, r.text
    with factory() as s:
        brand = s.get(Job, r.json()["id"]).spec["brand"]
    # the job carries the artifact id: the renderer fetches exactly that file under this tenant
    assert brand["font_artifact"] == kit["font_artifact_id"] and brand["font"] == "NotoSans"
    # and through the kit: its family name comes from the font file itself
    by_kit = campaign_spec(brand_id=kit["id"])
    del by_kit["brand"]
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": by_kit}, headers=tenant.headers)
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["brand"]["font_artifact"] == kit["font_artifact_id"]
    assert r.json()["spec"]["brand"]["font"] == "DejaVuSerif"


def test_another_tenants_font_is_a_422_and_writes_nothing(client: TestClient, tenant: TenantCtx,
                                                          other_tenant: TenantCtx, factory: Any) -> None:
    kit_a = _kit_with_font(client, tenant)
    spec = campaign_spec(brand={"name": "B", "palette": ["#112233"], "font": "NotoSans",
                                "font_artifact": kit_a["font_artifact_id"]})
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": spec}, headers=other_tenant.headers)
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["spec.brand.font_artifact"]
    # an image upload of B's own is not a font either
    up = client.post("/v1/uploads", files={"file": ("l.png", png_bytes(), "image/png")}, headers=other_tenant.headers)
    spec["brand"]["font_artifact"] = up.json()["id"]
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": spec}, headers=other_tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "spec.brand.font_artifact"
    with factory() as s:
        assert s.query(Job).filter(Job.tenant_id == other_tenant.id).count() == 0
    # B's ordinary campaign naming the installed family is fine
    ok = campaign_spec(brand={"name": "B", "palette": ["#112233"], "font": "NotoSans"})
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": ok}, headers=other_tenant.headers)
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["brand"].get("font_artifact") is None
