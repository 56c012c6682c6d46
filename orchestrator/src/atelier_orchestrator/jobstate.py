"""A job's row under its lock, and how a job ends: the two transitions the engine and the gates share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from atelier_control.events import emit
from atelier_control.models import Job, Stage, utcnow
from atelier_runtime.observability import JOBS_FINISHED
from sqlalchemy import select, update
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from atelier_contracts.tasks import ItemFailure


def lock_job(session: Session, job_id: str) -> Job | None:
    """The job's row, locked for this transaction (every writer of a job's stages and events takes it first)."""
    return session.scalar(select(Job).where(Job.id == job_id).with_for_update())


def finish_job(session: Session, job: Job, status: str, error: str | None = None,
               failures: list[ItemFailure] | None = None) -> None:
    """End the job (``succeeded``, ``failed``, ``canceled``); an unsuccessful end cancels its unfinished stages.

    ``failures``: the items that failed while the others went on; a ``job.succeeded`` with any is partial
    (its event says ``partial: true`` and lists them)."""
    now = utcnow()
    job.status = status
    job.finished_at = now
    job.error = error
    if status != "succeeded":
        session.execute(update(Stage).where(Stage.job_id == job.id, Stage.status.in_(("pending", "queued", "running")))
                        .values(status="canceled", finished_at=now))
    data: dict[str, Any] = {"error": error} if error else {"gpu_seconds": round(job.gpu_seconds, 3)}
    if failures:
        data["failures"] = [f.model_dump() for f in failures]
        if status == "succeeded":
            data["partial"] = True
    emit(session, tenant_id=job.tenant_id, job_id=job.id, type=f"job.{status}", data=data)
    JOBS_FINISHED.labels(job.kind, "partial" if status == "succeeded" and failures else status).inc()
