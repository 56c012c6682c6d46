"""Job service functions used by the API and the CLI (create, cancel); the orchestrator runs them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from atelier_contracts.errors import Conflict, NotFound
from atelier_contracts.specs import CampaignSpec, StorySpec
from atelier_runtime.state import RuntimeState
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .events import emit
from .models import TERMINAL, Job, Stage, new_id, utcnow


def request_hash(kind: str, spec: dict[str, Any], external_id: str | None = None,
                 labels: dict[str, str] | None = None) -> str:
    body: dict[str, Any] = {"kind": kind, "spec": spec}
    if external_id is not None or labels:  # jobs stored before these fields keep their hash
        body.update(external_id=external_id, metadata=labels or {})
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def create_job(session: Session, *, tenant_id: str, kind: str, spec: CampaignSpec | StorySpec,
               idempotency_key: str | None = None, external_id: str | None = None,
               labels: dict[str, str] | None = None,
               reserve: Callable[[str, dict[str, Any]], float | None] | None = None) -> tuple[Job, bool]:
    """Insert a queued job (and its ``job.created`` event); returns (job, created).

    The same idempotency key with the same body (spec, ``external_id`` and ``metadata``) returns the existing job;
    with another body, Conflict. ``reserve(kind, spec_json)``: the GPU-seconds to hold against the tenant's quota
    until the job ends (stored as ``gpu_reserved_s``).
    """
    spec_json = spec.model_dump(mode="json")
    digest = request_hash(kind, spec_json, external_id, labels)
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))
        if existing is not None:
            if existing.request_hash != digest:
                raise Conflict("Idempotency-Key was already used with a different request body", field="Idempotency-Key")
            return existing, False
    job = Job(id=new_id("job"), tenant_id=tenant_id, kind=kind, spec=spec_json, idempotency_key=idempotency_key, request_hash=digest,
              external_id=external_id, labels=dict(labels or {}),
              gpu_reserved_s=reserve(kind, spec_json) if reserve is not None else None)
    session.add(job)
    session.flush()  # the row exists when this returns: a caller may add rows that reference it (stages, artifacts)
    emit(session, tenant_id=tenant_id, job_id=job.id, type="job.created", data={"kind": kind})
    return job, True


def get_job(session: Session, *, tenant_id: str, job_id: str, for_update: bool = False) -> Job:
    """The tenant's job, or NotFound (also for another tenant's job: 404, not 403)."""
    stmt = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
    if for_update:
        stmt = stmt.with_for_update()
    job = session.scalar(stmt)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def cancel_job(session: Session, runtime: RuntimeState, *, tenant_id: str, job_id: str) -> Job:
    """Cancel a job: no further stage starts; running GPU work stops at its next step."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id, for_update=True)
    if job.status in TERMINAL:
        if job.status == "canceled":
            return job
        raise Conflict(f"job {job_id} already {job.status}")
    now = utcnow()
    job.status = "canceled"
    job.finished_at = now
    session.execute(
        update(Stage)
        .where(Stage.job_id == job.id, Stage.status.in_(("pending", "queued", "running")))
        .values(status="canceled", finished_at=now)
    )
    emit(session, tenant_id=tenant_id, job_id=job.id, type="job.canceled", data={})
    runtime.cancel(job.id)
    return job


def retry_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """Give a failed job another go from where it stopped; the caller sends ``start_job`` after commit.

    The failed stage row, and the rows the failure canceled, go back to ``pending`` (their outputs and
    the stages that succeeded are kept). A job that succeeded with failed items (partial success) re-runs
    only those items, then its fan-in (``deliver``) again over every item; the job goes back to ``queued``, so ``start_job`` marks it
    running again and queues what is ready, and the reconciler restarts it if that message is lost.
    Attempt counters are not reset: a late result of an earlier attempt is still told apart.
    """
    job = get_job(session, tenant_id=tenant_id, job_id=job_id, for_update=True)
    rows = list(session.scalars(select(Stage).where(Stage.job_id == job.id).order_by(Stage.position, Stage.item)))
    failed = [r for r in rows if r.status == "failed"]
    if job.status != "failed" and not (job.status == "succeeded" and failed):
        raise Conflict(f"job {job_id} is {job.status}; only a failed job, or one that succeeded with failed items, "
                       "can be retried")
    # the failed rows, what they left not run, and the fan-ins after them that gathered only the items that
    # succeeded (a partial job's deliver): they run again with every item
    first = min((r.position for r in failed), default=0)
    rows = [r for r in rows if r.status in ("failed", "canceled")
            or (r.status == "succeeded" and failed and not r.item and r.position > first)]
    for row in rows:
        if row.status == "failed":
            emit(session, tenant_id=tenant_id, job_id=job.id, type="stage.retrying",
                 data={"stage": row.name, "item": row.item, "attempt": row.attempts + 1, "delay_s": 0.0,
                       "error": row.error, "manual": True})
        row.status, row.error, row.worker = "pending", None, None
        row.queued_at = row.started_at = row.finished_at = None
    job.status, job.error, job.finished_at = "queued", None, None
    session.flush()
    return job
