"""Fixtures for the API: SQLite file DB, local store, a real (memory-broker) Celery app, MemoryRuntime."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from atelier_api import create_app
from atelier_api.ratelimit import JobLimits
from atelier_control.auth import create_tenant
from atelier_control.db import make_engine, session_factory, session_scope
from atelier_control.models import Base, Job
from atelier_runtime.celeryapp import make_celery
from atelier_runtime.settings import Settings
from atelier_runtime.state import MemoryRuntime
from atelier_runtime.storage import LocalStore
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

# the helpers module sits next to this file; importable whatever pytest's import mode
sys.path.insert(0, str(Path(__file__).parent))
from api_testkit import UPLOAD_MAX_BYTES, TenantCtx  # noqa: E402


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, upload_max_bytes=UPLOAD_MAX_BYTES, sse_poll_s=0.02)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings.resolved_database_url())
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "artifacts")


@dataclass
class Sent:
    name: str
    args: list[Any]
    job_committed: bool


@pytest.fixture
def celery(settings: Settings, factory: sessionmaker[Session]) -> Iterator[Any]:
    """A real Celery producer on the memory broker whose send_task records each call.

    It also records whether the job named in the args was already committed (visible to
    another session) when the task was sent: the API must commit first.
    """
    app = make_celery(settings)
    original = app.send_task
    sent: list[Sent] = []

    def send_task(name: str, args: Any = None, **kwargs: Any) -> Any:
        job_id = (args or [None])[0]
        with factory() as s:
            committed = s.get(Job, job_id) is not None if isinstance(job_id, str) else False
        sent.append(Sent(name, list(args or []), committed))
        return original(name, args=args, **kwargs)

    app.send_task = send_task  # type: ignore[method-assign]
    app.sent = sent  # type: ignore[attr-defined]
    yield app
    app.close()


@pytest.fixture
def runtime() -> MemoryRuntime:
    return MemoryRuntime()


@pytest.fixture
def app(settings: Settings, engine: Engine, store: LocalStore, celery: Any, runtime: MemoryRuntime) -> Any:
    return create_app(settings, engine=engine, store=store, celery=celery, runtime=runtime)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def _tenant(factory: sessionmaker[Session], name: str) -> TenantCtx:
    with session_scope(factory) as s:
        tenant, key = create_tenant(s, name)
        tenant_id = tenant.id
    return TenantCtx(tenant_id, key, {"Authorization": f"Bearer {key}"})


@pytest.fixture
def tenant(factory: sessionmaker[Session]) -> TenantCtx:
    return _tenant(factory, "acme")


@pytest.fixture
def other_tenant(factory: sessionmaker[Session]) -> TenantCtx:
    return _tenant(factory, "globex")


@pytest.fixture
def make_client(settings: Settings, engine: Any, store: Any, celery: Any, runtime: Any) -> Iterator[Any]:
    """Apps with these settings changed (`make(window=..., **overrides)`: `window` replaces the rate limiter's
    shared window), each entered as a TestClient and closed at the end."""
    clients: list[TestClient] = []

    def make(window: Any = None, **overrides: Any) -> TestClient:
        app = create_app(settings.model_copy(update=overrides), engine=engine, store=store, celery=celery,
                         runtime=runtime)
        if window is not None:
            app.state.job_limits = JobLimits(app.state.settings, window=window)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)
