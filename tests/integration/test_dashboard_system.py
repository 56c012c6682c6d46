"""The dashboard's System page in services mode: queue depths read from the real Redis broker, and a
real worker process answering Celery's inspect broadcast with its queues."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from atelier_api import create_app
from atelier_api.dashboard import system
from atelier_contracts.tasks import stage_task_name
from atelier_control.auth import create_tenant
from atelier_control.db import make_engine, session_factory, session_scope
from atelier_migrations import upgrade
from atelier_runtime.celeryapp import make_celery
from atelier_runtime.settings import Settings
from fastapi.testclient import TestClient

from tests.procs import Proc, wait_until

pytestmark = pytest.mark.integration


def test_system_page_shows_redis_queue_depths_and_live_workers(redis_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, broker_url=redis_url, storage="local")
    upgrade(settings.resolved_database_url())
    producer = make_celery(settings)
    try:
        # nothing consumes these queues in this test: the messages wait in Redis
        for _ in range(3):
            producer.send_task(stage_task_name("render.ad"), args=[{}])
        for _ in range(2):
            producer.send_task(stage_task_name("gpu.background"), args=[{}], priority=5)  # a priority list too
        depths = system.queue_depths(settings)
        assert depths.mode == "redis"
        got = {d.name: d.ready for d in depths.depths}
        assert got["render"] == 3 and got["gpu.diffusion"] == 2 and got["planning"] == 0

        env = {**os.environ, "ATELIER_HOME": str(tmp_path), "ATELIER_BROKER_URL": redis_url, "PYTHONUNBUFFERED": "1"}
        worker = Proc("orchestrator", ["worker", "--queues", "orchestrator", "--loglevel", "WARNING",
                                       "--name", "orch@dashboard-test"], env, tmp_path).start()
        try:
            def answered() -> bool:
                w = system.workers_online(settings, producer, own_job=lambda _: False, timeout_s=1.0)
                return any(x.name == "orch@dashboard-test" for x in w.items)

            wait_until(answered, timeout=60, interval=0.5, what="the worker to answer inspect")

            engine = make_engine(settings.resolved_database_url())
            with session_scope(session_factory(engine)) as s:
                _, key = create_tenant(s, "acme")
            with TestClient(create_app(settings, engine=engine)) as client:
                login = client.get("/dashboard/login")
                token = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)  # type: ignore[union-attr]
                client.post("/dashboard/login", data={"api_key": key, "csrf_token": token})
                page = client.get("/dashboard/system").text
            engine.dispose()
        finally:
            worker.stop()
        assert "orch@dashboard-test" in page and "queues: orchestrator" in page
        rows = dict(re.findall(r"<tr><td><code>([\w.]+)</code></td><td class=\"num\">(\d+)</td></tr>", page))
        assert rows["render"] == "3" and rows["gpu.diffusion"] == "2" and rows["orchestrator"] == "0"
    finally:
        producer.close()
