"""The ``gate.identity`` stage (queue ``gpu.identity``): does every character look like its sheet?

Reads the scene of this item (``gpu.scene``), the cast of that scene (``plan.scenes``) and the character
sheets (``gpu.character_sheet``), computes ``identity.score.identity_score`` and returns the gate contract
of ``atelier_orchestrator.gates`` (the orchestrator regenerates, keeps the best attempt or fails the job).
A JSON report of each attempt is stored next to it (``gate.identity/s2.r1.json`` for regeneration 1).

What the gate cannot do it reports and never passes: face detection unavailable (no cascade), no
embedder configured, no face found.
"""

from __future__ import annotations

import json
from typing import Any

from atelier_shared.errors import StageError
from atelier_shared.plans import StoryPlan
from atelier_shared.stage_runner import StageContext, WorkerResources, stage_task
from atelier_shared.tasks import S_CHARACTER_SHEET, S_GATE_IDENTITY, S_SCENE, S_SCENES

from .identity.embedder import Embedder, EmbedderMissing
from .identity.faces import FaceDetector, FaceModelMissing
from .identity.score import identity_score

_DETECTOR_KEY = "atelier_gpu.identity.detector"
_EMBEDDER_KEY = "atelier_gpu.identity.embedder"


def _tool(res: WorkerResources, key: str, build: Any) -> Any:
    """A per-process detector/embedder, or the error that prevents building it (kept, not retried per task)."""
    value = res.extras.get(key)
    if value is None:
        with res.lock:
            value = res.extras.get(key)
            if value is None:
                try:
                    value = build()
                except (FaceModelMissing, EmbedderMissing) as exc:
                    value = exc
                res.extras[key] = value
    return value


def _load_embedder(path: Any) -> Embedder:
    if path is None:
        raise EmbedderMissing("no face embedder configured (ATELIER_IDENTITY_EMBEDDER_PATH)")
    return Embedder(path)


def _scene_output(ctx: StageContext) -> dict[str, Any]:
    up = ctx.task.upstream.get(S_SCENE)
    if isinstance(up, dict) and isinstance(up.get(ctx.task.item), dict):
        up = up[ctx.task.item]
    if not isinstance(up, dict) or not up.get("scene_key"):
        raise StageError("gate.identity: upstream gpu.scene has no scene_key", retryable=False, field="upstream")
    return up


def gate_output(*, score: float | None, passed: bool, regenerate: bool, detail: str, artifact_key: str,
                strict: bool, warnings: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gate contract (``atelier_orchestrator.gates``) for one identity check."""
    item = {"name": "identity", "score": score, "passed": passed, "detail": detail}
    return {"gates": [item], "passed": passed, "score": score, "regenerate": regenerate and not passed,
            "detail": detail, "artifact_key": artifact_key, "strict": strict, "warnings": warnings, **(extra or {})}


@stage_task(S_GATE_IDENTITY)
def identity_gate(ctx: StageContext) -> dict[str, Any]:
    """Score one scene's identities against the character sheets; ask for a regeneration when they do not match."""
    scene_out = _scene_output(ctx)
    plan = StoryPlan.model_validate((ctx.task.upstream.get(S_SCENES) or {}).get("plan"))
    index = int(ctx.task.item[1:]) if ctx.task.item[1:].isdigit() else -1
    scene = next((s for s in plan.scenes if s.index == index), None)
    if scene is None:
        raise StageError(f"gate.identity: the story plan has no scene {ctx.task.item}", retryable=False, field="item")
    sheets_out = ctx.task.upstream.get(S_CHARACTER_SHEET) or {}
    cast = list(dict.fromkeys(c.character_id for c in scene.cast))
    strict = ctx.settings.identity_gate_strict
    settings = ctx.settings
    detector = _tool(ctx.res, _DETECTOR_KEY, lambda: FaceDetector(settings.identity_cascade_path))
    embedder = _tool(ctx.res, _EMBEDDER_KEY, lambda: _load_embedder(settings.identity_embedder_path))
    extra = {"regeneration": ctx.task.regeneration, "cast": cast, "threshold": settings.identity_threshold,
             "identity_mode": (scene_out.get("identity") or {}).get("mode")}
    if isinstance(detector, Exception) or isinstance(embedder, Exception):
        reason = f"identity cannot be checked: {detector if isinstance(detector, Exception) else embedder}"
        out = gate_output(score=None, passed=False, regenerate=False, detail=reason,
                          artifact_key=scene_out["scene_key"], strict=strict, warnings=[reason], extra=extra)
    else:
        image = ctx.get_image(scene_out["scene_key"], "scene").convert("RGB")
        sheets = {}
        for cid in cast:
            sheet = sheets_out.get(cid) if isinstance(sheets_out, dict) else None
            if not isinstance(sheet, dict) or not sheet.get("sheet_key"):
                raise StageError(f"gate.identity: no character sheet for {cid} upstream", retryable=False)
            sheets[cid] = ctx.get_image(sheet["sheet_key"], f"character sheet of {cid}").convert("RGB")
        ctx.progress(1, 2)
        result = identity_score(image, sheets, detector=detector, embedder=embedder,
                                threshold=settings.identity_threshold)
        extra.update({"characters": result.characters, "faces": result.faces})
        out = gate_output(score=None if result.score is None else round(result.score, 4), passed=result.passed,
                          regenerate=result.regenerate, detail=result.detail, artifact_key=scene_out["scene_key"],
                          strict=strict, warnings=result.warnings, extra=extra)
    name = ctx.task.item if not ctx.task.regeneration else f"{ctx.task.item}.r{ctx.task.regeneration}"
    ctx.put(name=name, data=json.dumps(out, sort_keys=True, indent=2).encode(), ext="json",
            content_type="application/json", kind="gate_report",
            meta={"gate": "identity", "score": out["score"], "passed": out["passed"],
                  "regeneration": ctx.task.regeneration, "scene_key": scene_out["scene_key"]})
    ctx.progress(2, 2)
    return out
