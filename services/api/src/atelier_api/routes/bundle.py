"""``GET /v1/jobs/{id}/bundle``: every delivered asset of a job, with manifest.json and manifest.csv, as a zip."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import StreamingResponse

from .. import bundle as service
from ..deps import SessionDep, StoreDep, TenantDep
from ..problems import problem_responses
from .assets import AssetLinksDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(401, 404, 409, 503))


@router.get(
    "/{job_id}/bundle", response_class=StreamingResponse, summary="Download a succeeded job's bundle (zip)",
    responses={200: {"description": "A zip: assets named by size and variant (or page), the storybook PDF/HTML, "
                                    "`manifest.json` and `manifest.csv` (file, size, variant, taglines, sha256, "
                                    "gate scores, watermark, C2PA state).",
                     "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}},
)
def download_bundle(job_id: Annotated[str, Path(max_length=64)], principal: TenantDep, session: SessionDep,
                    store: StoreDep, links: AssetLinksDep) -> StreamingResponse:
    plan = service.plan_bundle(session, tenant_id=principal.tenant_id, job_id=job_id, links=links)
    return StreamingResponse(service.stream_bundle(plan, store), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{plan.filename}"',
        "Cache-Control": "private, no-cache",
    })
