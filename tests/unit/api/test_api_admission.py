"""Admission that holds under bursts and abuse: reserved GPU work, retries admitted, caps on concurrent work."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from api_testkit import TenantCtx, campaign_spec, set_job
from atelier_api.concurrency import TenantConcurrency
from atelier_api.ratelimit import (
    JobLimits,
    MemoryWindow,
    estimate_gpu_seconds,
    generated_megapixels,
    gpu_seconds_committed,
)
from atelier_api.streams import MAX_EVENT_ID
from atelier_contracts.errors import AtelierError
from atelier_control.models import Job
from atelier_runtime.settings import SERVICES_DEFAULTS, Settings
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker


def submit(client: TestClient, tenant: TenantCtx, **spec: Any) -> Any:
    return client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec(**spec)}, headers=tenant.headers)


def jobs_of(factory: sessionmaker[Session], tenant: TenantCtx) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id)) or 0


def test_the_estimate_counts_every_generated_image_at_its_generated_size() -> None:
    one = generated_megapixels("campaign", {"sizes": ["1024x1024"], "variants": 1}, max_side=1024)
    assert one == pytest.approx(1024 * 1024 / 1e6)
    assert generated_megapixels("campaign", {"sizes": ["2048x1024"], "variants": 3}, max_side=1024) == \
        pytest.approx(3 * 1024 * 512 / 1e6)  # scaled down to the longest side generated
    assert generated_megapixels("campaign", {"sizes": ["1080x1080"], "backdrop": "studio"}, max_side=1024) == 0
    assert generated_megapixels("story", {"pages": 4}, max_side=1024) > generated_megapixels(
        "story", {"pages": 1}, max_side=1024)
    settings = Settings(gen_steps=4, quota_gpu_seconds_per_megapixel_step=0.5)
    assert estimate_gpu_seconds("campaign", {"sizes": ["1000x1000"], "variants": 2}, settings) == pytest.approx(4.0)


def test_a_burst_beyond_the_quota_gets_429s_before_any_job_has_run(
        make_client: Any, tenant: TenantCtx, other_tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    # each job: 2 images of 1 MP x 10 steps x 1 s = 20 GPU-seconds reserved until it ends; quota 50
    client = make_client(quota_gpu_seconds_per_day=50, quota_gpu_seconds_per_megapixel_step=1.0, gen_steps=10,
                         gen_max_side=1000)
    spec = {"sizes": ["1000x1000"], "variants": 2}
    codes = [submit(client, tenant, taglines=[str(i)], **spec).status_code for i in range(6)]
    assert codes == [202, 202, 202, 429, 429, 429], codes  # 0, 20, 40 reserved at each admission; then 60 >= 50
    assert jobs_of(factory, tenant) == 3
    r = submit(client, tenant, taglines=["more"], **spec)
    assert r.status_code == 429 and r.json()["limit"] == "gpu_seconds_per_day"
    assert "60.0 of 50" in r.json()["detail"]
    assert submit(client, other_tenant, **spec).status_code == 202, "reservations are per tenant"
    # a job that ends gives its reservation back: it counts what it used
    with factory() as s:
        first = s.scalars(select(Job.id).where(Job.tenant_id == tenant.id).order_by(Job.created_at)).first()
    set_job(factory, first, status="succeeded", gpu_seconds=2.0)
    assert submit(client, tenant, taglines=["after one ended"], **spec).status_code == 202



def test_the_reservation_is_stored_at_submission_and_summed_in_sql(
        make_client: Any, tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    """The quota check is one SQL sum over stored reservations; jobs made before the column (NULL) are estimated
    from their spec as before, so an upgrade neither frees nor double-counts quota."""
    client = make_client(quota_gpu_seconds_per_day=1000, quota_gpu_seconds_per_megapixel_step=1.0, gen_steps=10,
                         gen_max_side=1000)
    ids = [submit(client, tenant, taglines=[str(v)], sizes=["1000x1000"], variants=v).json()["id"] for v in (1, 2, 3)]
    with factory() as s:
        stored = dict(s.execute(select(Job.id, Job.gpu_reserved_s).where(Job.id.in_(ids))).tuples().all())
    assert [stored[i] for i in ids] == pytest.approx([10.0, 20.0, 30.0])
    settings = client.app.state.settings

    def committed() -> float:
        with factory() as s:
            return gpu_seconds_committed(s, tenant_id=tenant.id, now=datetime.now(UTC), settings=settings)

    assert committed() == pytest.approx(60.0)
    set_job(factory, ids[0], status="succeeded", gpu_seconds=2.5)  # finished: what it used
    set_job(factory, ids[1], gpu_seconds=25.0)  # running past its estimate: what it used so far
    assert committed() == pytest.approx(2.5 + 25.0 + 30.0)
    set_job(factory, ids[2], gpu_reserved_s=None)  # a job submitted before revision 0007: estimated from its spec
    assert committed() == pytest.approx(2.5 + 25.0 + 30.0)
    assert submit(client, tenant, taglines=["still room"], sizes=["1000x1000"]).status_code == 202


def test_far_below_the_quota_a_recent_sum_is_reused_and_near_it_every_admission_sums(
        make_client: Any, tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    """The sum scans the tenant's last 24 h of jobs: far below the quota a sum read within ``quota_reuse_s``, plus
    what this process reserved since, stands in for it; within 10% of the quota every admission sums again."""
    client = make_client(quota_gpu_seconds_per_day=100, quota_gpu_seconds_per_megapixel_step=1.0, gen_steps=10,
                         gen_max_side=1000, quota_reuse_s=3600)
    sums: list[str] = []
    engine = client.app.state.engine

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT COALESCE(SUM("):
            sums.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        codes = [submit(client, tenant, taglines=[str(i)], sizes=["1000x1000"], variants=1).status_code
                 for i in range(11)]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # 10 GPU-seconds reserved each: committed 0 (summed), then 10 ... 80 (the sum plus this process's own
    # reservations, reused); 90 is within 10% of the quota: summed, admitted; 100: summed, refused
    assert codes == [202] * 10 + [429], codes
    assert len(sums) == 3, sums
    assert jobs_of(factory, tenant) == 10, "never more than the quota holds"

def test_a_retry_goes_through_admission(make_client: Any, tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    client = make_client(rate_limit_jobs_per_minute=1)
    client.app.state.job_limits = JobLimits(client.app.state.settings, window=MemoryWindow())
    job_id = submit(client, tenant).json()["id"]
    set_job(factory, job_id, status="failed", error="boom")
    r = client.post(f"/v1/jobs/{job_id}/retry", headers=tenant.headers)
    assert r.status_code == 429 and r.json()["limit"] == "jobs_per_minute"
    spec = client.get("/openapi.json").json()
    assert "429" in spec["paths"]["/v1/jobs/{job_id}/retry"]["post"]["responses"]


def test_concurrency_caps_refuse_over_the_cap_and_free_on_release() -> None:
    caps = TenantConcurrency({"previews": 2, "uploads": 0})
    a = caps.acquire("previews", "t1")
    caps.acquire("previews", "t1")
    with pytest.raises(AtelierError) as err:
        caps.acquire("previews", "t1")
    assert err.value.status == 429 and err.value.extra["limit"] == "concurrent_previews"
    caps.acquire("previews", "t2")  # per tenant
    a()
    a()  # idempotent: a second release frees nothing more
    assert caps.held("previews", "t1") == 1
    caps.acquire("previews", "t1")
    for _ in range(50):
        caps.acquire("uploads", "t1")  # 0 = no cap


def test_uploads_and_streams_are_capped_per_tenant(make_client: Any, tenant: TenantCtx,
                                                   other_tenant: TenantCtx) -> None:
    client = make_client(tenant_max_uploads=1, tenant_max_streams=1)
    caps = TenantConcurrency.from_settings(client.app.state.settings)
    client.app.state.tenant_concurrency = caps
    busy = caps.acquire("uploads", tenant.id)
    png = (b"\x89PNG\r\n\x1a\n" + b"\x00" * 8)
    r = client.post("/v1/uploads", files={"file": ("a.png", png, "image/png")}, headers=tenant.headers)
    assert r.status_code == 429 and r.json()["limit"] == "concurrent_uploads" and r.headers["retry-after"] == "1"
    other = client.post("/v1/uploads", files={"file": ("a.png", png, "image/png")}, headers=other_tenant.headers)
    assert other.status_code != 429, "another tenant is not held back"
    busy()
    job_id = submit(client, tenant).json()["id"]
    held = caps.acquire("streams", tenant.id)
    r = client.get(f"/v1/jobs/{job_id}/events", headers=tenant.headers)
    assert r.status_code == 429 and r.json()["limit"] == "concurrent_streams"
    held()
    assert caps.held("streams", tenant.id) == 0


def test_event_ids_beyond_bigint_are_a_422_not_a_dying_stream(client: TestClient, tenant: TenantCtx) -> None:
    job_id = submit(client, tenant).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/events", headers={**tenant.headers, "Last-Event-ID": str(MAX_EVENT_ID + 1)})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "Last-Event-ID"
    r = client.get(f"/v1/jobs/{job_id}/events", params={"after": MAX_EVENT_ID + 1}, headers=tenant.headers)
    assert r.status_code == 422


def test_services_mode_turns_the_limits_on_unless_told_otherwise() -> None:
    assert Settings().rate_limit_jobs_per_minute == 0 and Settings().quota_gpu_seconds_per_day == 0
    services = Settings(broker_url="redis://127.0.0.1:6379/0")
    assert services.rate_limit_jobs_per_minute == SERVICES_DEFAULTS["rate_limit_jobs_per_minute"] == 120
    assert services.quota_gpu_seconds_per_day == SERVICES_DEFAULTS["quota_gpu_seconds_per_day"] > 0
    off = Settings(broker_url="redis://127.0.0.1:6379/0", rate_limit_jobs_per_minute=0, quota_gpu_seconds_per_day=0)
    assert off.rate_limit_jobs_per_minute == 0 and off.quota_gpu_seconds_per_day == 0
