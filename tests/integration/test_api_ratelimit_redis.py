"""The jobs-per-minute window on the real Redis: shared by API replicas, on Redis's clock, keys expire."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from atelier_api import create_app
from atelier_api.ratelimit import JobLimits, RedisWindow, Slot
from atelier_control.auth import create_tenant
from atelier_control.db import make_engine, session_factory, session_scope
from atelier_control.models import Base
from atelier_runtime.settings import Settings
from atelier_runtime.state import MemoryRuntime
from atelier_runtime.storage import LocalStore
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "api"))
from api_testkit import campaign_spec  # noqa: E402

pytestmark = pytest.mark.integration


class RecordingCelery:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_task(self, name: str, args: Any = None, **_: Any) -> None:
        self.sent.append((name, args))


def test_redis_window_is_exact_and_expires(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    window = RedisWindow(r, namespace="atelier-test:rl")
    slots = [window.acquire("t", limit=3, window_s=1.5) for _ in range(3)]
    assert all(isinstance(s, Slot) for s in slots)
    wait = window.acquire("t", limit=3, window_s=1.5)
    assert isinstance(wait, float) and 0 < wait <= 1.5
    assert r.zcard("atelier-test:rl:t") == 3, "a refused request leaves no entry"
    assert 0 < r.pttl("atelier-test:rl:t") <= 1500, "idle tenants' keys expire with the window"
    window.release(slots[0])
    assert isinstance(window.acquire("t", limit=3, window_s=1.5), Slot)
    assert isinstance(window.acquire("other", limit=3, window_s=1.5), Slot)
    r.delete("atelier-test:rl:t", "atelier-test:rl:other")


def test_two_api_replicas_share_one_limit(redis_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, broker_url=redis_url, rate_limit_jobs_per_minute=4)
    engine = make_engine(settings.resolved_database_url())
    Base.metadata.create_all(engine)
    factory = session_factory(engine)
    with session_scope(factory) as s:
        tenant, key = create_tenant(s, "acme")
    headers = {"Authorization": f"Bearer {key}"}
    celery = RecordingCelery()
    redis.Redis.from_url(redis_url).delete(f"atelier:ratelimit:jobs:{tenant.id}")

    def replica() -> TestClient:
        app = create_app(settings, engine=engine, store=LocalStore(tmp_path / "a"), celery=celery,  # type: ignore[arg-type]
                         runtime=MemoryRuntime())
        return TestClient(app)

    with replica() as one, replica() as two:
        codes = []
        for i in range(6):
            client = one if i % 2 == 0 else two
            r = client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec(taglines=[f"t{i}"])},
                            headers=headers)
            codes.append(r.status_code)
            if r.status_code == 429:
                assert 1 <= int(r.headers["retry-after"]) <= 60
        assert isinstance(one.app.state.job_limits.window, RedisWindow)  # type: ignore[attr-defined]
        assert isinstance(JobLimits(settings).window, RedisWindow)
    assert codes == [202, 202, 202, 202, 429, 429], codes
    assert len(celery.sent) == 4
    redis.Redis.from_url(redis_url).delete(f"atelier:ratelimit:jobs:{tenant.id}")
    engine.dispose()
