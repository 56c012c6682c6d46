"""Health, readiness, metrics, OpenAPI, and the app factory's lifespan."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from api_testkit import TenantCtx, campaign_spec, png_bytes
from atelier_api import create_app
from atelier_contracts.errors import StorageError
from atelier_runtime.settings import Settings
from atelier_runtime.storage import LocalStore
from fastapi import FastAPI
from fastapi.testclient import TestClient


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz_ok_in_embedded_mode(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["database"]["ok"] and checks["storage"]["ok"] and checks["runtime"]["ok"]
    assert checks["broker"] == {"ok": True, "skipped": True, "ms": None, "error": None}


def test_readyz_503_when_storage_fails(client: TestClient, store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise StorageError("bucket atelier unreachable")

    monkeypatch.setattr(store, "ping", broken)
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 503 and "storage" in body["detail"]
    assert body["checks"]["storage"]["ok"] is False and "unreachable" in body["checks"]["storage"]["error"]
    assert body["checks"]["database"]["ok"] is True


def test_readyz_checks_a_configured_broker(settings: Settings, engine: Any, store: LocalStore, celery: Any,
                                          runtime: Any) -> None:
    with_broker = settings.model_copy(update={"broker_url": "memory://"})
    assert not with_broker.embedded
    with TestClient(create_app(with_broker, engine=engine, store=store, celery=celery, runtime=runtime)) as c:
        r = c.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json()["checks"]["broker"]["ok"] and not r.json()["checks"]["broker"]["skipped"]


def test_metrics_expose_requests_and_jobs(client: TestClient, tenant: TenantCtx) -> None:
    job = client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec()}, headers=tenant.headers).json()
    client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers)
    client.post("/v1/uploads", files={"file": ("a.png", png_bytes(), "image/png")}, headers=tenant.headers)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'atelier_api_jobs_submitted_total{kind="campaign"} 1.0' in text
    assert 'atelier_api_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0' in text
    assert "atelier_api_request_duration_seconds_bucket" in text
    assert "atelier_api_uploads_total 1.0" in text
    assert "atelier_api_sse_streams" in text
    assert job["id"] not in text, "labels use the route template, never the raw path"


def test_two_apps_do_not_share_metrics(settings: Settings, engine: Any, store: LocalStore, celery: Any,
                                       runtime: Any) -> None:
    apps = [create_app(settings, engine=engine, store=store, celery=celery, runtime=runtime) for _ in range(2)]
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        a.get("/healthz")
        a.get("/healthz")
        b.get("/healthz")
        assert 'route="/healthz",status="200"} 2.0' in a.get("/metrics").text
        assert 'route="/healthz",status="200"} 1.0' in b.get("/metrics").text


def test_openapi_documents_problems_and_models(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/v1/jobs"]["post"]
    assert post["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobView")
    assert post["responses"]["409"]["content"]["application/problem+json"]["schema"]["$ref"].endswith("/Problem")
    assert "application/json" not in post["responses"]["422"]["content"]
    assert {"JobView", "StageView", "JobList", "ArtifactList", "UploadView", "Problem"} <= set(
        schema["components"]["schemas"])
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    events = schema["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" in events
    # the body is a union discriminated by `kind`: each kind's request names its own spec
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"] == {"propertyName": "kind", "mapping": {
        "campaign": "#/components/schemas/CampaignJobRequest", "story": "#/components/schemas/StoryJobRequest"}}
    assert [r["$ref"].rsplit("/", 1)[-1] for r in body["oneOf"]] == ["CampaignJobRequest", "StoryJobRequest"]
    components = schema["components"]["schemas"]
    for kind, spec in (("campaign", "CampaignSpec"), ("story", "StorySpec")):
        variant = components[f"{spec.removesuffix('Spec')}JobRequest"]
        assert variant["properties"]["kind"]["const"] == kind
        assert variant["properties"]["spec"] == {"$ref": f"#/components/schemas/{spec}"}
        assert {"external_id", "metadata"} <= set(variant["properties"])
    assert "JobRequest" not in components and "brand" not in components["CampaignSpec"]["required"]  # brand_id
    preview = schema["paths"]["/v1/plans:preview"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert preview == body
    assert {"Brand", "Product"} <= set(schema["components"]["schemas"])
    assert "$defs" not in json.dumps(schema), "every $ref must resolve inside components"


def test_unknown_route_is_404_problem(client: TestClient) -> None:
    r = client.get("/v2/nothing")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 404


def test_lifespan_builds_missing_state_and_enters_extra_lifespan(tmp_path: Any) -> None:
    settings = Settings(home=tmp_path / "home")
    seen: list[str] = []

    @asynccontextmanager
    async def extra(app: FastAPI) -> AsyncIterator[None]:
        seen.append(f"enter:{type(app.state.store).__name__}:{app.state.engine.url.drivername}")
        yield
        seen.append("exit")

    app = create_app(settings, extra_lifespan=extra)
    with TestClient(app) as c:
        assert seen == ["enter:LocalStore:sqlite"]
        assert app.state.celery.conf.broker_url == "memory://"
        assert c.get("/readyz").status_code == 200
        assert (tmp_path / "home" / "artifacts").is_dir()
    assert seen[-1] == "exit"
