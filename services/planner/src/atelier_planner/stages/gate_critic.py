"""``gate.critic`` (planning queue: the planner owns the VLM client): does each region of an ad background show
its caption? A quality gate of ``gpu.background`` (RPG's closed loop): a failing region asks the orchestrator
for a regeneration, best-of-N within the job's budget (``atelier_orchestrator.gates``).

What is checked follows the recipe the background was drawn with (``critic_gate.background_plan``); a background
that was skipped (studio backdrop) is reported as not judged, never as a pass. The report of every attempt is
stored next to it (``gate.critic/1080x1080-v0.r1.json`` for regeneration 1).
"""

from __future__ import annotations

import json
from typing import Any

from atelier_contracts import items
from atelier_contracts.catalogue import S_BACKGROUND, S_GATE_CRITIC
from atelier_contracts.stage_io import CriticInputs, GateOutput, Skipped
from atelier_runtime.stage_runner import StageContext, stage_task

from ..critic import CriticReport, critique
from ..critic_gate import (
    GATE_NAME,
    MIN_CONFIDENCE,
    background_plan,
    gate_output,
    repair_hint,
    variant_layout,
    worker_vlm,
)
from ..llm.errors import EngineUnavailable


@stage_task(S_GATE_CRITIC)
def critic_gate(ctx: StageContext) -> GateOutput:
    """Judge one ad background region by region; ask for a regeneration when a region does not match."""
    up = ctx.inputs(CriticInputs)
    extra: dict[str, Any] = {"regeneration": ctx.task.regeneration}
    if isinstance(up.background, Skipped):  # nothing was generated (the graph skips the gate then, too)
        return GateOutput.model_validate(gate_output(
            CriticReport(status="ok", passed=None), artifact_key=None, extra=extra,
            not_judged=f"{S_BACKGROUND} was skipped ({up.background.skipped})"))
    background = up.background
    regional = up.ad_prompts.regional if up.ad_prompts is not None else None
    plan, roles, checked = background_plan(background.recipe, variant_layout(up.ad_layout.plan, ctx.task.item),
                                           regional.model_dump(mode="json") if regional is not None else None)
    extra.update({"recipe": background.recipe, "checked": checked, "plan_id": plan.plan_id})
    vlm = worker_vlm(ctx.res)
    if isinstance(vlm, EngineUnavailable):
        report = CriticReport(status="error", passed=None, min_confidence=MIN_CONFIDENCE,
                              reason=f"the VLM is unavailable: {vlm}")
    else:
        ctx.check_canceled()
        image = ctx.get_image(background.background_key, "background").convert("RGB")
        report = critique(image, plan, vlm=vlm, roles=roles, min_confidence=MIN_CONFIDENCE,
                          max_side=ctx.settings.vlm_max_image_side)
    out = gate_output(report, artifact_key=background.background_key, extra=extra)
    repaired = bool((background.model_extra or {}).get("repair"))
    out["repair"] = repair_hint(out, report, regeneration=ctx.task.regeneration, repaired=repaired,
                                product_image=background.product_mode is not None)
    ctx.put(name=items.attempt_name(ctx.task.item, ctx.task.regeneration), data=json.dumps(out, sort_keys=True, indent=2).encode(),
            ext="json", content_type="application/json", kind="gate_report",
            meta={"gate": GATE_NAME, "score": out["score"], "passed": out["passed"],
                  "regeneration": ctx.task.regeneration, "background_key": out["artifact_key"]})
    return GateOutput.model_validate(out)
