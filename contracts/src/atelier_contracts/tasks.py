"""Queue names, task names and task payloads: the only things services share over the broker.

Payloads carry ids, small JSON plans and storage keys — never bytes, images or tensors.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

# queues (DESIGN §2)
Q_ORCHESTRATOR = "orchestrator"
Q_PLANNING = "planning"
Q_GPU_DIFFUSION = "gpu.diffusion"
Q_GPU_IDENTITY = "gpu.identity"
Q_GPU_WATERMARK = "gpu.watermark"
Q_RENDER = "render"
ALL_QUEUES = (Q_ORCHESTRATOR, Q_PLANNING, Q_GPU_DIFFUSION, Q_GPU_IDENTITY, Q_GPU_WATERMARK, Q_RENDER)
GPU_QUEUES = (Q_GPU_DIFFUSION, Q_GPU_IDENTITY, Q_GPU_WATERMARK)

# orchestrator tasks (stage names and their queues: atelier_contracts.catalogue)
T_START_JOB = "atelier.orchestrator.start_job"
T_STAGE_STARTED = "atelier.orchestrator.stage_started"
T_STAGE_PROGRESS = "atelier.orchestrator.stage_progress"
T_STAGE_DONE = "atelier.orchestrator.stage_done"
T_CANCEL_JOB = "atelier.orchestrator.cancel_job"

# the planner's plan preview (``POST /v1/plans:preview``): a request on the planning queue, a reply on a
# one-off queue named after the request
T_PREVIEW = "atelier.planner.preview"
PREVIEW_REPLY_PREFIX = "atelier.preview.reply."


def stage_task_name(stage: str) -> str:
    """The Celery task of a stage: ``atelier.stage.<stage name>``."""
    return f"atelier.stage.{stage}"


class ArtifactRecord(BaseModel):
    """What a stage wrote to storage; the orchestrator records it in the database."""

    key: str
    kind: str = Field(description="plan | background | render | asset | character_sheet | scene | page | manifest")
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int | None = None
    height: int | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class ItemFailure(BaseModel):
    """One item that failed while its job went on (partial success): which stage, which item, why."""

    stage: str
    item: str
    error: str | None = None


class RepairRegion(BaseModel):
    """One region of an image a gate found wrong: its index in the gate's report, role, box and prompt."""

    index: int
    role: str
    bbox: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] in 0..1")
    prompt: str


class Repair(BaseModel):
    """A gate's request to repair the attempt it judged in place (masked inpainting of the failed regions, each with
    its prompt) instead of drawing a new image: the regenerated stage starts from ``artifact_key``."""

    gate: str
    artifact_key: str
    regeneration: int = Field(ge=0, description="the attempt that is repaired")
    regions: list[RepairRegion] = Field(min_length=1)


class StageTask(BaseModel):
    """Everything a stage worker needs; built by the orchestrator from the job and its upstream outputs.

    Args:
        job_id, tenant_id, stage_id: identity of the work item.
        stage: stage name (``gpu.background``); item: fan-out key ("" when the stage is not fanned out).
        attempt: 1 on first delivery, +1 on each retry or re-drive.
        kind: ``campaign`` or ``story``; spec: the validated job spec as JSON.
        upstream: outputs of the stages this one depends on, by stage name. A fanned-out dependency
            appears as ``{item: output}`` unless the dependency is per-item, then as that item's output.
        key_prefix: ``tenants/{tenant}/jobs/{job}`` — every key this stage writes starts with it.
        failures: for a stage that gathers the items that succeeded (``deliver`` of a campaign), the items that
            failed upstream and why; the upstream ``{item: output}`` then holds only the others.
        repair: with ``regeneration`` > 0, what the gate asked to repair in place of a new image (``Repair``), or
            None for a new seed.
    """

    job_id: str
    tenant_id: str
    stage_id: str
    stage: str
    item: str = ""
    attempt: int = 1
    kind: Literal["campaign", "story"]
    spec: dict[str, Any]
    upstream: dict[str, Any] = Field(default_factory=dict)
    key_prefix: str
    # quality gates: 0 for the first generation of an item, n for its n-th regeneration asked by a
    # gate (best-of-N); a regenerated stage offsets its seed by it and writes its artifact under a new name
    regeneration: int = Field(default=0, ge=0)
    failures: list[ItemFailure] = Field(default_factory=list)
    repair: Repair | None = None


class StageError_(BaseModel):
    type: str
    message: str
    retryable: bool = True


class StageResult(BaseModel):
    """Sent by a stage worker to the orchestrator when the stage ends."""

    job_id: str
    stage_id: str
    attempt: int
    status: Literal["succeeded", "failed", "canceled"]
    output: dict[str, Any] = Field(default_factory=dict)
    artifacts: list[ArtifactRecord] = Field(default_factory=list)
    error: StageError_ | None = None
    worker: str
    started_at: datetime
    finished_at: datetime
    gpu_seconds: float = 0.0
    regeneration: int = Field(default=0, ge=0)  # echoes StageTask.regeneration (stale results are dropped)


class StageStarted(BaseModel):
    job_id: str
    stage_id: str
    attempt: int
    worker: str
    started_at: datetime


class StageProgress(BaseModel):
    job_id: str
    stage_id: str
    step: int
    total: int
    # the stage's start, when no started notice went out before this report (the worker sends one only after
    # started_notice_after_s): the orchestrator records it first, in the same transaction
    started: StageStarted | None = None
