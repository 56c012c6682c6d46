"""Per-tenant jobs-per-minute limit and GPU-seconds-per-day quota: 429, problem+json, Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_testkit import TenantCtx, campaign_spec, set_job, story_spec
from atelier_api.ratelimit import MemoryWindow, RateLimited, Slot
from atelier_control.models import Job
from atelier_runtime.settings import Settings
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now



def submit(client: TestClient, tenant: TenantCtx, *, key: str | None = None, **spec: Any) -> Any:
    headers = dict(tenant.headers, **({"Idempotency-Key": key} if key else {}))
    return client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec(**spec)}, headers=headers)


def jobs_of(factory: sessionmaker[Session], tenant: TenantCtx) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id)) or 0


def assert_429(r: Any, limit: str) -> int:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    retry_after = int(r.headers["retry-after"])
    problem = r.json()
    assert problem["status"] == 429 and problem["title"] == "Too many requests"
    assert problem["limit"] == limit and problem["retry_after_s"] == retry_after
    return retry_after


# ---------------------------------------------------------------- jobs per minute


def test_jobs_per_minute_is_a_sliding_window(make_client: Any, tenant: TenantCtx, other_tenant: TenantCtx,
                                             factory: sessionmaker[Session]) -> None:
    clock = FakeClock()
    client = make_client(MemoryWindow(clock), rate_limit_jobs_per_minute=3)
    for i in range(3):
        clock.now += 10
        assert submit(client, tenant, taglines=[f"t{i}"]).status_code == 202
    # t=1010, 1020, 1030 admitted; at 1035 the oldest frees at 1070
    clock.now += 5
    r = submit(client, tenant, taglines=["over"])
    assert assert_429(r, "jobs_per_minute") == 35
    assert "3 jobs per minute" in r.json()["detail"]
    assert jobs_of(factory, tenant) == 3, "a refused request writes nothing"
    # another tenant has its own window
    assert submit(client, other_tenant).status_code == 202
    # still full one second before the oldest leaves; one slot back once it has
    clock.now = 1069.5
    assert assert_429(submit(client, tenant, taglines=["still"]), "jobs_per_minute") == 1
    clock.now = 1070.0
    assert submit(client, tenant, taglines=["again"]).status_code == 202
    assert submit(client, tenant, taglines=["no"]).status_code == 429
    assert jobs_of(factory, tenant) == 4


def test_requests_that_make_no_job_give_their_slot_back(make_client: Any, tenant: TenantCtx,
                                                        factory: sessionmaker[Session]) -> None:
    client = make_client(MemoryWindow(FakeClock()), rate_limit_jobs_per_minute=2)
    assert submit(client, tenant, key="k1").status_code == 202
    assert submit(client, tenant, key="k1").status_code == 200, "an idempotent replay is not a new job"
    bad = client.post("/v1/jobs", json={"kind": "story", "spec": story_spec(pages=0)}, headers=tenant.headers)
    assert bad.status_code == 422, "an invalid spec is refused before it can use a slot"
    unknown = submit(client, tenant, product={"name": "x", "description": "y", "image": "art_nope"})
    assert unknown.status_code == 422
    assert submit(client, tenant, taglines=["second"]).status_code == 202
    assert submit(client, tenant, taglines=["third"]).status_code == 429
    assert jobs_of(factory, tenant) == 2


def test_broker_failure_gives_the_slot_back(make_client: Any, tenant: TenantCtx, celery: Any) -> None:
    client = make_client(MemoryWindow(FakeClock()), rate_limit_jobs_per_minute=1)
    original = celery.send_task

    def down(*_a: Any, **_k: Any) -> Any:
        raise ConnectionError("broker down")

    celery.send_task = down
    assert submit(client, tenant).status_code == 503
    celery.send_task = original
    assert submit(client, tenant).status_code == 202, "the failed submission must not count"


def test_limiter_failure_falls_back_to_this_processs_window(make_client: Any, tenant: TenantCtx) -> None:
    """With the shared (Redis) window unreachable the limit still holds, per process: never admit everything."""
    class Broken:
        def acquire(self, *_a: Any, **_k: Any) -> Slot | float:
            raise ConnectionError("redis down")

        def release(self, slot: Slot) -> None:
            raise AssertionError("nothing was acquired from the shared window")

    client = make_client(Broken(), rate_limit_jobs_per_minute=1)
    codes = [submit(client, tenant, taglines=[str(i)]).status_code for i in range(3)]
    assert codes == [202, 429, 429]


def test_off_by_default(client: TestClient, tenant: TenantCtx) -> None:
    assert Settings().rate_limit_jobs_per_minute == 0 and Settings().quota_gpu_seconds_per_day == 0
    assert all(submit(client, tenant, taglines=[str(i)]).status_code == 202 for i in range(12))


def test_memory_window_release_and_expiry() -> None:
    clock = FakeClock()
    window = MemoryWindow(clock)
    a = window.acquire("k", limit=2, window_s=60)
    b = window.acquire("k", limit=2, window_s=60)
    assert isinstance(a, Slot) and isinstance(b, Slot)
    assert window.acquire("k", limit=2, window_s=60) == pytest.approx(60)
    window.release(a)
    assert isinstance(window.acquire("k", limit=2, window_s=60), Slot)
    clock.now += 60
    assert isinstance(window.acquire("k", limit=2, window_s=60), Slot), "entries leave after the window"


def test_retry_after_is_rounded_up_and_at_least_one() -> None:
    assert RateLimited("x", retry_after_s=0.01, limit="l").retry_after_s == 1
    assert RateLimited("x", retry_after_s=2.2, limit="l").headers == {"Retry-After": "3"}


# ---------------------------------------------------------------- GPU-seconds per day


def test_gpu_quota_counts_the_last_24_hours(make_client: Any, tenant: TenantCtx, other_tenant: TenantCtx,
                                            factory: sessionmaker[Session]) -> None:
    # the accounting of finished GPU time (no estimate reserved for the queued jobs here: see the burst test)
    client = make_client(quota_gpu_seconds_per_day=120, quota_gpu_seconds_per_megapixel_step=0,
                         quota_reuse_s=0)  # usage set out of band below is seen at once
    now = datetime.now(UTC)
    ids = [submit(client, tenant, taglines=[str(i)]).json()["id"] for i in range(3)]
    set_job(factory, ids[0], created_at=now - timedelta(hours=30), gpu_seconds=500.0)  # outside the window
    set_job(factory, ids[1], created_at=now - timedelta(hours=23), gpu_seconds=100.0)
    assert submit(client, tenant, taglines=["under"]).status_code == 202, "100 of 120 used: still admitted"
    set_job(factory, ids[2], created_at=now - timedelta(hours=1), gpu_seconds=50.0)
    before = jobs_of(factory, tenant)
    r = submit(client, tenant, taglines=["over"])
    retry_after = assert_429(r, "gpu_seconds_per_day")
    # 150 used; the 100 s job leaves the window in one hour, leaving 50 < 120
    assert 3590 <= retry_after <= 3601, retry_after
    assert "150.0 of 120" in r.json()["detail"]
    assert jobs_of(factory, tenant) == before
    assert submit(client, other_tenant).status_code == 202, "quotas are per tenant"
    set_job(factory, ids[1], created_at=now - timedelta(hours=25))
    assert submit(client, tenant, taglines=["aged out"]).status_code == 202


def test_gpu_quota_retry_after_waits_for_enough_usage_to_leave(make_client: Any, tenant: TenantCtx,
                                                               factory: sessionmaker[Session]) -> None:
    client = make_client(quota_gpu_seconds_per_day=100, quota_gpu_seconds_per_megapixel_step=0,
                         quota_reuse_s=0)  # usage set out of band below is seen at once
    now = datetime.now(UTC)
    ids = [submit(client, tenant, taglines=[str(i)]).json()["id"] for i in range(3)]
    for job_id, hours, seconds in zip(ids, (20, 10, 2), (30.0, 60.0, 60.0), strict=True):
        set_job(factory, job_id, created_at=now - timedelta(hours=hours), gpu_seconds=seconds)
    # 150 used: the first to leave (30 s, in 4 h) leaves 120 >= 100; the second (in 14 h) leaves 60
    retry_after = assert_429(submit(client, tenant, taglines=["x"]), "gpu_seconds_per_day")
    assert 14 * 3600 - 10 <= retry_after <= 14 * 3600 + 1, retry_after


def test_429_is_documented_with_retry_after(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    answer = spec["paths"]["/v1/jobs"]["post"]["responses"]["429"]
    assert "application/problem+json" in answer["content"]
    assert answer["headers"]["Retry-After"]["schema"]["type"] == "integer"
