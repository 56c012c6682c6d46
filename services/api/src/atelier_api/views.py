"""ORM rows → response models (built while the session is open, returned after it closes)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from atelier_control.asset_urls import AssetLinks
from atelier_control.models import Artifact, Job, Stage

from .schemas import ArtifactView, ItemFailureView, JobView, StageView


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored in UTC); PostgreSQL aware ones. Answer in UTC either way."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def artifact_url(artifact_id: str) -> str:
    return f"/v1/artifacts/{artifact_id}/content"


def stage_view(stage: Stage) -> StageView:
    started, finished = as_utc(stage.started_at), as_utc(stage.finished_at)
    seconds = (finished - started).total_seconds() if started and finished else None
    return StageView(
        id=stage.id, name=stage.name, item=stage.item, status=stage.status,  # type: ignore[arg-type]
        attempts=stage.attempts, worker=stage.worker, queued_at=as_utc(stage.queued_at),
        started_at=started, finished_at=finished, seconds=seconds, error=stage.error,
    )


def job_view(job: Job, stages: Sequence[Stage]) -> JobView:
    ordered = sorted(stages, key=lambda s: (s.position, s.item))
    if job.status == "succeeded":
        progress = 1.0
    elif ordered:
        progress = sum(1 for s in ordered if s.status == "succeeded") / len(ordered)
    else:
        progress = 0.0
    created = as_utc(job.created_at)
    assert created is not None
    failures = [ItemFailureView(stage=s.name, item=s.item, error=s.error) for s in ordered if s.status == "failed"]
    return JobView(
        id=job.id, kind=job.kind, status=job.status, progress=progress,  # type: ignore[arg-type]
        created_at=created, started_at=as_utc(job.started_at), finished_at=as_utc(job.finished_at),
        error=job.error, gpu_seconds=job.gpu_seconds or 0.0, spec=job.spec,
        stages=[stage_view(s) for s in ordered], failures=failures,
        partial=job.status == "succeeded" and bool(failures),
        external_id=job.external_id, metadata=dict(job.labels or {}),
    )


def artifact_view(artifact: Artifact, links: AssetLinks | None = None, *, now: float | None = None) -> ArtifactView:
    """The artifact as the API shows it; with ``links``, its expiring ``download_url`` (as of ``now``) too."""
    created = as_utc(artifact.created_at)
    assert created is not None
    link = (links.link(artifact.id, artifact.key, content_type=artifact.content_type, filename=artifact.name, now=now)
            if links is not None else None)
    return ArtifactView(
        id=artifact.id, kind=artifact.kind, name=artifact.name, content_type=artifact.content_type,
        size_bytes=artifact.size_bytes, sha256=artifact.sha256, width=artifact.width, height=artifact.height,
        meta=artifact.meta or {}, created_at=created, stage_id=artifact.stage_id, key=artifact.key, url=artifact_url(artifact.id),
        download_url=link.url if link else None, download_url_expires_at=link.expires_at if link else None,
    )
