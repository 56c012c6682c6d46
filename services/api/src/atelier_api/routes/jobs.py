"""``/v1/jobs``: submit, list, read, cancel, list artifacts, stream events."""

from __future__ import annotations

from typing import Annotated, Any

from atelier_contracts.specs import JobRequest
from fastapi import APIRouter, Header, Path, Query, Response

from .. import artifacts as artifact_service
from .. import jobs as job_service
from .. import streams
from ..concurrency import CONCURRENCY_LIMITED_DOC, ConcurrencyDep
from ..deps import (
    CeleryDep,
    MetricsDep,
    RuntimeDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    TenantDep,
    WriterTenantDep,
)
from ..problems import problem_responses
from ..ratelimit import RATE_LIMITED_DOC, JobLimitsDep
from ..schemas import ArtifactList, JobKindName, JobList, JobStatusName, JobView
from ..streams import EventStreamResponse

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(401, 422))

JobId = Annotated[str, Path(max_length=64, description="Job id, e.g. `job_3f2a...`.")]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=200,
    description="Same key and body → the same job (200); same key, other body → 409.",
)]

# OpenAPI 3.1 reads a text/event-stream ``schema`` as the schema of one event (3.2 calls it itemSchema)
_SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "Event id; send it back as Last-Event-ID."},
        "event": {"type": "string", "description": "Event type, e.g. `stage.succeeded`, `job.succeeded`."},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "description": "JSON: `{id, type, job_id, data, created_at}`."},
    },
}
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`text/event-stream`: `id: <event id>`, `event: <type>`, "
                       "`data: {id, type, job_id, data, created_at}`; ends after the job's terminal event.",
        "content": {"text/event-stream": {"schema": _SSE_EVENT_SCHEMA}},
    },
}


@router.post(
    "", status_code=202, response_model=JobView, summary="Submit a campaign or story job",
    responses={200: {"model": JobView, "description": "Replay of an Idempotency-Key: the job stored the first time."},
               **problem_responses(409, 413, 503), **RATE_LIMITED_DOC},
)
def submit_job(body: JobRequest, response: Response, principal: WriterTenantDep, session: SessionDep, celery: CeleryDep,
               metrics: MetricsDep, limits: JobLimitsDep, settings: SettingsDep,
               idempotency_key: IdempotencyKey = None) -> JobView:
    with limits.admit(session, tenant_id=principal.tenant_id) as admission:  # 429 over a rate limit or quota
        result = job_service.submit_job(session, celery, tenant_id=principal.tenant_id, request=body,
                                        idempotency_key=idempotency_key, planner_backend=settings.planner_backend,
                                        reserve=admission.reserve)
        admission.created = result.created
    if result.created:
        metrics.jobs_submitted.labels(result.job.kind).inc()
    else:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{result.job.id}"
    return result.job


@router.get("", response_model=JobList, summary="List jobs, newest first")
def list_jobs(
    principal: TenantDep, session: SessionDep,
    status: Annotated[JobStatusName | None, Query()] = None,
    kind: Annotated[JobKindName | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page.")] = None,
    external_id: Annotated[str | None, Query(min_length=1, max_length=200,
                                             description="Only jobs submitted with this `external_id`.")] = None,
) -> JobList:
    return job_service.list_jobs(session, tenant_id=principal.tenant_id, status=status, kind=kind, limit=limit,
                                 cursor=cursor, external_id=external_id)


@router.get("/{job_id}", response_model=JobView, responses=problem_responses(404), summary="Read a job")
def get_job(job_id: JobId, principal: TenantDep, session: SessionDep) -> JobView:
    return job_service.get_job_view(session, tenant_id=principal.tenant_id, job_id=job_id)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobView, responses=problem_responses(404, 409),
             summary="Cancel a job")
def cancel_job(job_id: JobId, principal: TenantDep, session: SessionDep, runtime: RuntimeDep) -> JobView:
    return job_service.cancel(session, runtime, tenant_id=principal.tenant_id, job_id=job_id)


@router.post("/{job_id}/retry", status_code=202, response_model=JobView,
             responses={**problem_responses(404, 409), **RATE_LIMITED_DOC},
             summary="Retry a failed job from its failed stage, or only the failed items of a partial one")
def retry_job(job_id: JobId, principal: TenantDep, session: SessionDep, celery: CeleryDep,
              limits: JobLimitsDep) -> JobView:
    with limits.admit(session, tenant_id=principal.tenant_id) as admission:  # a retry spends GPU time too
        view = job_service.retry(session, celery, tenant_id=principal.tenant_id, job_id=job_id)
        admission.created = True
    return view


@router.get("/{job_id}/artifacts", response_model=ArtifactList, responses=problem_responses(404),
            summary="List a job's artifacts")
def list_artifacts(job_id: JobId, principal: TenantDep, session: SessionDep,
                   kind: Annotated[str | None, Query(max_length=32)] = None) -> ArtifactList:
    return artifact_service.list_job_artifacts(session, tenant_id=principal.tenant_id, job_id=job_id, kind=kind)


@router.get("/{job_id}/events", response_class=EventStreamResponse,
            responses={**_SSE_DOC, **problem_responses(404), **CONCURRENCY_LIMITED_DOC},
            summary="Stream a job's events (SSE)")
def stream_events(
    job_id: JobId, principal: TenantDep, session: SessionDep, factory: SessionFactoryDep, settings: SettingsDep,
    metrics: MetricsDep, concurrency: ConcurrencyDep,
    after: Annotated[int | None, Query(ge=0, le=streams.MAX_EVENT_ID, description="Resume after this event id.")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
) -> EventStreamResponse:
    start = streams.resume_point(last_event_id, after)
    job_service.ensure_job(session, tenant_id=principal.tenant_id, job_id=job_id)  # 404 before streaming
    return streams.tenant_stream(concurrency, metrics, factory, tenant_id=principal.tenant_id, job_id=job_id,
                                 after_id=start, poll_s=settings.sse_poll_s)
