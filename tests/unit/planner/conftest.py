"""Fixtures for planner tests: real StageContexts on a local artifact folder, a recording app stub."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from atelier_shared.settings import Settings
from atelier_shared.stage_runner import StageContext, WorkerResources
from atelier_shared.tasks import StageTask


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


# ---------------------------------------------------------------- LLM doubles (issue 3)

import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from llm_double import ChatDouble  # noqa: E402


@pytest.fixture
def llm_double() -> Iterator[ChatDouble]:
    """A chat-completions server on 127.0.0.1 (a thread) that answers every planner prompt."""
    double = ChatDouble().start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def openai_settings(llm_double: ChatDouble, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, planner_backend="openai", llm_base_url=llm_double.base_url, llm_model="double-llm",
                    llm_timeout_s=0.5, llm_max_retries=1, llm_retry_backoff_s=0.01)


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_llm import write_tiny_llm

    return write_tiny_llm(tmp_path_factory.mktemp("tiny-llm") / "tiny-llm")


@pytest.fixture(scope="session")
def tiny_engine(tiny_llm_dir: Path) -> Any:
    """The transformers engine on the tiny model (loaded once per session; one torch thread keeps it fast)."""
    pytest.importorskip("xgrammar", reason="the transformers backend needs xgrammar (constraints.txt pins it)")
    from atelier_planner.llm.engines import TransformersEngine

    return TransformersEngine(tiny_llm_dir, max_new_tokens=400, threads=1)
