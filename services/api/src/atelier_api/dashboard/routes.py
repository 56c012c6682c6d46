"""Dashboard pages. Thin edges like the JSON routes: parse, call the same service functions, render.

    /dashboard/login, /logout            sign in with an API key (session cookie), sign out
    /dashboard/jobs                      live job list with filters and search; the new-job form
    /dashboard/plans/preview             layouts of the form's spec before any GPU time is spent
    /dashboard/jobs/{id}                 stage timeline (live over SSE), errors, cancel / retry / bundle
    /dashboard/jobs/{id}/plans|gallery   layouts, RPG grid, scene cast boxes; assets with scores and badges
    /dashboard/artifacts/{id}            full-size view (+ /content, /thumb)
    /dashboard/system                    queues, workers, GPU-seconds and images per hour, failures
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode
from uuid import uuid4

from atelier_contracts.errors import AtelierError, Conflict, InvalidInput, NotFound, Unauthorized
from atelier_control.models import JOB_STATUSES, Event, Job
from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import func, select
from starlette.responses import RedirectResponse, Response, StreamingResponse

from .. import artifacts as artifact_service
from .. import jobs as job_service
from .. import streams
from .. import uploads as upload_service
from ..bundle import plan_bundle, stream_bundle
from ..concurrency import ConcurrencyDep
from ..deps import (
    CeleryDep,
    MetricsDep,
    RuntimeDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StoreDep,
)
from ..problems import FieldErrors
from ..ratelimit import RateLimited, get_job_limits
from ..routes.plans import request_preview
from ..schemas import FieldError
from ..streams import EventStreamResponse
from ..views import artifact_view
from . import charts, system
from .forms import COMMON_SIZES, JobForm, build_request, read_form, uploaded_file
from .gallery import ThumbCache, build_gallery, thumb_width, thumbnail
from .plans import job_plans, plans_from_outputs
from .session import (
    clear_session,
    csrf_ok,
    new_session,
    read_session,
    sign_in,
    sign_out,
    viewer_from,
    write_session,
)
from .timeline import build_timeline, failing_stages, latest_progress, running_keys
from .web import (
    PREFIX,
    CheckedFormDep,
    FormDep,
    ViewerDep,
    is_fetch,
    render,
    safe_next,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix=PREFIX, include_in_schema=False)
root_router = APIRouter(include_in_schema=False)

JobId = Annotated[str, Path(max_length=64)]
ArtifactId = Annotated[str, Path(max_length=64)]
PAGE_SIZE = 25
_thumbs = ThumbCache()


def _now() -> datetime:
    return datetime.now(UTC)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@root_router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/jobs", status_code=307)


@router.get("")
@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/jobs", status_code=307)


# ---------------------------------------------------------------- sign-in


@router.get("/login")
def login_form(request: Request, session: SessionDep, settings: SettingsDep,
               next: Annotated[str | None, Query(max_length=2000)] = None) -> Response:
    data = read_session(request, max_age_s=settings.session_max_age_s)
    if viewer_from(session, data) is not None:
        return _redirect(safe_next(next))
    anon = data if data is not None and data.session_id is None else new_session()
    response = render(request, "login.html", {"csrf": anon.csrf, "next": safe_next(next), "error": None})
    write_session(request, response, anon, max_age_s=settings.session_max_age_s)
    return response


@router.post("/login")
def login(request: Request, session: SessionDep, settings: SettingsDep, form: FormDep) -> Response:
    data = read_session(request, max_age_s=settings.session_max_age_s)
    next_path = safe_next(str(form.get("next") or ""))
    key = str(form.get("api_key") or "")
    token = form.get("csrf_token")

    def refuse(error: str) -> Response:
        anon = new_session()  # a fresh token for the next try
        response = render(request, "login.html", {"csrf": anon.csrf, "next": next_path, "error": error}, status=401)
        write_session(request, response, anon, max_age_s=settings.session_max_age_s)
        return response

    if data is None or not csrf_ok(data.csrf, token if isinstance(token, str) else None):
        return refuse("The sign-in form expired (or cookies are blocked). Try again.")
    sign_out(session, data.session_id)  # whatever follows replaces this browser's cookie: its old session ends
    if not key.strip():
        session.commit()
        return refuse("Paste an API key (it starts with atl_).")
    try:
        signed_in = sign_in(session, key, max_age_s=settings.session_max_age_s)  # checked as the JSON API does
    except Unauthorized:
        session.commit()
        return refuse("That API key was not accepted: it is unknown, revoked or mistyped.")
    session.commit()
    response = _redirect(next_path)
    write_session(request, response, signed_in, max_age_s=settings.session_max_age_s)  # a new CSRF token too
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, viewer: ViewerDep, form: CheckedFormDep) -> Response:
    """Sign out: the session ends on the server (a copy of the cookie is signed out too), then the cookie goes."""
    sign_out(session, viewer.session_id)
    session.commit()
    response = _redirect(f"{PREFIX}/login")
    clear_session(request, response)
    return response


# ---------------------------------------------------------------- jobs


def _list_context(session: Any, viewer: Any, *, status: str | None, kind: str | None, q: str | None,
                  cursor: str | None) -> dict[str, Any]:
    page = job_service.list_jobs(session, tenant_id=viewer.tenant_id, status=status, kind=kind, limit=PAGE_SIZE,
                                 cursor=cursor, search=q)
    filters = {k: v for k, v in (("status", status), ("kind", kind), ("q", q)) if v}
    next_url = f"{PREFIX}/jobs?{urlencode({**filters, 'cursor': page.next_cursor})}" if page.next_cursor else None
    live = any(j.status in ("queued", "running") for j in page.items)
    return {"jobs": page.items, "filters": filters, "next_url": next_url, "cursor": cursor, "now": _now(),
            "live": live, "rows_url": f"{PREFIX}/jobs?{urlencode({**filters, **({'cursor': cursor} if cursor else {}), 'fragment': 'rows'})}"}


@router.get("/jobs")
def jobs_page(
    request: Request, viewer: ViewerDep, session: SessionDep,
    status: Annotated[str | None, Query(max_length=20)] = None,
    kind: Annotated[str | None, Query(max_length=20)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    fragment: Annotated[Literal["rows"] | None, Query()] = None,
    new: Annotated[Literal["campaign", "story"] | None, Query()] = None,
) -> Response:
    # the filter form sends every field; "any" is an empty value
    ctx = _list_context(session, viewer, status=status if status in JOB_STATUSES else None,
                        kind=kind if kind in ("campaign", "story") else None, q=(q or "").strip() or None,
                        cursor=cursor or None)
    if fragment == "rows":
        return render(request, "_job_rows.html", {**ctx, "viewer": viewer})
    form = JobForm(values={"kind": new or "campaign", "idempotency_key": uuid4().hex})
    return render(request, "jobs.html", {**ctx, "viewer": viewer, "form": form, "form_open": new is not None,
                                         "sizes": COMMON_SIZES, "notice": request.query_params.get("notice")})


def _form_page(request: Request, viewer: Any, session: Any, form: JobForm, *, status: int) -> Response:
    ctx = _list_context(session, viewer, status=None, kind=None, q=None, cursor=None)
    return render(request, "jobs.html", {**ctx, "viewer": viewer, "form": form, "form_open": True,
                                         "sizes": COMMON_SIZES, "notice": None}, status=status)


@router.post("/jobs")
def submit_job(request: Request, viewer: ViewerDep, session: SessionDep, store: StoreDep, celery: CeleryDep,
               settings: SettingsDep, metrics: MetricsDep, form: CheckedFormDep) -> Response:
    """The new-job form: the JSON API's validation, limits, upload and submission, errors shown at their fields."""
    job_form = read_form(form)
    key = job_form.values.get("idempotency_key") or None
    upload = uploaded_file(form) if job_form.kind == "campaign" else None

    def again(status: int) -> Response:
        return _form_page(request, viewer, session, job_form, status=status)

    try:
        # the whole spec first (the image as a stand-in id), so a bad form stores no upload
        job_service.parse_spec(build_request(job_form, product_image="pending-upload" if upload else None),
                               planner_backend=settings.planner_backend)
        # the JSON API's per-tenant rate limit and GPU quota: a 429 over either; .created once the job exists
        with get_job_limits(request).admit(session, tenant_id=viewer.tenant_id) as admission:
            image_id = None
            if upload is not None:
                upload.file.seek(0)
                image_id = upload_service.ingest_upload(
                    session, store, tenant_id=viewer.tenant_id, stream=upload.file, filename=upload.filename,
                    max_bytes=settings.upload_max_bytes, max_pixels=settings.upload_max_pixels).id
                metrics.uploads.inc()
            result = job_service.submit_job(session, celery, tenant_id=viewer.tenant_id, idempotency_key=key,
                                            request=build_request(job_form, product_image=image_id),
                                            planner_backend=settings.planner_backend, reserve=admission.reserve)
            admission.created = result.created
    except InvalidInput as exc:  # FieldErrors (spec), upload errors (413/415/422), brand checks
        job_form.add_errors(exc.errors if isinstance(exc, FieldErrors)
                            else [FieldError(field=exc.field or "", message=exc.detail)])
        return again(exc.status)
    except Conflict as exc:
        session.rollback()
        if exc.field != "Idempotency-Key":
            job_form.general.append(exc.detail)
            return again(409)
        existing = session.scalar(select(Job.id).where(Job.tenant_id == viewer.tenant_id, Job.idempotency_key == key))
        job_form.general.append(f"This form was already sent (job {existing}); it was not sent again.")
        job_form.values["idempotency_key"] = uuid4().hex  # sending it once more makes a new job
        return again(409)
    except AtelierError as exc:  # broker down (503), over a rate limit or quota (429), ...
        job_form.general.append(f"{exc.title}: {exc.detail}")
        return again(exc.status)
    if result.created:
        metrics.jobs_submitted.labels(result.job.kind).inc()
    return _redirect(f"{PREFIX}/jobs/{result.job.id}")


@router.post("/plans/preview")
def preview_plans(request: Request, viewer: ViewerDep, session: SessionDep, celery: CeleryDep, settings: SettingsDep,
                  form: CheckedFormDep) -> Response:
    """The form's spec planned by the planner's preview (``POST /v1/plans:preview``): layouts, no GPU time."""
    job_form = read_form(form)

    def answer(plans: Any, message: str | None, status: int) -> Response:
        ctx = {"viewer": viewer, "form": job_form, "plans": plans, "unavailable": message}
        return render(request, "_preview.html" if is_fetch(request) else "preview_page.html", ctx, status=status)

    body = build_request(job_form)  # the product image is not planned from, so the preview does without it
    try:
        spec = job_service.parse_spec(body)
    except FieldErrors as exc:
        job_form.add_errors(exc.errors)
        return answer(None, None, 422)
    session.close()  # nothing else needs the database while the planner works
    try:
        reply = request_preview(celery, kind=body.kind, spec=spec.model_dump(mode="json"),
                                tenant_id=viewer.tenant_id, timeout_s=settings.plan_preview_timeout_s)
    except AtelierError as exc:
        return answer(None, f"{exc.title}: {exc.detail}", exc.status)
    if not reply.get("ok"):
        error = reply.get("error") or {}
        return answer(None, f"The planner could not plan this spec: {error.get('message') or 'it failed'}", 502)
    plans = plans_from_outputs(body.kind, reply.get("stages") or {}, spec=spec.model_dump(mode="json"))
    plans.planner = {**plans.planner, "backend": reply.get("backend", plans.planner.get("backend"))}
    return answer(plans, None, 200)


def _job_context(session: Any, viewer: Any, job_id: str) -> dict[str, Any]:
    view = job_service.get_job_view(session, tenant_id=viewer.tenant_id, job_id=job_id)
    now = _now()
    progress = latest_progress(session, job_id=job_id, running=running_keys(view.stages))
    last_event = session.scalar(select(func.max(Event.id)).where(Event.job_id == job_id, Event.tenant_id ==
                                                                 viewer.tenant_id)) or 0
    # what the job went on without (an LLM plan that fell back to rules, an asset without a watermark, a failed
    # size of a partial job): the job.warning events, newest last, at most 20
    warnings = [e.data for e in session.scalars(
        select(Event).where(Event.job_id == job_id, Event.tenant_id == viewer.tenant_id, Event.type == "job.warning")
        .order_by(Event.id.desc()).limit(20))][::-1]
    return {"job": view, "timeline": build_timeline(view, now=now, progress=progress), "now": now,
            "failed": failing_stages(view.stages), "terminal": view.status in ("succeeded", "failed", "canceled"),
            "last_event": last_event, "viewer": viewer, "warnings": warnings}


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: JobId, viewer: ViewerDep, session: SessionDep,
             fragment: Annotated[Literal["live"] | None, Query()] = None) -> Response:
    ctx = _job_context(session, viewer, job_id)
    if fragment == "live":
        return render(request, "_job_live.html", ctx)
    return render(request, "job.html", {**ctx, "tab": "timeline", "notice": request.query_params.get("notice")})


@router.get("/jobs/{job_id}/events")
def job_events(
    request: Request, job_id: JobId, viewer: ViewerDep, session: SessionDep, factory: SessionFactoryDep,
    settings: SettingsDep, metrics: MetricsDep, concurrency: ConcurrencyDep,
    after: Annotated[int | None, Query(ge=0, le=streams.MAX_EVENT_ID)] = None,
) -> EventStreamResponse:
    """The JSON API's event stream (same frames, same resume rules, same per-tenant cap) behind the session cookie."""
    start = streams.resume_point(request.headers.get("last-event-id"), after)
    job_service.ensure_job(session, tenant_id=viewer.tenant_id, job_id=job_id)
    return streams.tenant_stream(concurrency, metrics, factory, tenant_id=viewer.tenant_id, job_id=job_id,
                                 after_id=start, poll_s=settings.sse_poll_s)


def _job_action(job_id: str, action: Any, done_notice: str) -> Response:
    """Run a job action (the JSON API's own service call) and go back to the job with a notice."""
    try:
        action()
    except (Conflict, RateLimited) as exc:
        return _redirect(f"{PREFIX}/jobs/{job_id}?notice={quote(exc.detail)}")
    return _redirect(f"{PREFIX}/jobs/{job_id}?notice={done_notice}")


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: JobId, viewer: ViewerDep, session: SessionDep, runtime: RuntimeDep,
               form: CheckedFormDep) -> Response:
    return _job_action(job_id, lambda: job_service.cancel(session, runtime, tenant_id=viewer.tenant_id,
                                                          job_id=job_id), "canceled")


@router.post("/jobs/{job_id}/retry")
def retry_job(request: Request, job_id: JobId, viewer: ViewerDep, session: SessionDep, celery: CeleryDep,
              form: CheckedFormDep) -> Response:
    def retry() -> None:  # through the JSON API's admission: a retry spends GPU time too
        with get_job_limits(request).admit(session, tenant_id=viewer.tenant_id) as admission:
            job_service.retry(session, celery, tenant_id=viewer.tenant_id, job_id=job_id)
            admission.created = True

    return _job_action(job_id, retry, "retrying")


@router.get("/jobs/{job_id}/bundle")
def job_bundle(job_id: JobId, viewer: ViewerDep, session: SessionDep, store: StoreDep) -> Response:
    """The JSON API's bundle (``GET /v1/jobs/{id}/bundle``) behind the session cookie."""
    plan = plan_bundle(session, tenant_id=viewer.tenant_id, job_id=job_id)
    return StreamingResponse(stream_bundle(plan, store), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{plan.filename}"', "Cache-Control": "private, no-cache"})


@router.get("/jobs/{job_id}/plans")
def plans_page(request: Request, job_id: JobId, viewer: ViewerDep, session: SessionDep) -> Response:
    view = job_service.get_job_view(session, tenant_id=viewer.tenant_id, job_id=job_id)
    plans = job_plans(session, tenant_id=viewer.tenant_id, job_id=job_id)
    return render(request, "plans.html", {"job": view, "plans": plans, "viewer": viewer, "tab": "plans",
                                          "terminal": view.status in ("succeeded", "failed", "canceled")})


@router.get("/jobs/{job_id}/gallery")
def gallery_page(request: Request, job_id: JobId, viewer: ViewerDep, session: SessionDep) -> Response:
    view = job_service.get_job_view(session, tenant_id=viewer.tenant_id, job_id=job_id)
    artifacts = artifact_service.list_job_artifacts(session, tenant_id=viewer.tenant_id, job_id=job_id)
    return render(request, "gallery.html", {"job": view, "gallery": build_gallery(artifacts.items, sizes=view.spec.get("sizes") or ()),
                                            "viewer": viewer,
                                            "tab": "gallery",
                                            "terminal": view.status in ("succeeded", "failed", "canceled")})


# ---------------------------------------------------------------- artifacts


@router.get("/artifacts/{artifact_id}")
def artifact_page(request: Request, artifact_id: ArtifactId, viewer: ViewerDep, session: SessionDep) -> Response:
    artifact = artifact_service.get_artifact(session, tenant_id=viewer.tenant_id, artifact_id=artifact_id)
    view = artifact_view(artifact)
    # the tile as the gallery shows it: scores may come from the artifacts beside it (render checks, gates)
    siblings = (artifact_service.list_job_artifacts(session, tenant_id=viewer.tenant_id, job_id=artifact.job_id).items
                if artifact.job_id else [view])
    tile = build_gallery(siblings).tile(artifact.id)
    return render(request, "artifact.html", {"artifact": view, "tile": tile, "viewer": viewer,
                                             "job_id": artifact.job_id})


def _etag_match(request: Request, etag: str) -> bool:
    wanted = {t.strip() for t in request.headers.get("if-none-match", "").split(",") if t.strip()}
    return bool(wanted & {etag, f"W/{etag}", "*"})


@router.get("/artifacts/{artifact_id}/content")
def artifact_content(request: Request, artifact_id: ArtifactId, viewer: ViewerDep, session: SessionDep,
                     store: StoreDep, download: bool = False) -> Response:
    artifact = artifact_service.get_artifact(session, tenant_id=viewer.tenant_id, artifact_id=artifact_id)
    etag = f'"{artifact.sha256}"'
    if _etag_match(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    content = artifact_service.read_content(store, artifact)
    disposition = "attachment" if download else "inline"
    plain = "".join(c for c in content.name if c.isascii() and c.isalnum() or c in "._-") or "artifact"
    return Response(content.data, media_type=content.content_type, headers={
        "ETag": f'"{content.sha256}"', "Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'{disposition}; filename="{plain}"',
        "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox",
    })


@router.get("/artifacts/{artifact_id}/thumb")
def artifact_thumb(request: Request, artifact_id: ArtifactId, viewer: ViewerDep, session: SessionDep,
                   store: StoreDep, w: Annotated[int, Query(ge=16, le=2048)] = 320) -> Response:
    artifact = artifact_service.get_artifact(session, tenant_id=viewer.tenant_id, artifact_id=artifact_id)
    if not artifact.content_type.startswith("image/"):
        raise NotFound(f"artifact {artifact_id} is not an image")
    width = thumb_width(w)
    etag = f'"{artifact.sha256}-w{width}"'
    if _etag_match(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    data = _thumbs.get((artifact.sha256, width))
    if data is None:
        data = thumbnail(artifact_service.read_content(store, artifact).data, width)
        _thumbs.put((artifact.sha256, width), data)
    return Response(data, media_type="image/webp", headers={"ETag": etag, "Cache-Control": "private, max-age=300"})


# ---------------------------------------------------------------- system


@router.get("/system")
def system_page(request: Request, viewer: ViewerDep, session: SessionDep, settings: SettingsDep,
                celery: CeleryDep) -> Response:
    now = _now()

    def own_job(job_id: str) -> bool:
        return session.scalar(select(Job.id).where(Job.id == job_id, Job.tenant_id == viewer.tenant_id)) is not None

    hours = system.hourly(session, tenant_id=viewer.tenant_id, now=now)
    labels = [h.start.strftime("%H:00") for h in hours]
    gpu_chart = charts.bar_chart([h.gpu_seconds for h in hours], labels, title="GPU-seconds per hour (UTC)",
                                 unit="GPU-s")
    image_chart = charts.bar_chart([float(h.images) for h in hours], labels, title="Images delivered per hour (UTC)",
                                   unit="images")
    ctx = {
        "viewer": viewer, "now": now, "queues": system.queue_depths(settings),
        "workers": system.workers_online(settings, celery, own_job=own_job),
        "hours": hours, "gpu_chart": gpu_chart, "image_chart": image_chart,
        "gpu_total": round(sum(h.gpu_seconds for h in hours), 2), "images_total": sum(h.images for h in hours),
        "failures": system.recent_failures(session, tenant_id=viewer.tenant_id),
    }
    return render(request, "system.html", ctx)
