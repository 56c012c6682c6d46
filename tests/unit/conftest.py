"""Fixtures for stage-function unit tests (planner, renderer): real StageContexts on a local artifact folder,
a recording app stub."""

from __future__ import annotations

from collections.abc import Callable
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
