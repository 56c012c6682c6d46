"""Fixtures for stage-function unit tests (planner, renderer): real StageContexts on a local artifact folder,
a recording app stub."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from atelier_contracts.tasks import StageTask
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext, WorkerResources


class AppStub:
    """Stands in for the Celery app: records send_task calls instead of publishing."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []

    def send_task(self, name: str, args: list[Any] | None = None, **kwargs: Any) -> None:
        self.sent.append((name, list(args or [])))


@pytest.fixture
def resources(tmp_path: Path) -> WorkerResources:
    return WorkerResources(Settings(home=tmp_path))


@pytest.fixture
def app_stub(resources: WorkerResources) -> AppStub:
    app = AppStub()
    app.atelier_resources = resources  # type: ignore[attr-defined]  # what stage_runner.resources(app) reads
    return app


@pytest.fixture
def make_ctx(resources: WorkerResources, app_stub: AppStub) -> Callable[..., StageContext]:
    def make(*, stage: str, kind: str, spec: dict[str, Any], upstream: dict[str, Any] | None = None,
             job_id: str = "job-1", tenant_id: str = "t1", item: str = "") -> StageContext:
        task = StageTask(job_id=job_id, tenant_id=tenant_id, stage_id=f"{job_id}:{stage}:{item}", stage=stage,
                         item=item, kind=kind, spec=spec, upstream=upstream or {},
                         key_prefix=f"tenants/{tenant_id}/jobs/{job_id}")
        return StageContext(task, resources, app_stub)  # type: ignore[arg-type]

    return make


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for a migration test: a SQLite file, and a fresh PostgreSQL database on the machine's
    server (dropped afterwards; skipped when none answers)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    psycopg = pytest.importorskip("psycopg")
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"atelier_mig_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
