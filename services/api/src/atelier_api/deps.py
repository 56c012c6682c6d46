"""Request dependencies: everything lives on ``app.state`` (built once in the lifespan)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from atelier_contracts.errors import Unauthorized
from atelier_control.auth import authenticate_key
from atelier_runtime.settings import Settings
from atelier_runtime.state import RuntimeState
from atelier_runtime.storage import ArtifactStore
from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from .metrics import ApiMetrics


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant that owns the API key, and the key (its id and role)."""

    tenant_id: str
    tenant_name: str
    key_id: str
    role: str  # "admin" or "member" (atelier_control.models.KEY_ROLES)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, closed (uncommitted work rolled back) when the route returns."""
    session: Session = request.app.state.session_factory()
    try:
        yield session
    finally:
        session.close()


def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def get_celery(request: Request) -> Celery:
    celery: Celery = request.app.state.celery
    return celery


def get_runtime(request: Request) -> RuntimeState:
    runtime: RuntimeState = request.app.state.runtime
    return runtime


def get_metrics(request: Request) -> ApiMetrics:
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


def current_tenant(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The tenant owning the bearer key; 401 (with ``WWW-Authenticate: Bearer``) otherwise."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized("send the API key as 'Authorization: Bearer <key>'")
    tenant, key = authenticate_key(session, credentials.credentials)
    principal = Principal(tenant_id=tenant.id, tenant_name=tenant.name, key_id=key.id, role=key.role)
    # end the read transaction: on SQLite (WAL) a snapshot held into a later write fails as BUSY_SNAPSHOT
    session.commit()
    return principal


TenantDep = Annotated[Principal, Depends(current_tenant)]
