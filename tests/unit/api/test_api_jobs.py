"""Submitting, validating, listing, reading and canceling jobs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_testkit import TenantCtx, add_stages, campaign_spec, png_bytes, set_job, story_spec
from atelier_contracts.tasks import T_START_JOB
from atelier_control.models import Event, Job
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker


def count_jobs(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


def submit(client: TestClient, tenant: TenantCtx, body: dict[str, Any], **headers: str) -> Any:
    return client.post("/v1/jobs", json=body, headers={**tenant.headers, **headers})


def test_submit_campaign_commits_then_sends_start_job(client: TestClient, tenant: TenantCtx, celery: Any,
                                                      factory: sessionmaker[Session]) -> None:
    r = submit(client, tenant, {"kind": "campaign", "spec": campaign_spec()})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["id"].startswith("job_") and job["kind"] == "campaign" and job["status"] == "queued"
    assert job["progress"] == 0.0 and job["stages"] == []
    assert job["spec"]["sizes"] == ["1080x1080", "1080x1920"] and job["spec"]["locale"] == "en-US"
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert [(s.name, s.args) for s in celery.sent] == [(T_START_JOB, [job["id"]])]
    assert celery.sent[0].job_committed, "start_job was sent before the job was committed"
    with factory() as s:
        row = s.get(Job, job["id"])
        assert row is not None and row.tenant_id == tenant.id
        assert s.scalars(select(Event.type).where(Event.job_id == job["id"])).all() == ["job.created"]


def test_submit_story(client: TestClient, tenant: TenantCtx, celery: Any) -> None:
    r = submit(client, tenant, {"kind": "story", "spec": story_spec()})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "story" and r.json()["spec"]["language"] == "en"
    assert len(celery.sent) == 1


def test_idempotency_same_body_same_job_other_body_conflict(client: TestClient, tenant: TenantCtx, celery: Any,
                                                            factory: sessionmaker[Session]) -> None:
    body = {"kind": "campaign", "spec": campaign_spec()}
    first = submit(client, tenant, body, **{"Idempotency-Key": "order-42"})
    again = submit(client, tenant, body, **{"Idempotency-Key": "order-42"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert count_jobs(factory) == 1
    assert len(celery.sent) == 1, "a replay must not start the job again"

    other = submit(client, tenant, {"kind": "campaign", "spec": campaign_spec(variants=3)},
                   **{"Idempotency-Key": "order-42"})
    assert other.status_code == 409
    assert other.headers["content-type"].startswith("application/problem+json")
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert count_jobs(factory) == 1

    fresh = submit(client, tenant, body, **{"Idempotency-Key": "order-43"})
    assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"]


def test_idempotency_key_is_per_tenant(client: TestClient, tenant: TenantCtx, other_tenant: TenantCtx) -> None:
    body = {"kind": "story", "spec": story_spec()}
    a = submit(client, tenant, body, **{"Idempotency-Key": "k"})
    b = submit(client, other_tenant, body, **{"Idempotency-Key": "k"})
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "campaign", "spec": campaign_spec(sizes=["12x"])}, "spec.sizes"),
        ({"kind": "campaign", "spec": campaign_spec(variants=0)}, "spec.variants"),
        ({"kind": "campaign", "spec": campaign_spec(variants=100)}, "spec.variants"),
        ({"kind": "campaign", "spec": campaign_spec(taglines=["ok", "x" * (10 * 1024 * 1024)])}, "spec.taglines.1"),
        ({"kind": "campaign", "spec": campaign_spec(taglines=[])}, "spec.taglines"),
        ({"kind": "campaign", "spec": campaign_spec(brand={"name": "A", "palette": ["red"]})}, "spec.brand.palette.0"),
        ({"kind": "campaign", "spec": campaign_spec(colour="blue")}, "spec.colour"),
        ({"kind": "campaign", "spec": {**campaign_spec(), "product": {"name": "x"}}}, "spec.product.description"),
        ({"kind": "story", "spec": story_spec(pages=13)}, "spec.pages"),
        ({"kind": "poem", "spec": story_spec()}, "kind"),
        ({"kind": "story", "spec": story_spec(), "priority": "high"}, "priority"),
        ({"spec": story_spec()}, "kind"),
    ],
    ids=["size-12x", "variants-0", "variants-100", "tagline-10MB", "no-taglines", "bad-colour", "extra-spec-field",
         "missing-description", "pages-13", "unknown-kind", "extra-top-field", "missing-kind"],
)
def test_invalid_spec_is_a_problem_naming_the_field_and_writes_nothing(
        client: TestClient, tenant: TenantCtx, celery: Any, factory: sessionmaker[Session],
        body: dict[str, Any], field: str) -> None:
    r = submit(client, tenant, body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == 422 and problem["title"] and problem["type"]
    assert field in [e["field"] for e in problem["errors"]], problem
    assert field in problem["detail"]
    assert len(r.content) < 4096, "the problem must not echo the input back"
    assert count_jobs(factory) == 0 and celery.sent == []


def test_malformed_json_is_422(client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    r = client.post("/v1/jobs", content=b'{"kind": "story", ', headers={**tenant.headers,
                                                                      "Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "body"
    assert count_jobs(factory) == 0


def test_body_over_16_mib_is_413(client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    big = json.dumps({"kind": "story", "spec": story_spec(premise="x" * (17 * 1024 * 1024))}).encode()
    r = client.post("/v1/jobs", content=big, headers={**tenant.headers, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/problem+json")
    assert count_jobs(factory) == 0

    def chunks() -> Any:  # no Content-Length: the limit must hold on the bytes themselves
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    r = client.post("/v1/jobs", content=chunks(), headers={**tenant.headers, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["status"] == 413
    assert count_jobs(factory) == 0


def test_upload_references_must_be_own_uploads(client: TestClient, tenant: TenantCtx, other_tenant: TenantCtx,
                                               factory: sessionmaker[Session]) -> None:
    mine = client.post("/v1/uploads", files={"file": ("p.png", png_bytes(), "image/png")}, headers=tenant.headers)
    theirs = client.post("/v1/uploads", files={"file": ("l.png", png_bytes(), "image/png")},
                         headers=other_tenant.headers)
    assert mine.status_code == theirs.status_code == 201

    spec = campaign_spec(product={"name": "P", "description": "D", "image": "art_doesnotexist"},
                         brand={"name": "B", "logo": theirs.json()["id"]})
    r = submit(client, tenant, {"kind": "campaign", "spec": spec})
    assert r.status_code == 422
    assert sorted(e["field"] for e in r.json()["errors"]) == ["spec.brand.logo", "spec.product.image"]
    assert count_jobs(factory) == 0

    spec = campaign_spec(product={"name": "P", "description": "D", "image": mine.json()["id"]},
                         brand={"name": "B", "logo": mine.json()["id"]})
    r = submit(client, tenant, {"kind": "campaign", "spec": spec})
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["product"]["image"] == mine.json()["id"]


def test_broker_failure_keeps_nothing(client: TestClient, tenant: TenantCtx, celery: Any,
                                     factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*_a: Any, **_k: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(celery, "send_task", down)
    r = submit(client, tenant, {"kind": "story", "spec": story_spec()}, **{"Idempotency-Key": "retry-me"})
    assert r.status_code == 503 and r.json()["title"] == "Broker unavailable"
    assert count_jobs(factory) == 0
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 0
    monkeypatch.undo()
    r = submit(client, tenant, {"kind": "story", "spec": story_spec()}, **{"Idempotency-Key": "retry-me"})
    assert r.status_code == 202 and len(celery.sent) == 1


def test_job_view_progress_and_stage_order(client: TestClient, tenant: TenantCtx,
                                           factory: sessionmaker[Session]) -> None:
    job_id = submit(client, tenant, {"kind": "campaign", "spec": campaign_spec()}).json()["id"]
    add_stages(factory, job_id, [
        ("gpu.background", "1080x1920/0", 2, "running"),
        ("plan.ad_prompts", "", 0, "succeeded"),
        ("gpu.background", "1080x1080/0", 2, "pending"),
        ("plan.ad_layout", "", 1, "succeeded"),
    ])
    r = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
    assert r.status_code == 200
    view = r.json()
    assert view["progress"] == pytest.approx(0.5)
    assert [(s["name"], s["item"]) for s in view["stages"]] == [
        ("plan.ad_prompts", ""), ("plan.ad_layout", ""),
        ("gpu.background", "1080x1080/0"), ("gpu.background", "1080x1920/0"),
    ]
    assert view["stages"][0]["seconds"] == pytest.approx(2.5)
    assert view["stages"][2]["seconds"] is None and view["stages"][2]["started_at"] is None
    assert view["created_at"].endswith(("Z", "+00:00"))

    set_job(factory, job_id, status="succeeded")
    assert client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()["progress"] == 1.0


def test_unknown_job_is_404_problem(client: TestClient, tenant: TenantCtx) -> None:
    r = client.get("/v1/jobs/job_nope", headers=tenant.headers)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 404 and "job_nope" in r.json()["detail"]


def test_list_filters_and_cursor_pagination(client: TestClient, tenant: TenantCtx, other_tenant: TenantCtx,
                                            factory: sessionmaker[Session]) -> None:
    ids = []
    for i in range(7):
        kind = "story" if i % 2 else "campaign"
        spec = story_spec(pages=1 + i) if kind == "story" else campaign_spec(variants=1 + i)
        ids.append(submit(client, tenant, {"kind": kind, "spec": spec}).json()["id"])
    submit(client, other_tenant, {"kind": "story", "spec": story_spec()})
    set_job(factory, ids[0], status="succeeded")

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        r = client.get("/v1/jobs", params=params, headers=tenant.headers)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [j["id"] for j in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids)), "newest first, each job once, other tenants' jobs absent"

    stories = client.get("/v1/jobs", params={"kind": "story"}, headers=tenant.headers).json()
    assert [j["id"] for j in stories["items"]] == [ids[5], ids[3], ids[1]]
    assert stories["next_cursor"] is None
    done = client.get("/v1/jobs", params={"status": "succeeded"}, headers=tenant.headers).json()
    assert [j["id"] for j in done["items"]] == [ids[0]]

    for bad in ({"limit": 0}, {"limit": 101}, {"status": "sleeping"}, {"cursor": "!!not-a-cursor!!"}):
        r = client.get("/v1/jobs", params=bad, headers=tenant.headers)
        assert r.status_code == 422, bad
        assert r.json()["errors"][0]["field"] == next(iter(bad)), r.json()


def test_cancel_transitions(client: TestClient, tenant: TenantCtx, runtime: Any,
                            factory: sessionmaker[Session]) -> None:
    job_id = submit(client, tenant, {"kind": "story", "spec": story_spec()}).json()["id"]
    add_stages(factory, job_id, [("plan.culture", "", 0, "succeeded"), ("plan.story", "", 1, "running"),
                                 ("plan.characters", "", 2, "pending")])
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    view = r.json()
    assert view["status"] == "canceled" and view["finished_at"] is not None
    assert [s["status"] for s in view["stages"]] == ["succeeded", "canceled", "canceled"]
    assert runtime.is_canceled(job_id)
    with factory() as s:
        assert s.scalars(select(Event.type).where(Event.job_id == job_id).order_by(Event.id)).all() == [
            "job.created", "job.canceled"]

    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
    assert again.status_code == 202 and again.json()["status"] == "canceled"

    done_id = submit(client, tenant, {"kind": "story", "spec": story_spec(pages=2)}).json()["id"]
    set_job(factory, done_id, status="succeeded")
    r = client.post(f"/v1/jobs/{done_id}/cancel", headers=tenant.headers)
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "succeeded" in r.json()["detail"]
    with factory() as s:
        job = s.get(Job, done_id)
        assert job is not None and job.status == "succeeded"
