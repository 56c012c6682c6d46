"""``gate.identity`` (queue ``gpu.identity``): does every character of a scene look like their sheet?

A quality gate of ``gpu.scene`` (ID-Aligner's reward): looks for each character's face in their box, aligns it
to the ArcFace template (``identity.align``), embeds it and scores the cosine with that character's sheet
(``identity.score.identity_score``), and returns the gate contract the orchestrator acts on (regenerate this
scene, keep the best attempt, or fail a strict job). A JSON report of each attempt is stored next to it
(``gate.identity/s2.r1.json`` for regeneration 1).

The boxes are the layout's, as ``gpu.scene`` recorded them (``cast_boxes``): a face outside its character's
box is not that character's. Where the scene recorded none (an older scene, a layout without that character's
box), the story plan's cast box is used, and a character whose box holds no face may take a face left over
elsewhere (``in_box: false``). ``report.characters`` records, per character: id, name, box (pixels), found,
in_box, face box, landmarks and their source (``detector``/``eyes``/``box``), score, passed.

What the gate cannot do it reports and never passes: face detection unavailable (no cascade), no embedder
configured, no face found.
"""

from __future__ import annotations

import json
from typing import Any

from atelier_contracts import items
from atelier_contracts.catalogue import S_GATE_IDENTITY
from atelier_contracts.errors import StageError
from atelier_contracts.stage_io import GateOutput, IdentityInputs
from atelier_runtime.stage_runner import StageContext, WorkerResources, stage_task

from ..identity.align import TEMPLATE_SIDE, FaceFinder, YuNetDetector, find_yunet
from ..identity.embedder import Embedder, EmbedderMissing
from ..identity.faces import FaceDetector, FaceModelMissing
from ..identity.score import BOX_MARGIN, identity_score

DETECTOR_KEY = "atelier_gpu.identity.detector"
EMBEDDER_KEY = "atelier_gpu.identity.embedder"


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


def _load_finder(settings: Any) -> FaceFinder:
    """The Haar detector, the eye cascade, and a YuNet detector (landmarks) when the InstantID face model folder
    (``ATELIER_IDENTITY_FACE_MODEL_DIR``) has one."""
    yunet = find_yunet(settings.identity_face_model_dir)
    return FaceFinder(FaceDetector(settings.identity_cascade_path),
                      yunet=YuNetDetector(yunet) if yunet is not None else None)


def cast_boxes(scene_output: Any, scene: Any) -> tuple[dict[str, Any], set[str]]:
    """Each cast member's box (normalised) and the ids whose box is the layout's (strict): the layout's boxes
    ``gpu.scene`` recorded, else the story plan's."""
    recorded = (getattr(scene_output, "model_extra", None) or {}).get("cast_boxes") or []
    layout = {b["character_id"]: b["box"] for b in recorded if isinstance(b, dict) and b.get("box")}
    boxes = {m.character_id: list(m.box.bbox) for m in scene.cast}
    boxes.update(layout)
    return boxes, set(layout)


def _load_embedder(path: Any) -> Embedder:
    if path is None:
        raise EmbedderMissing("no face embedder configured (ATELIER_IDENTITY_EMBEDDER_PATH)")
    return Embedder(path)


def gate_output(*, score: float | None, passed: bool, regenerate: bool, detail: str, artifact_key: str,
                strict: bool, warnings: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gate contract (``atelier_orchestrator.gates``) for one identity check."""
    item = {"name": "identity", "score": score, "passed": passed, "detail": detail}
    return {"gates": [item], "passed": passed, "score": score, "regenerate": regenerate and not passed,
            "detail": detail, "artifact_key": artifact_key, "strict": strict, "warnings": warnings, **(extra or {})}


@stage_task(S_GATE_IDENTITY)
def identity_gate(ctx: StageContext) -> GateOutput:
    """Score one scene's identities against the character sheets; ask for a regeneration when they do not match."""
    up = ctx.inputs(IdentityInputs)
    scene_key = up.scene.scene_key
    index = ctx.parsed_item(items.parse_scene)
    scene = next((s for s in up.scenes.plan.scenes if s.index == index), None)
    if scene is None:
        raise StageError(f"gate.identity: the story plan has no scene {ctx.task.item}", retryable=False, field="item")
    cast = list(dict.fromkeys(c.character_id for c in scene.cast))
    settings = ctx.settings
    strict = settings.identity_gate_strict
    detector = _tool(ctx.res, DETECTOR_KEY, lambda: _load_finder(settings))
    embedder = _tool(ctx.res, EMBEDDER_KEY, lambda: _load_embedder(settings.identity_embedder_path))
    extra = {"regeneration": ctx.task.regeneration, "cast": cast, "threshold": settings.identity_threshold,
             "identity_mode": (up.scene.identity or {}).get("mode")}
    if isinstance(detector, Exception) or isinstance(embedder, Exception):
        reason = f"identity cannot be checked: {detector if isinstance(detector, Exception) else embedder}"
        out = gate_output(score=None, passed=False, regenerate=False, detail=reason, artifact_key=scene_key,
                          strict=strict, warnings=[reason], extra=extra)
    else:
        image = ctx.get_image(scene_key, "scene").convert("RGB")
        sheets = {}
        for cid in cast:
            if cid not in up.sheets:
                raise StageError(f"gate.identity: no character sheet for {cid} upstream", retryable=False)
            sheets[cid] = ctx.get_image(up.sheets[cid].sheet_key, f"character sheet of {cid}").convert("RGB")
        ctx.progress(1, 2)
        boxes, strict_ids = cast_boxes(up.scene, scene)
        names = {c.id: c.name for c in up.scenes.plan.characters}
        result = identity_score(image, sheets, detector=detector, embedder=embedder,
                                threshold=settings.identity_threshold, boxes=boxes, names=names,
                                strict_boxes=strict_ids)
        report = {"characters": result.characters, "faces": result.faces, "box_margin": BOX_MARGIN,
                  "boxes_from": {cid: "layout" if cid in strict_ids else "story_plan" for cid in boxes},
                  "alignment": f"arcface-5pt-{TEMPLATE_SIDE}", "threshold": settings.identity_threshold}
        extra.update({"characters": result.characters, "faces": result.faces, "report": report})
        out = gate_output(score=None if result.score is None else round(result.score, 4), passed=result.passed,
                          regenerate=result.regenerate, detail=result.detail, artifact_key=scene_key,
                          strict=strict, warnings=result.warnings, extra=extra)
    ctx.put(name=items.attempt_name(ctx.task.item, ctx.task.regeneration),
            data=json.dumps(out, sort_keys=True, indent=2).encode(), ext="json", content_type="application/json",
            kind="gate_report", meta={"gate": "identity", "score": out["score"], "passed": out["passed"],
                                      "regeneration": ctx.task.regeneration, "scene_key": scene_key})
    ctx.progress(2, 2)
    return GateOutput.model_validate(out)
