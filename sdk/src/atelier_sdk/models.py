"""The API's answers as pydantic models, one per OpenAPI component (:data:`SCHEMA_MODELS` names which).

Every model keeps fields it does not know (``extra="allow"``), so a newer server never breaks an older SDK; a
test loads the live OpenAPI document and fails when a component has a property its model lacks. Fields the API
always sends are still defaulted where a missing value is harmless.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

TERMINAL = ("succeeded", "failed", "canceled")
TERMINAL_EVENTS = frozenset({"job.succeeded", "job.failed", "job.canceled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


M = TypeVar("M", bound=BaseModel)


class Items(_Model, Generic[M]):
    """A ``{"items": [...]}`` answer; the client methods return the list."""

    items: list[M]


class Stage(_Model):
    id: str
    name: str
    item: str
    status: str
    attempts: int = 0
    worker: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float | None = None
    error: str | None = None


class ItemFailure(_Model):
    """An item (e.g. ``728x90-v0``) that failed at a stage while the rest of its job went on."""

    stage: str
    item: str
    error: str | None = None


class Job(_Model):
    id: str
    kind: Literal["campaign", "story"]
    status: str
    progress: float = 0.0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    gpu_seconds: float = 0.0
    spec: dict[str, Any] = Field(default_factory=dict)
    stages: list[Stage] = Field(default_factory=list)
    failures: list[ItemFailure] = Field(default_factory=list)
    partial: bool = Field(default=False, description="Succeeded with failed items (see ``failures``).")
    external_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class JobPage(_Model):
    items: list[Job]
    next_cursor: str | None = None


class Artifact(_Model):
    id: str
    kind: str
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int | None = None
    height: int | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    stage_id: str | None = None
    key: str | None = None
    url: str
    download_url: str | None = Field(default=None, description="Expiring URL that needs no API key.")
    download_url_expires_at: datetime | None = None


class Upload(_Model):
    id: str
    kind: str = "upload"
    content_type: str = "image/png"
    width: int
    height: int
    size_bytes: int
    sha256: str
    url: str


class Event(_Model):
    """One of a job's events, as its Server-Sent Event carries it."""

    id: int
    type: str
    job_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


class BrandKit(_Model):
    id: str
    name: str
    palette: list[str]
    font_family: str | None = None
    font_artifact_id: str | None = None
    logo: str | None = None
    tone: str | None = None
    banned_words: list[str] = Field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Webhook(_Model):
    id: str
    url: str
    events: list[str]
    enabled: bool
    description: str | None = None
    created_at: datetime | None = None
    format: str = Field(default="standard", description="``standard`` (Standard Webhooks JSON) or ``slack``.")
    previous_secret_expires_at: datetime | None = Field(
        default=None, description="After a rotation: until when the previous secret also signs every message.")
    secret: str | None = Field(default=None, description="Returned when the endpoint is created or rotated.")


class WebhookDelivery(_Model):
    id: str
    webhook_id: str | None = None
    event_id: int
    event_type: str
    message_id: str
    status: str
    attempts: int
    next_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime | None = None
    delivered_at: datetime | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    log: list[dict[str, Any]] = Field(default_factory=list)


class DeliveryPage(_Model):
    items: list[WebhookDelivery]
    next_cursor: str | None = None


class ApiKeyInfo(_Model):
    """One of the tenant's API keys. ``key`` (``atl_...``) is only in :meth:`AtelierClient.create_key`'s answer."""

    id: str
    name: str
    role: Literal["admin", "member"] = Field(description="`admin` keys also manage the tenant's keys.")
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None
    key: str | None = Field(default=None, description="The key itself: returned once, when it is created.")

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class StoryLanguages(_Model):
    written: list[str] = Field(default_factory=list)
    any_with_llm: bool = False
    rtl: list[str] = Field(default_factory=list)


class Placement(_Model):
    name: str
    size: str
    family: str
    safe_zone: str | None = None
    min_text_px: int
    max_bytes: int | None = None


class SizeLimits(_Model):
    min_side: int = 32
    max_side: int = 4096
    min_area: int = 12000
    max_aspect: float = 12.0


class Capabilities(_Model):
    planner_backend: str
    story_languages: StoryLanguages
    curated_cultures: list[str] = Field(default_factory=list)
    placements: list[Placement] = Field(default_factory=list)
    placement_aliases: dict[str, str] = Field(default_factory=dict)
    size_limits: SizeLimits = Field(default_factory=SizeLimits)


class PlanPreview(_Model):
    kind: Literal["campaign", "story"]
    preview_id: str
    backend: str
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)


class PlannerInfo(_Model):
    backend: str
    model: str
    prompt_version: str


class LayoutBox(_Model):
    """A box of a layout: ``bbox`` [x1, y1, x2, y2] in 0..1 (top-left origin), its role and caption."""

    bbox: tuple[float, float, float, float]
    role: str
    caption: str = ""
    z: int = 0
    ref_artifact: str | None = None


class LayoutPlan(_Model):
    plan_id: str
    version: str = "1"
    seed: int = 0
    width: int
    height: int
    negative_prompt: str = ""
    planner: PlannerInfo
    global_caption: str
    boxes: list[LayoutBox] = Field(default_factory=list)
    grounding_fraction: float = 0.3


class LayoutDesign(_Model):
    """``POST /v1/layouts:design``'s answer: the layout, what the repair changed, and how it was made.

    Its boxes (those of roles product, tagline, cta, logo, underlay, entity) make a campaign's ``spec.layout``:
    ``{"boxes": [{"bbox": b.bbox, "role": b.role, "caption": b.caption} for b in design.layout.boxes]}``."""

    layout: LayoutPlan
    notes: list[str] = Field(default_factory=list)
    backend: str
    planner: dict[str, Any] = Field(default_factory=dict)


class FieldError(_Model):
    field: str
    message: str


class Problem(_Model):
    """An RFC 9457 problem body (what :class:`~atelier_sdk.AtelierError` is built from)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] | None = None


# OpenAPI component → the SDK model that parses it (a test checks each against the live schema)
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "JobView": Job,
    "StageView": Stage,
    "ItemFailureView": ItemFailure,
    "JobList": JobPage,
    "ArtifactView": Artifact,
    "ArtifactList": Items[Artifact],
    "UploadView": Upload,
    "ApiKeyView": ApiKeyInfo,
    "ApiKeyCreated": ApiKeyInfo,
    "ApiKeyList": Items[ApiKeyInfo],
    "Capabilities": Capabilities,
    "StoryLanguages": StoryLanguages,
    "PlacementView": Placement,
    "SizeLimits": SizeLimits,
    "BrandView": BrandKit,
    "BrandList": Items[BrandKit],
    "WebhookView": Webhook,
    "WebhookList": Items[Webhook],
    "DeliveryView": WebhookDelivery,
    "DeliveryList": DeliveryPage,
    "PlanPreview": PlanPreview,
    "LayoutDesign": LayoutDesign,
    "LayoutPlan": LayoutPlan,
    "Box": LayoutBox,
    "PlannerInfo": PlannerInfo,
    "Problem": Problem,
    "FieldError": FieldError,
}
