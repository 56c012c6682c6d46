"""``spec.control``: ControlNet conditions on a campaign's background, validated at submission."""

from __future__ import annotations

from typing import Any

import pytest
from api_testkit import TenantCtx, campaign_spec, png_bytes
from atelier_control.models import Artifact, Job
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker


def count(factory: sessionmaker[Session], model: Any) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def upload(client: TestClient, tenant: TenantCtx) -> str:
    r = client.post("/v1/uploads", files={"file": ("c.png", png_bytes((40, 30)), "image/png")}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def submit(client: TestClient, tenant: TenantCtx, spec: dict[str, Any]) -> Any:
    return client.post("/v1/jobs", json={"kind": "campaign", "spec": spec}, headers=tenant.headers)


def test_a_campaign_with_controls_is_accepted_and_stored_with_the_defaults(
        client: TestClient, tenant: TenantCtx, celery: Any, factory: sessionmaker[Session]) -> None:
    edges, depth = upload(client, tenant), upload(client, tenant)
    control = [{"kind": "canny", "image": edges},
               {"kind": "depth", "image": depth, "weight": 2, "scale": 1.2, "start": 0.1, "end": 0.7}]
    r = submit(client, tenant, campaign_spec(control=control))
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["control"] == [
        {"kind": "canny", "image": edges, "weight": 1.0, "scale": 0.8, "start": 0.0, "end": 1.0},
        {"kind": "depth", "image": depth, "weight": 2.0, "scale": 1.2, "start": 0.1, "end": 0.7},
    ]
    with factory() as s:
        job = s.get(Job, r.json()["id"])
        assert job is not None and job.spec["control"][1]["image"] == depth  # what the GPU stage reads
    assert len(celery.sent) == 1

    plain = submit(client, tenant, campaign_spec())
    assert plain.status_code == 202 and plain.json()["spec"]["control"] == []


def _ctl(**fields: Any) -> dict[str, Any]:
    return {"kind": "canny", "image": "art_placeholder", **fields}


@pytest.mark.parametrize(
    ("control", "extra", "field"),
    [
        ([_ctl(kind="segmentation")], {}, "spec.control.0.kind"),
        ([{"image": "art_x"}], {}, "spec.control.0.kind"),
        ([{"kind": "canny"}], {}, "spec.control.0.image"),
        ([_ctl(image="../../etc/passwd")], {}, "spec.control.0.image"),
        ([_ctl(), _ctl(weight=0)], {}, "spec.control.1.weight"),
        ([_ctl(weight=-1)], {}, "spec.control.0.weight"),
        ([_ctl(weight=True)], {}, "spec.control.0.weight"),
        ([_ctl(weight="2")], {}, "spec.control.0.weight"),
        ([_ctl(scale=0)], {}, "spec.control.0.scale"),
        ([_ctl(scale=2.5)], {}, "spec.control.0.scale"),
        ([_ctl(start=-0.1)], {}, "spec.control.0.start"),
        ([_ctl(end=1.5)], {}, "spec.control.0.end"),
        ([_ctl(start=0.6, end=0.4)], {}, "spec.control.0.end"),
        ([_ctl(start=0.5, end=0.5)], {}, "spec.control.0.end"),
        ([_ctl(strength=1)], {}, "spec.control.0.strength"),
        ([_ctl()] * 4, {}, "spec.control"),
        ({"kind": "canny"}, {}, "spec.control"),
        ([_ctl()], {"backdrop": "studio"}, "spec.control"),
    ],
    ids=["unknown-kind", "no-kind", "no-image", "image-path", "zero-weight", "negative-weight", "bool-weight",
         "string-weight", "zero-scale", "scale-2.5", "start-below-0", "end-above-1", "end-before-start",
         "end-equals-start", "extra-field", "four-controls", "not-a-list", "studio-backdrop"],
)
def test_a_bad_control_is_a_422_naming_the_field_and_writes_nothing(
        client: TestClient, tenant: TenantCtx, celery: Any, factory: sessionmaker[Session],
        control: Any, extra: dict[str, Any], field: str) -> None:
    r = submit(client, tenant, campaign_spec(control=control, **extra))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert field in [e["field"] for e in problem["errors"]], problem
    assert field in problem["detail"]
    assert count(factory, Job) == 0 and celery.sent == []


def test_control_images_must_be_the_callers_own_uploads(
        client: TestClient, tenant: TenantCtx, other_tenant: TenantCtx, celery: Any,
        factory: sessionmaker[Session]) -> None:
    mine, theirs = upload(client, tenant), upload(client, other_tenant)
    uploads_before = count(factory, Artifact)
    spec = campaign_spec(control=[{"kind": "canny", "image": mine}, {"kind": "pose", "image": theirs},
                                  {"kind": "depth", "image": "art_doesnotexist"}])
    r = submit(client, tenant, spec)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert sorted(e["field"] for e in errors) == ["spec.control.1.image", "spec.control.2.image"]
    assert all("is not an upload of yours" in e["message"] for e in errors)
    assert count(factory, Job) == 0 and celery.sent == [] and count(factory, Artifact) == uploads_before

    # the plan preview checks the same references before asking the planner
    preview = client.post("/v1/plans:preview", json={"kind": "campaign", "spec": spec}, headers=tenant.headers)
    assert preview.status_code == 422
    assert sorted(e["field"] for e in preview.json()["errors"]) == ["spec.control.1.image", "spec.control.2.image"]


def test_the_control_field_is_documented_in_the_openapi(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    control = schemas["CampaignSpec"]["properties"]["control"]
    assert control["maxItems"] == 3 and control["items"] == {"$ref": "#/components/schemas/BackgroundControl"}
    assert "ControlNet" in control["description"]
    item = schemas["BackgroundControl"]
    assert item["required"] == ["kind", "image"]
    props = item["properties"]
    assert props["kind"]["enum"] == ["canny", "depth", "pose"]
    assert props["weight"]["exclusiveMinimum"] == 0 and props["weight"]["default"] == 1.0
    assert props["scale"]["default"] == 0.8 and props["scale"]["maximum"] == 2
    assert props["start"]["minimum"] == 0 and props["end"]["maximum"] == 1
    assert all(props[name].get("description") for name in ("kind", "image", "weight", "scale", "start", "end"))
