"""Request dependencies: everything lives on ``app.state`` (built once in the lifespan).

The ones that only read ``app.state`` are ``async def``: FastAPI runs a plain ``def`` dependency in the thread
pool, a hop that costs more than the attribute read itself; the session and the key check (database I/O) stay
plain functions and run there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from atelier_contracts.errors import Unauthorized
from atelier_control.auth import KeyOwner, key_owner
from atelier_control.db import end_read
from atelier_runtime.settings import Settings
from atelier_runtime.state import RuntimeState
from atelier_runtime.storage import ArtifactStore
from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from .metrics import ApiMetrics

# who is calling: the tenant that owns the API key (id, name), and the key (id, role: "admin" or "member")
Principal = KeyOwner


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request, closed (uncommitted work rolled back) when the route returns.

    Async, so opening and closing it costs no thread-pool hops: making a session does no I/O (it connects at its
    first statement), and neither does closing one whose work was committed; only a session still in a
    transaction (a route that failed half-way) is closed in the thread pool, since its rollback talks to the
    database."""
    session: Session = request.app.state.session_factory()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


async def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


async def get_celery(request: Request) -> Celery:
    celery: Celery = request.app.state.celery
    return celery


async def get_runtime(request: Request) -> RuntimeState:
    runtime: RuntimeState = request.app.state.runtime
    return runtime


async def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
# "function" scope: the session closes before the response is sent, so a streamed response holds none
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
RuntimeDep = Annotated[RuntimeState, Depends(get_runtime)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]

bearer = HTTPBearer(auto_error=False, description="API key of a tenant: `Authorization: Bearer atl_...`")


def _principal(session: Session, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("send the API key as 'Authorization: Bearer <key>'")
    return key_owner(session, credentials.credentials)


def current_tenant(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The tenant owning the bearer key; 401 (with ``WWW-Authenticate: Bearer``) otherwise."""
    principal = _principal(session, credentials)
    # end the read transaction: the route may wait on something slow (an upload, a planner), and on SQLite (WAL)
    # a snapshot held into a later write fails as BUSY_SNAPSHOT
    session.commit()
    return principal


def current_tenant_for_write(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """``current_tenant`` for a route that writes at once (``POST /v1/jobs``): on PostgreSQL the key check stays
    in the route's transaction (``atelier_control.db.end_read``)."""
    principal = _principal(session, credentials)
    end_read(session)
    return principal


TenantDep = Annotated[Principal, Depends(current_tenant)]
WriterTenantDep = Annotated[Principal, Depends(current_tenant_for_write)]
