"""Campaign stage graph (PAID, with RPG and CreatiLayout) — DESIGN §1.

    plan.ad_prompts → plan.ad_layout → gpu.background[size×variant] → gate.critic[size×variant]
                   → render.ad[size×variant] → gpu.watermark[size×variant] → deliver

Stages with the same item space chain per item: render.ad for 1080x1080-v0 starts as soon as that
background has passed its gate, without waiting for the others. One item that fails does not fail the job:
its later stages are not run, ``deliver`` bundles the others and lists it, the job ends ``succeeded`` with the
item in its ``failures``, and a retry re-runs only that item (``atelier_orchestrator.engine``).

``gate.critic`` (planning queue: the planner owns the VLM client) asks a VLM whether each region of the
background matches its caption in the variant's ``LayoutPlan`` (or the RPG ``RegionalPlan`` the background
was drawn from); a background with a failing region is regenerated (``StageTask.regeneration``) within the
job's budget and the best attempt is kept (``atelier_orchestrator.gates``). With no VLM configured (``ATELIER_VLM_MODEL``
unset for the orchestrator) the gate is skipped without a queue round-trip and its output says the
background was not judged; a studio backdrop has no generated background, so nothing to judge either.
"""

from __future__ import annotations

from typing import Any

from atelier_contracts import items
from atelier_contracts.catalogue import (
    S_AD_LAYOUT,
    S_AD_PROMPTS,
    S_BACKGROUND,
    S_DELIVER,
    S_GATE_CRITIC,
    S_RENDER_AD,
    S_WATERMARK,
)
from atelier_runtime.settings import Settings

from .base import Graph, StageDef

CRITIC_ABSENT = "critic absent: no VLM configured (ATELIER_VLM_MODEL); the background was not judged"


def studio_backdrop(spec: dict[str, Any], _settings: Settings | None = None) -> str | None:
    """A studio backdrop is drawn by the renderer: no GPU time is spent on a background."""
    return "studio backdrop: drawn by the renderer" if spec.get("backdrop") == "studio" else None


def critic_skipped(spec: dict[str, Any], settings: Settings) -> str | None:
    """Why ``gate.critic`` does not run for this job (None: it runs). Never a pass: the reason says 'not judged'."""
    if spec.get("backdrop") == "studio":
        return "studio backdrop: no generated background to judge"
    if not settings.vlm_model:
        return CRITIC_ABSENT
    return None


def size_variants(spec: dict[str, Any], _outputs: dict[str, dict[str, Any]]) -> list[str]:
    """One item per target size and variant: ``1080x1080-v0``, ``1080x1080-v1``, ..."""
    return [items.size_variant(size, k) for size in spec["sizes"] for k in range(spec.get("variants", 1))]


CAMPAIGN = Graph(
    kind="campaign",
    item_spaces={"size_variant": size_variants},
    stages=(
        StageDef(S_AD_PROMPTS),
        StageDef(S_AD_LAYOUT, after=(S_AD_PROMPTS,)),
        StageDef(S_BACKGROUND, after=(S_AD_PROMPTS, S_AD_LAYOUT), skip_when=studio_backdrop),
        # the layout (and the RPG plan of plan.ad_prompts) the background was drawn from, and the background
        StageDef(S_GATE_CRITIC, after=(S_AD_PROMPTS, S_AD_LAYOUT, S_BACKGROUND), skip_when=critic_skipped),
        # after the gate: render.ad reads the background the gate kept
        StageDef(S_RENDER_AD, after=(S_AD_LAYOUT, S_BACKGROUND, S_GATE_CRITIC)),
        # the plan and the background too: the C2PA manifest names the plan id, model and seed
        StageDef(S_WATERMARK, after=(S_AD_LAYOUT, S_BACKGROUND, S_RENDER_AD), fan_out="size_variant"),
        # the sizes that succeeded are delivered; a failed one is listed in the manifest and the job's failures
        StageDef(S_DELIVER, after=(S_WATERMARK,), partial=True),
    ),
)
