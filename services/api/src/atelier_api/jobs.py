"""Job service functions behind the ``/v1/jobs`` routes."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from atelier_contracts import languages
from atelier_contracts.errors import InvalidInput
from atelier_contracts.specs import CampaignSpec, JobRequest, StorySpec
from atelier_contracts.tasks import T_START_JOB
from atelier_control import jobs as shared_jobs
from atelier_control.models import Artifact, Event, Job, Stage
from atelier_runtime.state import RuntimeState
from celery import Celery
from pydantic import ValidationError
from sqlalchemy import ColumnElement, String, and_, cast, delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import brands
from .problems import BrokerUnavailable, FieldErrors
from .schemas import FieldError, JobList, JobView
from .views import job_view

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    job: JobView
    created: bool


def parse_spec(request: JobRequest, *, planner_backend: str | None = None) -> CampaignSpec | StorySpec:
    """Validate the spec for its kind; errors are reported under ``spec.``.

    ``planner_backend`` (the deployment's ``ATELIER_PLANNER_BACKEND``): with ``rules``, a story in a language its
    templates do not write is refused here (``spec.language``), rather than planned in English under that label.
    """
    try:
        spec = request.parsed_spec()
    except ValidationError as exc:
        raise FieldErrors.from_pydantic(exc, prefix="spec") from exc
    if isinstance(spec, StorySpec) and planner_backend == "rules" and not languages.rules_can_write(spec.language):
        raise FieldErrors([FieldError(field="spec.language", message=languages.unsupported_message(spec.language))])
    return spec


def check_upload_refs(session: Session, *, tenant_id: str, spec: CampaignSpec | StorySpec) -> None:
    """Every artifact id a campaign names must be one of this tenant's uploads (control images included)."""
    if not isinstance(spec, CampaignSpec):
        return
    refs = {"spec.product.image": spec.product.image, "spec.brand.logo": spec.brand.logo}
    refs.update({f"spec.control.{i}.image": c.image for i, c in enumerate(spec.control)})
    wanted = {v for v in refs.values() if v is not None}
    if not wanted:
        return
    found = set(session.scalars(
        select(Artifact.id).where(Artifact.id.in_(wanted), Artifact.tenant_id == tenant_id, Artifact.kind == "upload")
    ))
    errors = [
        FieldError(field=field, message=f"{value!r} is not an upload of yours (POST /v1/uploads returns the id)")
        for field, value in refs.items() if value is not None and value not in found
    ]
    if errors:
        raise FieldErrors(errors)


def submit_job(session: Session, celery: Celery, *, tenant_id: str, request: JobRequest,
               idempotency_key: str | None = None, planner_backend: str | None = None,
               reserve: Callable[[str, dict[str, Any]], float | None] | None = None) -> Submitted:
    """Validate fully, store the job, commit, then hand its id to the orchestrator.

    A replay (same Idempotency-Key and body) returns the stored job and sends nothing. ``reserve``: the GPU-seconds
    a new job holds against the tenant's quota (``JobLimits.reservation``).
    """
    request = brands.apply_brand_kit(session, tenant_id=tenant_id, request=request)  # brand_id → brand (brand kit)
    spec = parse_spec(request, planner_backend=planner_backend)
    brands.check_campaign(session, tenant_id=tenant_id, spec=spec)
    check_upload_refs(session, tenant_id=tenant_id, spec=spec)
    try:
        job, created = shared_jobs.create_job(session, tenant_id=tenant_id, kind=request.kind, spec=spec,
                                              idempotency_key=idempotency_key, external_id=request.external_id,
                                              labels=request.metadata, reserve=reserve)
        session.commit()
    except IntegrityError:
        # a concurrent request with the same key won the insert: answer as a replay of it
        session.rollback()
        if idempotency_key is None:
            raise
        job, created = shared_jobs.create_job(session, tenant_id=tenant_id, kind=request.kind, spec=spec,
                                              idempotency_key=idempotency_key, external_id=request.external_id,
                                              labels=request.metadata, reserve=reserve)
        session.commit()
    if created:
        try:
            celery.send_task(T_START_JOB, args=[job.id])
        except Exception as exc:  # noqa: BLE001 - any broker failure: undo, so a retry starts clean
            log.error("could not send %s for %s: %s", T_START_JOB, job.id, exc)
            session.execute(delete(Event).where(Event.job_id == job.id))
            session.execute(delete(Job).where(Job.id == job.id))
            session.commit()
            raise BrokerUnavailable("the job could not be queued (broker unreachable); nothing was kept, "
                                    "retry later") from exc
    # a new job has no stage rows yet (the orchestrator makes them when it starts the job): nothing to read back
    return Submitted(job=job_view(job, []) if created else _view(session, job), created=created)


def get_job_view(session: Session, *, tenant_id: str, job_id: str) -> JobView:
    job = shared_jobs.get_job(session, tenant_id=tenant_id, job_id=job_id)
    return _view(session, job)


def ensure_job(session: Session, *, tenant_id: str, job_id: str) -> None:
    """NotFound unless the job exists and is the tenant's."""
    shared_jobs.get_job(session, tenant_id=tenant_id, job_id=job_id)


def cancel(session: Session, runtime: RuntimeState, *, tenant_id: str, job_id: str) -> JobView:
    job = shared_jobs.cancel_job(session, runtime, tenant_id=tenant_id, job_id=job_id)
    session.commit()
    return _view(session, job)


def retry(session: Session, celery: Celery, *, tenant_id: str, job_id: str) -> JobView:
    """Retry a failed job from its failed stage (commit first, then hand it to the orchestrator)."""
    job = shared_jobs.retry_job(session, tenant_id=tenant_id, job_id=job_id)
    session.commit()
    try:
        celery.send_task(T_START_JOB, args=[job.id])
    except Exception as exc:  # noqa: BLE001 - the job is queued; the reconciler starts it once the broker is back
        log.warning("could not send %s for retried %s (the reconciler will): %s", T_START_JOB, job.id, exc)
    return _view(session, job)


def list_jobs(session: Session, *, tenant_id: str, status: str | None = None, kind: str | None = None,
              limit: int = 20, cursor: str | None = None, search: str | None = None,
              external_id: str | None = None) -> JobList:
    """The tenant's jobs, newest first, one page at a time (keyset pagination on created_at, id).

    ``search`` matches a job id prefix or any text of the spec (product, brand, taglines, premise);
    ``external_id`` the caller's own reference exactly.
    """
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    if external_id is not None:
        stmt = stmt.where(Job.external_id == external_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    if search:
        stmt = stmt.where(_search_clause(search))
    if cursor is not None:
        created_at, last_id = decode_cursor(cursor)
        stmt = stmt.where(or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < last_id)))
    rows = list(session.scalars(stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    page, more = rows[:limit], len(rows) > limit
    stages = _stages_of(session, [j.id for j in page])
    return JobList(
        items=[job_view(j, stages.get(j.id, [])) for j in page],
        next_cursor=encode_cursor(page[-1]) if more and page else None,
    )


def _search_clause(search: str) -> ColumnElement[bool]:
    # the spec is stored as JSON text with non-ASCII escaped (json.dumps): look for the needle both ways
    text = search.strip()
    spec = cast(Job.spec, String)
    needles = {json.dumps(text)[1:-1], text}
    return or_(Job.id.startswith(text, autoescape=True),
               *(func.lower(spec).contains(n.lower(), autoescape=True) for n in needles))


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        if not isinstance(job_id, str):
            raise ValueError("id is not a string")
        return datetime.fromisoformat(created), job_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not one this API returned", field="cursor") from exc


def _view(session: Session, job: Job) -> JobView:
    return job_view(job, _stages_of(session, [job.id]).get(job.id, []))


def _stages_of(session: Session, job_ids: Sequence[str]) -> dict[str, list[Stage]]:
    out: dict[str, list[Stage]] = {}
    if not job_ids:
        return out
    for stage in session.scalars(select(Stage).where(Stage.job_id.in_(job_ids)).order_by(Stage.position, Stage.item)):
        out.setdefault(stage.job_id, []).append(stage)
    return out
