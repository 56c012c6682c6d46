"""``/v1/uploads``: product images and logos for campaign specs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from .. import uploads as upload_service
from ..concurrency import CONCURRENCY_LIMITED_DOC, ConcurrencyDep
from ..deps import MetricsDep, SessionDep, SettingsDep, StoreDep, TenantDep
from ..problems import problem_responses
from ..schemas import UploadView

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post(
    "", status_code=201, response_model=UploadView, summary="Upload a PNG, JPEG or WebP image",
    responses={**problem_responses(401, 413, 415, 422, 503), **CONCURRENCY_LIMITED_DOC},
)
def upload(
    file: Annotated[UploadFile, File(description="PNG, JPEG or WebP; stored upright as PNG, alpha kept.")],
    principal: TenantDep, session: SessionDep, store: StoreDep, settings: SettingsDep, metrics: MetricsDep,
    concurrency: ConcurrencyDep,
) -> UploadView:
    file.file.seek(0)
    with concurrency.hold("uploads", principal.tenant_id):  # decoding is CPU work: a few at once per tenant
        view = upload_service.ingest_upload(
            session, store, tenant_id=principal.tenant_id, stream=file.file, filename=file.filename,
            max_bytes=settings.upload_max_bytes, max_pixels=settings.upload_max_pixels,
        )
    metrics.uploads.inc()
    return view
