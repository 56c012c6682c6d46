"""Plans for a spec without a job: the planning stages run in order in this process, no GPU stage runs.

``POST /v1/plans:preview`` reaches this through the ``planning`` queue (:data:`T_PREVIEW`), so the
preview is made by the planner workers with their own backend settings — exactly what a job would get.
Ids and seeds derive from a preview id (``preview_<sha256 of the spec>``) instead of a job id; give the
spec a ``seed`` and the job's plans will match the preview's boxes and captions.

The reply travels back on a one-off queue named in the request (kombu ``SimpleQueue`` semantics over the
same broker: a Redis list in services mode, the in-memory transport in the embedded mode).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from atelier_contracts.catalogue import (
    S_AD_LAYOUT,
    S_AD_PROMPTS,
    S_CHARACTERS,
    S_CULTURE,
    S_SCENE_LAYOUT,
    S_SCENES,
    S_STORY,
)
from atelier_contracts.errors import NotFound, StorageError
from atelier_contracts.keys import upload_key
from atelier_contracts.layouts import DESIGN_STEP, LayoutDesignRequest
from atelier_contracts.plans import Box, StoryPlan
from atelier_contracts.specs import CampaignSpec, StorySpec
from atelier_contracts.tasks import PREVIEW_REPLY_PREFIX, Q_PLANNING, T_PREVIEW
from atelier_runtime.stage_runner import resources
from celery import Celery, shared_task
from pydantic import ValidationError

from . import kahani
from .backends import PlannerBackend
from .worker import worker_backend

log = logging.getLogger(__name__)



def preview_id(kind: str, spec: dict[str, Any]) -> str:
    canonical = json.dumps({"kind": kind, "spec": spec}, sort_keys=True, separators=(",", ":"))
    return "preview_" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def preview_plans(backend: PlannerBackend, *, kind: str, spec: dict[str, Any],
                  product_image: Callable[[str], bytes | None] | None = None) -> dict[str, Any]:
    """Every planning stage's output for ``spec``, in graph order: ``{"kind", "preview_id", "stages": {...}}``.

    Raises ValueError (with pydantic's errors) when the spec does not validate for ``kind``."""
    pid = preview_id(kind, spec)
    stages: dict[str, Any] = {}
    if kind == "campaign":
        campaign = CampaignSpec.model_validate(spec)
        image = product_image(campaign.product.image) if (product_image and campaign.product.image) else None
        stages[S_AD_PROMPTS] = backend.ad_prompts(campaign, job_id=pid, product_image=image)
        stages[S_AD_LAYOUT] = backend.ad_layout(campaign, job_id=pid, prompts_output=stages[S_AD_PROMPTS])
    elif kind == "story":
        story = StorySpec.model_validate(spec)
        stages[S_CULTURE] = backend.culture(story, job_id=pid)
        stages[S_STORY] = backend.story(story, job_id=pid, culture_output=stages[S_CULTURE])
        stages[S_CHARACTERS] = backend.characters(story, job_id=pid, story_output=stages[S_STORY],
                                                  culture_output=stages[S_CULTURE])
        stages[S_SCENES] = kahani.apply_page_layouts(backend.scenes(
            story, job_id=pid, story_output=stages[S_STORY], characters_output=stages[S_CHARACTERS],
            culture_output=stages[S_CULTURE]), story)
        plan = StoryPlan.model_validate(stages[S_SCENES]["plan"])
        # no character sheet exists before a job runs: the layouts leave ref_artifact empty
        stages[S_SCENE_LAYOUT] = backend.scene_layouts(plan, sheets={}, job_id=pid, require_sheets=False,
                                                       pages=kahani.page_layouts(story))
    elif kind == "layout":
        stages[DESIGN_STEP] = design(backend, LayoutDesignRequest.model_validate(spec), plan_id=pid)
    else:
        raise ValueError(f"kind must be campaign, story or layout, not {kind!r}")
    return {"kind": kind, "preview_id": pid, "backend": backend.name, "stages": stages}


def design(backend: PlannerBackend, request: LayoutDesignRequest, *, plan_id: str) -> dict[str, Any]:
    """The designer's layout for a ``POST /v1/layouts:design`` body, the repair notes and how it was made."""
    fixed = [Box(bbox=b.bbox, caption=b.caption, role=b.role) for b in request.boxes]
    points = [p.model_dump() for p in request.points]
    planned = backend.design_layout(request.prompt, width=request.width, height=request.height, points=points or None,
                                    boxes=fixed or None, plan_id=plan_id, seed=request.seed or 0)
    return {"layout": planned.value.model_dump(mode="json"), "notes": list(planned.notes), "planner": planned.run}


def answer_preview(app: Celery, backend: PlannerBackend, request: dict[str, Any],
                   product_image: Callable[[str], bytes | None] | None = None) -> dict[str, Any] | None:
    """Plan one preview request and publish the reply on its reply queue; None when the caller gave up."""
    deadline = float(request.get("deadline", 0) or 0)
    if deadline and time.time() > deadline:
        log.info("preview %s arrived after its deadline; dropped", request.get("reply_to"))
        return None
    try:
        body: dict[str, Any] = {"ok": True, **preview_plans(backend, kind=str(request["kind"]),
                                                           spec=dict(request["spec"]), product_image=product_image)}
    except ValidationError as exc:
        body = {"ok": False, "error": {"type": "InvalidSpec", "message": str(exc), "retryable": False}}
    except ValueError as exc:
        body = {"ok": False, "error": {"type": "InvalidSpec", "message": str(exc), "retryable": False}}
    except Exception as exc:  # noqa: BLE001 - the caller gets the error instead of a timeout
        log.exception("preview failed")
        body = {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc) or repr(exc), "retryable": True}}
    reply_to = str(request["reply_to"])
    if not reply_to.startswith(PREVIEW_REPLY_PREFIX):
        raise ValueError(f"reply_to must start with {PREVIEW_REPLY_PREFIX!r}")
    with app.producer_or_acquire() as producer:
        # the default exchange routes by queue name: nothing is declared, so a caller that gave up leaves no binding
        producer.publish(body, exchange="", routing_key=reply_to, serializer="json", retry=True)
    return body


@shared_task(name=T_PREVIEW, bind=True, acks_late=True, ignore_result=True, queue=Q_PLANNING)
def preview(self: Any, request: dict[str, Any]) -> None:
    """``POST /v1/plans:preview``: plan a spec without a job and reply on the request's reply queue."""
    res = resources(self.app)
    tenant = str(request.get("tenant_id", ""))

    def image(upload_id: str) -> bytes | None:
        try:
            return res.store.get(upload_key(tenant, upload_id))
        except (NotFound, StorageError):
            return None

    backend = worker_backend(res)
    answer_preview(self.app, backend, request, product_image=image if getattr(backend, "vlm", None) else None)
