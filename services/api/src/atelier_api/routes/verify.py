"""``POST /v1/verify``: is this file ours (invisible watermark), and what do its content credentials say?"""

from __future__ import annotations

from typing import Annotated, Any

from atelier_provenance.verify import verify_image
from fastapi import APIRouter, File, UploadFile
from starlette.concurrency import run_in_threadpool

from ..concurrency import CONCURRENCY_LIMITED_DOC, ConcurrencyDep
from ..deps import SessionDep, SettingsDep, TenantDep
from ..problems import problem_responses
from ..uploads import read_limited
from ..verify import SessionTenantRecords

router = APIRouter(prefix="/v1/verify", tags=["verify"])


@router.post(
    "", summary="Verify an image: watermark, C2PA manifest, and the job it came from (within your tenant)",
    responses={**problem_responses(401, 413, 415, 422), **CONCURRENCY_LIMITED_DOC},
)
async def verify(
    file: Annotated[UploadFile, File(description="The image as found (PNG, JPEG, WebP); its bytes are not stored.")],
    principal: TenantDep, session: SessionDep, settings: SettingsDep, concurrency: ConcurrencyDep,
) -> dict[str, Any]:
    """Watermark decision at the stated false-positive rate, C2PA validity (trusted/untrusted/invalid/absent) and
    claims (job, model, time); the mark's job reference is looked up among the caller's jobs only.

    The watermark is read at the embedding size the manifest claims only when the manifest is trusted and the size
    is within 4x the image on a side and the pixel limit (``watermark.claimed_size`` says what became of a claim);
    a trusted manifest claiming a width or height that is not a positive whole number is a 422 on ``file``."""
    with concurrency.hold("verifies", principal.tenant_id):  # a read is CPU work: a few at once per tenant
        data = await run_in_threadpool(read_limited, file.file, settings.upload_max_bytes)
        report = await run_in_threadpool(verify_image, data, settings=settings,
                                         tenant=SessionTenantRecords(session, principal.tenant_id))
    session.rollback()  # read-only; end the transaction before answering
    return report
