"""What the ``gate.critic`` stage (``stages/gate_critic.py``) is made of: does each region of an ad background
show its caption?

It follows ``gpu.background[<size>-v<k>]`` and judges that background — the image generated from the size's
``LayoutPlan`` (``plan.ad_layout``), before the renderer draws text, logo and CTA over it — with the VLM critic
(:func:`atelier_planner.critic.critique`). What is checked follows the recipe the background was drawn with:

* ``layout`` / ``inpaint`` (and unknown recipes): the variant's ``LayoutPlan`` boxes — background, product and
  background objects (text, logo, CTA and underlay boxes are the renderer's, checked there by OCR);
* ``regional``: the cells of the RPG ``RegionalPlan`` of ``plan.ad_prompts`` the background was drawn from;
* ``text_to_image``: only the full-canvas background box (the model was given no boxes to respect).

It returns the gate contract of ``atelier_orchestrator.gates``:

* ``score`` — the fraction of checked regions that pass (present, matching, confidence at least
  ``MIN_CONFIDENCE``). A fraction, not a mean confidence: it is what a person reads ("3 of 4 regions match"),
  it compares attempts of one item (same plan, same regions) for best-of-N, and a VLM's self-reported
  confidence is poorly calibrated, so it only sets the pass threshold;
* ``regenerate`` — when a judged region fails (a new seed can draw it right);
* ``warnings`` — the failed regions with the VLM's reasons; ``report`` — the critic's full per-region report,
  which the orchestrator writes into the background artifact's ``meta.gates["gate.critic"]``.

The critic never passes what it did not judge: no VLM on this worker (``status: absent``), a VLM that failed
(``status: error``) or a plan with no region to check give ``passed: false`` with no regeneration, and the
orchestrator keeps the image with a ``job.warning``. (With no VLM configured for the orchestrator, the stage is
skipped before it is queued: ``atelier_orchestrator.graphs.campaign``.) A JSON report of every attempt is
stored next to it (``gate.critic/1080x1080-v0.r1.json`` for regeneration 1).
"""

from __future__ import annotations

from typing import Any

from atelier_contracts import items
from atelier_contracts.catalogue import S_GATE_CRITIC
from atelier_contracts.errors import StageError
from atelier_contracts.plans import AdPlan, LayoutPlan, RegionalPlan
from atelier_runtime.stage_runner import WorkerResources

from .critic import CRITIC_ROLES, CriticReport, critic_from_settings
from .llm.engines import Engine
from .llm.errors import EngineUnavailable

GATE_NAME = "critic"
MIN_CONFIDENCE = 50  # the VLM's confidence (0..100) a matching region needs to pass
VLM_KEY = "atelier_planner.critic.vlm"
_CAPTION_CHARS = 80


# ---------------------------------------------------------------- the gate output (pure)


def _short(text: str) -> str:
    return text if len(text) <= _CAPTION_CHARS else text[:_CAPTION_CHARS - 1] + "…"


def gate_output(report: CriticReport, *, artifact_key: str | None, extra: dict[str, Any] | None = None,
                not_judged: str | None = None) -> dict[str, Any]:
    """The gate contract (``atelier_orchestrator.gates``) for one critic report on one image.

    ``not_judged``: why there was nothing to judge (overrides the report), e.g. no image was generated.
    """
    judged = [v for v in report.verdicts if v.error is None]
    failed = [v for v in judged if not v.passed(report.min_confidence)]
    score: float | None = None
    passed = regenerate = False
    if not_judged is not None:
        detail = f"critic: {not_judged}; nothing was judged"
        warnings = [detail]
    elif report.status == "absent":
        detail = f"critic absent: {report.reason}"
        warnings = [detail]
    elif report.status == "error":
        detail = f"critic error: {report.reason}; the image was not judged"
        warnings = [f"critic could not judge region {v.index} ({v.role} '{_short(v.caption)}'): {v.error}"
                    for v in report.verdicts if v.error] or [detail]
    elif not judged:  # critique() calls an empty check a match; a gate must not
        detail = "critic: the plan has no region the critic checks; the image was not judged"
        warnings = [detail]
    else:
        score = round((len(judged) - len(failed)) / len(judged), 4)
        passed, regenerate = not failed, bool(failed)
        detail = f"{len(judged) - len(failed)} of {len(judged)} regions match their captions"
        if failed:
            detail += f"; failed: {', '.join(str(v.index) for v in failed)}"
        warnings = [f"region {v.index} ({v.role} '{_short(v.caption)}') does not match: "
                    f"{v.reason or 'no reason given'} (present={v.present}, matches={v.matches}, "
                    f"confidence={v.confidence})" for v in failed]
    item = {"name": GATE_NAME, "score": score, "passed": passed, "detail": detail}
    return {"gates": [item], "passed": passed, "score": score, "regenerate": regenerate, "detail": detail,
            "artifact_key": artifact_key, "strict": False, "warnings": warnings, "critic_status": "not_judged" if not_judged is not None else report.status,
            "report": report.to_dict(), **(extra or {})}


# ---------------------------------------------------------------- in-place repair

REPAIR_ROLES = ("entity", "region", "character", "product")  # never the full-canvas background: that is a new image
REPAIR_MAX_SHARE = 0.5  # failed regions covering more of the canvas than this are redrawn with a new seed


def repair_hint(out: dict[str, Any], report: CriticReport, *, regeneration: int, repaired: bool,
                product_image: bool) -> dict[str, Any] | None:
    """The ``repair`` of a gate output (``contracts.tasks.Repair``): the failed regions to inpaint in place of a
    new image, or None for a new seed.

    A repair is asked once per item (``repaired``: the judged attempt was itself a repair, so its failure gets a
    new seed), only for the regions a mask can redraw: scene objects, RPG cells, a product drawn from its caption
    (``product_image``: a product photo is exact pixels, never repainted), and only while they cover at most
    ``REPAIR_MAX_SHARE`` of the canvas.
    """
    if not out.get("regenerate") or repaired or not out.get("artifact_key"):
        return None
    failed = [v for v in report.verdicts if v.error is None and not v.passed(report.min_confidence)]
    roles = tuple(r for r in REPAIR_ROLES if r != "product" or not product_image)
    if not failed or any(v.role not in roles for v in failed):
        return None
    share = sum((v.bbox[2] - v.bbox[0]) * (v.bbox[3] - v.bbox[1]) for v in failed)
    if share > REPAIR_MAX_SHARE:
        return None
    return {"gate": S_GATE_CRITIC, "artifact_key": out["artifact_key"], "regeneration": regeneration,
            "regions": [{"index": v.index, "role": v.role, "bbox": list(v.bbox), "prompt": v.caption} for v in failed]}


# ---------------------------------------------------------------- what the background was drawn from


def background_plan(recipe: str | None, layout: LayoutPlan, regional: dict[str, Any] | None
                    ) -> tuple[LayoutPlan | RegionalPlan, tuple[str, ...], str]:
    """(plan, roles, what) the critic checks for a background drawn with ``recipe`` (see the module docstring)."""
    if recipe == "regional" and regional:
        return RegionalPlan.model_validate(regional), ("region",), "regional"
    if recipe == "text_to_image":
        return layout, ("background",), "layout:background"
    return layout, CRITIC_ROLES, "layout"


def variant_layout(plan: AdPlan, item: str) -> LayoutPlan:
    """The ``LayoutPlan`` of item ``<size>-v<k>`` (one layout per size; an odd variant may be its mirror image)."""
    try:
        size, k = items.parse_size_variant(item)
    except ValueError as exc:
        raise StageError(f"{S_GATE_CRITIC}: {exc}", retryable=False, field="item") from exc
    found = plan.variant_for(size, k)
    if found is not None:
        return found[1].layout
    raise StageError(f"{S_GATE_CRITIC}: the ad plan has no variant for size {size!r}", retryable=False, field="item")


# ---------------------------------------------------------------- the stage


def worker_vlm(res: WorkerResources) -> Engine | EngineUnavailable | None:
    """This process's critic VLM (built once from its settings), the reason it cannot be built, or None (absent).

    A test may put its own engine under ``VLM_KEY``.
    """
    with res.lock:
        if VLM_KEY not in res.extras:
            try:
                res.extras[VLM_KEY] = critic_from_settings(res.settings)
            except EngineUnavailable as exc:  # kept, not retried per task: settings do not change
                res.extras[VLM_KEY] = exc
        return res.extras[VLM_KEY]  # type: ignore[no-any-return]
