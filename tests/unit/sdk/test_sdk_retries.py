"""Retries against the real app over HTTP: 429 (Retry-After), 503, connection errors of idempotent requests;
never a 400, 404 or 422."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from api_testkit import TenantCtx, campaign_spec, png_bytes, story_spec
from atelier_api import create_app
from atelier_api.ratelimit import JobLimits, MemoryWindow
from atelier_control.models import Job
from atelier_sdk import AtelierClient, AtelierError, RetryPolicy
from atelier_sdk.retry import retry_after_seconds
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .conftest import Recording, Seen, Sleeps

HALF = RetryPolicy(jitter=lambda: 0.5)  # backoff 0.5 s doubling; jitter fixed at its middle: 0.375, 0.75, 1.5


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def jobs_of(factory: sessionmaker[Session], tenant: TenantCtx) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id)) or 0


def statuses(seen: Seen, method: str, path: str = "") -> list[int | str]:
    return [status for _m, _p, status, _h in seen.of(method, path)]


def is_job_submit(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path == "/v1/jobs"


# ---------------------------------------------------------------- 429 and 503


@pytest.fixture
def limited(settings: Any, engine: Any, store: Any, celery: Any, runtime: Any,
            serve: Callable[[Any], str]) -> tuple[str, FakeClock]:
    """The app with a limit of one job a minute on a clock the test moves."""
    clock = FakeClock()
    app = create_app(settings.model_copy(update={"rate_limit_jobs_per_minute": 1}), engine=engine, store=store,
                     celery=celery, runtime=runtime)
    app.state.job_limits = JobLimits(app.state.settings, window=MemoryWindow(clock))
    return serve(app), clock


def test_a_429_is_retried_once_after_its_retry_after(limited: tuple[str, FakeClock], tenant: TenantCtx,
                                                     transport: Recording, seen: Seen,
                                                     factory: sessionmaker[Session]) -> None:
    url, clock = limited
    sleeps = Sleeps(then=lambda s: setattr(clock, "now", clock.now + s))  # waiting moves the window's clock on
    with AtelierClient(url, api_key=tenant.key, transport=transport, sleep=sleeps) as atelier:
        first = atelier.submit(campaign_spec(), kind="campaign")
        clock.now += 15
        second = atelier.submit(campaign_spec(taglines=["Again"]), kind="campaign")
    assert statuses(seen, "POST", "/v1/jobs") == [202, 429, 202]
    assert sleeps == [45.0], "waited what Retry-After said (the slot frees 60 s after the first job)"
    assert second.id != first.id and second.status == "queued" and jobs_of(factory, tenant) == 2


def test_a_retry_after_longer_than_the_policy_allows_raises_at_once(limited: tuple[str, FakeClock],
                                                                     tenant: TenantCtx, transport: Recording,
                                                                     seen: Seen) -> None:
    url, _clock = limited
    sleeps = Sleeps()
    with AtelierClient(url, api_key=tenant.key, transport=transport, sleep=sleeps,
                       retry=RetryPolicy(max_retry_after_s=30)) as atelier:
        atelier.submit(campaign_spec(), kind="campaign")
        with pytest.raises(AtelierError) as exc:
            atelier.submit(campaign_spec(taglines=["Again"]), kind="campaign")
    err = exc.value
    assert (err.status, err.title, err.type) == (429, "Too many requests", "urn:atelier:problem:too-many-requests")
    assert err.problem["limit"] == "jobs_per_minute" and err.headers["retry-after"] == "60"
    assert "per minute" in err.detail
    assert statuses(seen, "POST", "/v1/jobs") == [202, 429] and sleeps == []


def test_a_503_is_retried_with_backoff(live: str, tenant: TenantCtx, transport: Recording, seen: Seen,
                                       broker_down_for: Callable[[int], list[str]],
                                       factory: sessionmaker[Session]) -> None:
    tries = broker_down_for(1)
    sleeps = Sleeps()
    with AtelierClient(live, api_key=tenant.key, transport=transport, sleep=sleeps, retry=HALF) as atelier:
        job = atelier.submit(story_spec(), kind="story")  # no Idempotency-Key: a 503 kept nothing, so it is safe
    assert statuses(seen, "POST", "/v1/jobs") == [503, 202] and len(tries) == 2
    assert sleeps == [0.375], "no Retry-After: the first backoff step"
    assert job.kind == "story" and jobs_of(factory, tenant) == 1


def test_503s_are_retried_up_to_max_attempts_then_raised(live: str, tenant: TenantCtx, transport: Recording,
                                                          seen: Seen, broker_down_for: Callable[[int], list[str]],
                                                          factory: sessionmaker[Session]) -> None:
    broker_down_for(100)
    sleeps = Sleeps()
    with AtelierClient(live, api_key=tenant.key, transport=transport, sleep=sleeps,
                       retry=RetryPolicy(max_attempts=3, jitter=lambda: 0.0)) as atelier, \
            pytest.raises(AtelierError) as exc:
        atelier.submit(story_spec(), kind="story")
    assert (exc.value.status, exc.value.title, exc.value.type) == (
        503, "Broker unavailable", "urn:atelier:problem:broker-unavailable")
    assert statuses(seen, "POST", "/v1/jobs") == [503, 503, 503]
    assert sleeps == [0.25, 0.5], "exponential: 0.5 s then 1 s, the random half at zero"
    assert jobs_of(factory, tenant) == 0


# ---------------------------------------------------------------- never retried


def test_a_422_is_not_retried_and_carries_the_field_errors(live: str, tenant: TenantCtx, transport: Recording,
                                                            seen: Seen) -> None:
    sleeps = Sleeps()
    with AtelierClient(live, api_key=tenant.key, transport=transport, sleep=sleeps) as atelier, \
            pytest.raises(AtelierError) as exc:
        atelier.submit(story_spec(pages=0), kind="story", idempotency_key="k-422")
    err = exc.value
    assert err.status == 422 and err.type == "urn:atelier:problem:validation-failed"
    assert "spec.pages" in err.field_errors and err.errors[0]["field"] == "spec.pages"
    assert err.detail.startswith("spec.pages") and str(err).startswith("422 Validation failed")
    assert statuses(seen, "POST") == [422] and sleeps == []


class StripsTheBoundary(Recording):
    """A broken proxy: multipart requests lose their boundary, so the API cannot parse them (400)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("content-type", "").startswith("multipart/"):
            request.headers["Content-Type"] = "multipart/form-data"
        return super().handle_request(request)


def test_a_400_is_not_retried(live: str, tenant: TenantCtx, seen: Seen) -> None:
    sleeps = Sleeps()
    with AtelierClient(live, api_key=tenant.key, transport=StripsTheBoundary(seen), sleep=sleeps) as atelier, \
            pytest.raises(AtelierError) as exc:
        atelier.upload(png_bytes(), filename="p.png")
    assert (exc.value.status, exc.value.detail) == (400, "Missing boundary in multipart.")
    assert exc.value.errors == [] and exc.value.field_errors == {}
    assert statuses(seen, "POST") == [400] and sleeps == []


def test_404_and_401_are_not_retried(live: str, tenant: TenantCtx, transport: Recording, seen: Seen) -> None:
    sleeps = Sleeps()
    with AtelierClient(live, api_key=tenant.key, transport=transport, sleep=sleeps) as atelier, \
            pytest.raises(AtelierError) as exc:
        atelier.job("job_nope")
    assert exc.value.status == 404
    with AtelierClient(live, api_key="atl_wrong", transport=transport, sleep=sleeps) as stranger, \
            pytest.raises(AtelierError) as exc:
        stranger.jobs()
    assert exc.value.status == 401 and exc.value.headers["www-authenticate"] == "Bearer"
    assert statuses(seen, "GET") == [404, 401] and sleeps == []


# ---------------------------------------------------------------- connection errors


def test_a_get_is_retried_after_a_connection_error(live: str, tenant: TenantCtx, transport: Recording,
                                                   seen: Seen) -> None:
    sleeps = Sleeps()
    with AtelierClient(live, api_key=tenant.key, transport=transport, sleep=sleeps, retry=HALF) as atelier:
        job = atelier.submit(story_spec(), kind="story")
        transport.fail(lambda r: r.method == "GET", httpx.ConnectError("connection refused"))
        transport.fail(lambda r: r.method == "GET", httpx.ReadTimeout("timed out"))
        assert atelier.job(job.id).id == job.id
    assert statuses(seen, "GET") == ["ConnectError", "ReadTimeout", 200] and sleeps == [0.375, 0.75]


def test_a_post_without_idempotency_key_is_not_retried_after_a_connection_error(
        live: str, tenant: TenantCtx, transport: Recording, seen: Seen, factory: sessionmaker[Session]) -> None:
    sleeps = Sleeps()
    with AtelierClient(live, api_key=tenant.key, transport=transport, sleep=sleeps) as atelier:
        transport.fail(is_job_submit, httpx.ReadError("connection reset"), after_send=True)
        with pytest.raises(httpx.ReadError):
            atelier.submit(story_spec(), kind="story")
    assert statuses(seen, "POST") == [202] and sleeps == [], "the job was made; sending it again would make two"
    assert jobs_of(factory, tenant) == 1


def test_a_job_submit_with_an_idempotency_key_is_retried_and_makes_one_job(
        live: str, tenant: TenantCtx, transport: Recording, seen: Seen, factory: sessionmaker[Session]) -> None:
    sleeps = Sleeps()
    with AtelierClient(live, api_key=tenant.key, transport=transport, sleep=sleeps, retry=HALF) as atelier:
        transport.fail(is_job_submit, httpx.ReadError("connection reset"), after_send=True)  # the answer is lost
        job = atelier.submit(story_spec(), kind="story", idempotency_key="order-42", external_id="order-42")
    assert statuses(seen, "POST") == [202, 200], "the retry is answered with the job the lost answer carried"
    assert [h.get("idempotency-key") for *_x, h in seen.of("POST")] == ["order-42", "order-42"]
    assert sleeps == [0.375] and job.external_id == "order-42" and jobs_of(factory, tenant) == 1


def test_a_delete_is_retried_after_a_connection_error_but_a_cancel_is_not(
        live: str, tenant: TenantCtx, transport: Recording, seen: Seen) -> None:
    sleeps = Sleeps()
    with AtelierClient(live, api_key=tenant.key, transport=transport, sleep=sleeps, retry=HALF) as atelier:
        brand = atelier.create_brand("Acme", ["#112233"])
        transport.fail(lambda r: r.method == "DELETE", httpx.ConnectError("connection refused"))
        assert atelier.delete_brand(brand.id) is None
        job = atelier.submit(story_spec(), kind="story")
        transport.fail(lambda r: r.url.path.endswith("/cancel"), httpx.ConnectError("connection refused"))
        with pytest.raises(httpx.ConnectError):
            atelier.cancel(job.id)
    assert statuses(seen, "DELETE") == ["ConnectError", 204]
    assert statuses(seen, "POST", f"/v1/jobs/{job.id}/cancel") == ["ConnectError"] and sleeps == [0.375]


# ---------------------------------------------------------------- Retry-After's two forms


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now=now.timestamp()) == 7.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now.timestamp()) == 90.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now.timestamp()) == 0.0
    assert retry_after_seconds("soon", now=now.timestamp()) is None and retry_after_seconds(None, now=0) is None


def test_an_http_date_retry_after_is_waited_for() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    answers = [httpx.Response(503, headers={"Retry-After": format_datetime(now + timedelta(seconds=12), usegmt=True)},
                              json={"title": "Broker unavailable", "status": 503}),
               httpx.Response(200, json={"items": []})]
    sleeps = Sleeps()
    policy = RetryPolicy(clock=lambda: now.timestamp())
    with AtelierClient("http://atelier.test", api_key="k", transport=httpx.MockTransport(lambda _r: answers.pop(0)),
                       sleep=sleeps, retry=policy) as atelier:
        assert atelier.keys() == []
    assert sleeps == [12.0] and answers == []
