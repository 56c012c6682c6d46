"""Campaign stage graph (PAID, with RPG and CreatiLayout) — DESIGN §1.

    plan.ad_prompts → plan.ad_layout → gpu.background[size×variant] → render.ad[size×variant]
                   → gpu.watermark[size×variant] → deliver

Stages with the same item space chain per item: render.ad for 1080x1080-v0 starts as soon as that
background is ready, without waiting for the others.
"""

from __future__ import annotations

from typing import Any

from atelier_shared.tasks import S_AD_LAYOUT, S_AD_PROMPTS, S_BACKGROUND, S_DELIVER, S_RENDER_AD, S_WATERMARK

from .base import Graph, StageDef


def studio_backdrop(spec: dict[str, Any]) -> str | None:
    """A studio backdrop is drawn by the renderer: no GPU time is spent on a background."""
    return "studio backdrop: drawn by the renderer" if spec.get("backdrop") == "studio" else None


def size_variants(spec: dict[str, Any], _outputs: dict[str, dict[str, Any]]) -> list[str]:
    """One item per target size and variant: ``1080x1080-v0``, ``1080x1080-v1``, ..."""
    return [f"{size}-v{k}" for size in spec["sizes"] for k in range(spec.get("variants", 1))]


CAMPAIGN = Graph(
    kind="campaign",
    item_spaces={"size_variant": size_variants},
    stages=(
        StageDef(S_AD_PROMPTS),
        StageDef(S_AD_LAYOUT, after=(S_AD_PROMPTS,)),
        StageDef(S_BACKGROUND, after=(S_AD_PROMPTS, S_AD_LAYOUT), fan_out="size_variant", skip_when=studio_backdrop),
        StageDef(S_RENDER_AD, after=(S_AD_LAYOUT, S_BACKGROUND), fan_out="size_variant"),
        # the plan and the background too: the C2PA manifest names the plan id, model and seed (issue 5)
        StageDef(S_WATERMARK, after=(S_AD_LAYOUT, S_BACKGROUND, S_RENDER_AD), fan_out="size_variant"),
        StageDef(S_DELIVER, after=(S_WATERMARK,)),
    ),
)
