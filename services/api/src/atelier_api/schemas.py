"""Response models: what the API returns, and what /openapi.json documents."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

JobKindName = Literal["campaign", "story"]
JobStatusName = Literal["queued", "running", "succeeded", "failed", "canceled"]
StageStatusName = Literal["pending", "queued", "running", "succeeded", "failed", "canceled"]


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending input, e.g. `spec.taglines.0` or `file`.")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details (`application/problem+json`)."""

    type: str = Field(default="about:blank", description="URI reference naming the kind of problem.")
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] | None = Field(default=None, description="One entry per invalid field.")


class StageView(BaseModel):
    id: str
    name: str
    item: str
    status: StageStatusName
    attempts: int
    worker: str | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    seconds: float | None = Field(description="finished_at - started_at, when both are known.")
    error: str | None


class ItemFailureView(BaseModel):
    stage: str = Field(description="The stage the item failed at, e.g. `gpu.watermark`.")
    item: str = Field(description="The item, e.g. `728x90-v0` (size and variant).")
    error: str | None


class JobView(BaseModel):
    id: str
    kind: JobKindName
    status: JobStatusName
    progress: float = Field(ge=0.0, le=1.0, description="Succeeded stage rows / all stage rows (1.0 once succeeded).")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    gpu_seconds: float
    spec: dict[str, Any]
    stages: list[StageView] = Field(description="Ordered by (position, item).")
    failures: list[ItemFailureView] = Field(
        default_factory=list,
        description="Items that failed. A campaign whose other sizes were delivered ends `succeeded` with its "
                    "failed items here (`partial` true, and in the `job.succeeded` event); "
                    "`POST /v1/jobs/{id}/retry` re-runs only them.")
    partial: bool = Field(default=False, description="Succeeded with failed items (see `failures`).")
    external_id: str | None = Field(default=None, description="Your reference, as submitted.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Your labels, as submitted.")


class JobList(BaseModel):
    items: list[JobView]
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next (older) page; null on the last page.")


class ArtifactView(BaseModel):
    id: str
    kind: str
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int | None
    height: int | None
    meta: dict[str, Any]
    created_at: datetime
    stage_id: str | None
    key: str = Field(description="Object storage key (`tenants/{tenant}/jobs/{job}/{stage}/{name}.{ext}`).")
    url: str = Field(description="Where the bytes are: `/v1/artifacts/{id}/content`.")
    download_url: str | None = Field(default=None, description=(
        "Expiring URL that fetches the bytes without an API key (for HubSpot, Braze, a DAM): "
        "`/v1/assets/{id}?expires=...&signature=...`, absolute when ATELIER_PUBLIC_BASE_URL is set, or an S3 "
        "presigned URL when ATELIER_S3_PUBLIC_ENDPOINT is. The same URL all through an hour. Always set in "
        "/v1 answers."))
    download_url_expires_at: datetime | None = Field(default=None, description="When `download_url` stops working.")


class ArtifactList(BaseModel):
    items: list[ArtifactView]


class UploadView(BaseModel):
    id: str = Field(description="Artifact id; use it as `spec.product.image`, `spec.brand.logo` or "
                                "`spec.control[].image`.")
    kind: Literal["upload"] = "upload"
    content_type: Literal["image/png"] = "image/png"
    width: int
    height: int
    size_bytes: int
    sha256: str
    url: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class CheckResult(BaseModel):
    ok: bool
    skipped: bool = False
    ms: float | None = None
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ok"] = "ok"
    checks: dict[str, CheckResult]
