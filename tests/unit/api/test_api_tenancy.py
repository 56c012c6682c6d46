"""Tenant isolation: another tenant's objects are 404 (never 403) on every route; auth is required."""

from __future__ import annotations

from typing import Any

import pytest
from api_testkit import TenantCtx, add_artifact, campaign_spec, emit_events, png_bytes
from atelier_control.models import Job
from atelier_runtime.storage import LocalStore
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker


@pytest.fixture
def a_job(client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session], store: LocalStore) -> dict[str, str]:
    job_id = client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec()},
                         headers=tenant.headers).json()["id"]
    art = add_artifact(factory, store, tenant_id=tenant.id, job_id=job_id, kind="render", name="ad-1080x1080",
                       data=b"\x89PNG fake", content_type="image/png")
    upload_id = client.post("/v1/uploads", files={"file": ("p.png", png_bytes(), "image/png")},
                            headers=tenant.headers).json()["id"]
    emit_events(factory, tenant.id, job_id, ["job.started", "job.succeeded"])
    return {"job": job_id, "artifact": art, "upload": upload_id}


def test_owner_sees_everything(client: TestClient, tenant: TenantCtx, a_job: dict[str, str]) -> None:
    job = a_job["job"]
    assert client.get(f"/v1/jobs/{job}", headers=tenant.headers).status_code == 200
    items = client.get(f"/v1/jobs/{job}/artifacts", headers=tenant.headers).json()["items"]
    assert [i["id"] for i in items] == [a_job["artifact"]]
    assert client.get(f"/v1/artifacts/{a_job['artifact']}/content", headers=tenant.headers).content == b"\x89PNG fake"
    assert client.get(f"/v1/artifacts/{a_job['upload']}/content", headers=tenant.headers).status_code == 200
    assert "job.succeeded" in client.get(f"/v1/jobs/{job}/events", headers=tenant.headers).text


def test_other_tenant_gets_404_everywhere(client: TestClient, other_tenant: TenantCtx, a_job: dict[str, str],
                                          factory: sessionmaker[Session]) -> None:
    job, art, upload = a_job["job"], a_job["artifact"], a_job["upload"]
    h = other_tenant.headers
    responses = {
        "job": client.get(f"/v1/jobs/{job}", headers=h),
        "cancel": client.post(f"/v1/jobs/{job}/cancel", headers=h),
        "artifacts": client.get(f"/v1/jobs/{job}/artifacts", headers=h),
        "content": client.get(f"/v1/artifacts/{art}/content", headers=h),
        "upload content": client.get(f"/v1/artifacts/{upload}/content", headers=h),
        "events": client.get(f"/v1/jobs/{job}/events", headers=h),
        "events resumed": client.get(f"/v1/jobs/{job}/events", params={"after": 0}, headers=h),
    }
    for what, r in responses.items():
        assert r.status_code == 404, (what, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), what
        assert b"PNG" not in r.content
    assert client.get("/v1/jobs", headers=h).json()["items"] == []
    with factory() as s:
        row = s.get(Job, job)
        assert row is not None and row.status == "queued", "the other tenant's cancel must not touch the job"


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer atl_deadbeef_notakey"},
    {"Authorization": "Bearer not-even-shaped-right"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
], ids=["missing", "empty", "wrong", "malformed", "basic"])
def test_missing_or_wrong_key_is_401(client: TestClient, tenant: TenantCtx, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/job_x/events")]:
        r = client.request(method, path, headers=headers, json={"kind": "story", "spec": {}})
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == 401


def test_key_of_one_tenant_is_not_another(client: TestClient, tenant: TenantCtx, other_tenant: TenantCtx) -> None:
    client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec()}, headers=tenant.headers)
    assert len(client.get("/v1/jobs", headers=tenant.headers).json()["items"]) == 1
    assert len(client.get("/v1/jobs", headers=other_tenant.headers).json()["items"]) == 0


def test_artifact_list_kind_filter(client: TestClient, tenant: TenantCtx, a_job: dict[str, str],
                                   factory: sessionmaker[Session], store: LocalStore) -> None:
    job = a_job["job"]
    bundle = add_artifact(factory, store, tenant_id=tenant.id, job_id=job, kind="bundle", name="bundle",
                          data=b"PK\x03\x04zip", content_type="application/zip")
    every = client.get(f"/v1/jobs/{job}/artifacts", headers=tenant.headers).json()["items"]
    assert {i["id"] for i in every} == {a_job["artifact"], bundle}
    only = client.get(f"/v1/jobs/{job}/artifacts", params={"kind": "bundle"}, headers=tenant.headers).json()["items"]
    assert [i["id"] for i in only] == [bundle]
    item: dict[str, Any] = only[0]
    assert item["url"] == f"/v1/artifacts/{bundle}/content" and item["content_type"] == "application/zip"
    assert set(item) >= {"id", "kind", "name", "content_type", "size_bytes", "sha256", "width", "height", "meta",
                         "created_at", "stage_id", "url"}
    r = client.get(item["url"], headers=tenant.headers)
    assert r.content == b"PK\x03\x04zip" and r.headers["content-type"] == "application/zip"
    assert client.get("/v1/artifacts/art_missing/content", headers=tenant.headers).status_code == 404
