"""``POST /v1/plans:preview``: the plans the planner would make for a spec — no job, no GPU time; and
``POST /v1/layouts:design``: the CreatiLayout designer as a product feature (prompt, centre points or fixed boxes,
a target size → captioned boxes, validated and repaired), to start a campaign's ``spec.layout`` from.

The body is the same as ``POST /v1/jobs`` (``{kind, spec}``), validated the same way (problem+json naming
the field; product images must be the caller's uploads). The planning itself runs on a planner worker,
with the planner's own backend settings (rules, or an LLM), so the preview is what a job would get: the
API sends ``atelier.planner.preview`` to the ``planning`` queue and waits for the answer on a one-off
reply queue on the same broker (in the embedded mode the in-process worker answers). Nothing is stored.

The answer holds every planning stage's output in graph order (campaign: ``plan.ad_prompts``,
``plan.ad_layout``; story: ``plan.culture`` … ``plan.scene_layout``), each with its ``planner`` (backend,
model, prompt version, fallback) and ``metrics``. Ids and seeds derive from ``preview_id``; give the spec
a ``seed`` and a job made from it gets the same boxes and captions (an LLM backend samples anew).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from atelier_contracts.errors import AtelierError, InvalidInput
from atelier_contracts.layouts import DESIGN_STEP, LayoutDesignRequest
from atelier_contracts.plans import LayoutPlan
from atelier_contracts.specs import JobRequest
from atelier_contracts.tasks import PREVIEW_REPLY_PREFIX, Q_PLANNING, T_PREVIEW
from celery import Celery
from fastapi import APIRouter
from pydantic import BaseModel, Field

from .. import jobs as job_service
from ..concurrency import CONCURRENCY_LIMITED_DOC, ConcurrencyDep
from ..deps import CeleryDep, SessionDep, SettingsDep, TenantDep
from ..problems import BrokerUnavailable, problem_responses
from ..schemas import JobKindName

log = logging.getLogger(__name__)

router = APIRouter(tags=["plans"], responses=problem_responses(401, 422))

# the planner registers the task under this name (services send tasks by name, never import each other)


class PlanPreview(BaseModel):
    """What the planner would plan for a spec."""

    kind: JobKindName
    preview_id: str = Field(description="Stands in for the job id in plan ids and seeds.")
    backend: str = Field(description="The planner backend that answered: rules, openai, transformers or vllm.")
    stages: dict[str, dict[str, Any]] = Field(
        description="Each planning stage's output, in graph order, with its `planner` and `metrics`.")


class PlannerTimeout(AtelierError):
    """No planner worker answered in time (none running, or all busy)."""

    status = 504
    title = "Planner timeout"


class PlannerFailed(AtelierError):
    """The planner failed on this spec."""

    status = 502
    title = "Planner failed"


def request_preview(celery: Celery, *, kind: str, spec: dict[str, Any], tenant_id: str,
                    timeout_s: float) -> dict[str, Any]:
    """Send a preview request to the planning queue and wait for its reply (declared first, so none is lost)."""
    reply_to = PREVIEW_REPLY_PREFIX + uuid.uuid4().hex
    try:
        conn = celery.connection_for_read()
        conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001 - any broker failure is a 503
        raise BrokerUnavailable("the planner cannot be reached (broker unreachable); retry later") from exc
    try:
        queue = conn.SimpleQueue(reply_to, no_ack=True)
        try:
            celery.send_task(T_PREVIEW, args=[{"kind": kind, "spec": spec, "tenant_id": tenant_id,
                                               "reply_to": reply_to, "deadline": time.time() + timeout_s}],
                             queue=Q_PLANNING)
            try:
                return dict(queue.get(block=True, timeout=timeout_s).payload)
            except queue.Empty:
                raise PlannerTimeout(f"no planner answered within {timeout_s:g} s; is a worker consuming the "
                                     f"'{Q_PLANNING}' queue?") from None
        finally:
            try:
                queue.queue.delete()
            except Exception:  # noqa: BLE001 - a reply queue that is gone already is fine
                log.debug("could not delete %s", reply_to, exc_info=True)
            queue.close()
    except AtelierError:
        raise
    except Exception as exc:  # noqa: BLE001 - the broker failed mid-request
        raise BrokerUnavailable("the planner cannot be reached (broker error); retry later") from exc
    finally:
        conn.release()


@router.post(
    "/v1/plans:preview", response_model=PlanPreview, summary="Preview the plans of a job spec",
    responses={**problem_responses(502, 503, 504), **CONCURRENCY_LIMITED_DOC},
    description="Same body as `POST /v1/jobs`. Returns what the planner would plan — prompts, layouts per size "
                "with their metrics, story, characters, scenes — without creating a job or running a GPU stage.",
)
def preview_plans(body: JobRequest, principal: TenantDep, session: SessionDep, celery: CeleryDep,
                  settings: SettingsDep, concurrency: ConcurrencyDep) -> PlanPreview:
    spec = job_service.parse_spec(body, planner_backend=settings.planner_backend)
    job_service.check_upload_refs(session, tenant_id=principal.tenant_id, spec=spec)
    session.close()  # nothing else needs the database while the planner works
    with concurrency.hold("previews", principal.tenant_id):  # each holds a worker thread until the planner answers
        reply = request_preview(celery, kind=body.kind, spec=spec.model_dump(mode="json"),
                                tenant_id=principal.tenant_id, timeout_s=settings.plan_preview_timeout_s)
    checked(reply, field="spec")
    return PlanPreview(kind=reply["kind"], preview_id=reply["preview_id"], backend=reply["backend"],
                       stages=reply["stages"])


def checked(reply: dict[str, Any], *, field: str) -> dict[str, Any]:
    """The planner's reply when it succeeded; its refusal as a 422 naming ``field``, any other failure a 502."""
    if not reply.get("ok"):
        error = reply.get("error") or {}
        message = str(error.get("message") or "the planner failed")
        if error.get("type") == "InvalidSpec":
            raise InvalidInput(f"the planner refused the request: {message}", field=field)
        raise PlannerFailed(message)
    return reply


class LayoutDesign(BaseModel):
    """A designed layout: the global caption and up to 10 captioned boxes, repaired, with what the repair changed."""

    layout: LayoutPlan = Field(description="Boxes in 0..1 of the target size (`bbox` [x1, y1, x2, y2], `role`, "
                                           "`caption`); the boxes given in the request are kept unless a rule moved "
                                           "them (see `notes`).")
    notes: list[str] = Field(description="What the repair changed (clamped, grown to a minimum size, moved off the "
                                         "product...); empty when nothing.")
    backend: str = Field(description="The planner backend that answered: rules, openai, transformers or vllm.")
    planner: dict[str, Any] = Field(description="How it was made: backend, model, prompt version, fallback.")


@router.post(
    "/v1/layouts:design", response_model=LayoutDesign, summary="Design a layout (CreatiLayout)",
    responses={**problem_responses(502, 503, 504), **CONCURRENCY_LIMITED_DOC},
    description="From a prompt — and optionally centre points for its entities or boxes to keep — the planner's "
                "layout designer returns captioned boxes for the target size, validated and repaired. Use the boxes "
                "as a campaign's `spec.layout` (roles product, tagline, cta, logo, underlay, entity), edited or not.",
)
def design_layout(body: LayoutDesignRequest, principal: TenantDep, celery: CeleryDep, settings: SettingsDep,
                  concurrency: ConcurrencyDep) -> LayoutDesign:
    with concurrency.hold("previews", principal.tenant_id):
        reply = request_preview(celery, kind="layout", spec=body.model_dump(mode="json"),
                                tenant_id=principal.tenant_id, timeout_s=settings.plan_preview_timeout_s)
    designed = checked(reply, field="prompt")["stages"][DESIGN_STEP]
    return LayoutDesign(layout=designed["layout"], notes=designed["notes"], backend=reply["backend"],
                        planner=designed["planner"])
