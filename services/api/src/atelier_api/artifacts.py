"""Artifact service functions: list a job's artifacts, read one artifact's bytes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from atelier_contracts.errors import NotFound
from atelier_control.jobs import get_job
from atelier_control.models import Artifact
from atelier_runtime.storage import ArtifactStore
from sqlalchemy import select
from sqlalchemy.orm import Session

from .schemas import ArtifactList
from .views import artifact_view


@dataclass(frozen=True)
class Content:
    data: bytes
    content_type: str
    sha256: str
    name: str


def list_job_artifacts(session: Session, *, tenant_id: str, job_id: str, kind: str | None = None) -> ArtifactList:
    get_job(session, tenant_id=tenant_id, job_id=job_id)  # 404 for unknown and other tenants' jobs
    stmt = select(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.job_id == job_id)
    if kind is not None:
        stmt = stmt.where(Artifact.kind == kind)
    rows = session.scalars(stmt.order_by(Artifact.created_at, Artifact.id))
    return ArtifactList(items=[artifact_view(a) for a in rows])


def get_artifact(session: Session, *, tenant_id: str, artifact_id: str) -> Artifact:
    artifact = session.scalar(select(Artifact).where(Artifact.id == artifact_id, Artifact.tenant_id == tenant_id))
    if artifact is None:
        raise NotFound(f"artifact {artifact_id} not found")
    return artifact


def read_content(store: ArtifactStore, artifact: Artifact) -> Content:
    """The stored bytes; the digest is of what is served, not what the row remembers."""
    data = store.get(artifact.key)
    return Content(data=data, content_type=artifact.content_type, sha256=hashlib.sha256(data).hexdigest(),
                   name=artifact.name)
