"""CreatiLayout's LayoutDesigner on an LLM: a global caption and captioned boxes, then the repair.

* Design (:func:`design_task`): from a prompt, with the user's centre points or fixed boxes passed as
  data; the user's fixed boxes are kept as given (the model only adds the others), at most 10 in all.
* Scene layout (:func:`scene_task`): one box per cast member of a story scene (the names are an enum in
  the schema), children shorter than adults.

Either answer passes :func:`atelier_planner.designer.repair_drafts` (order, clamp, minimum sizes, <= 10).
"""

from __future__ import annotations

from typing import Any

from atelier_contracts.plans import Box, LayoutPlan, PlannerInfo, Scene

from ..designer import Draft, repair_drafts
from ..layout import MAX_BOXES, Z_ENTITY
from .runner import Problem, Task
from .schema import Limits, array, box, enum, obj, per_mille, string, to_per_mille

Z_CHARACTER = 1


def design_schema(limits: Limits, room: int) -> dict[str, Any]:
    region = obj({"caption": string(limits.short), "box": box()})
    return obj({"global_caption": string(limits.long), "regions": array(region, 1 if room else 0, max(0, room))})


def design_task(prompt: str, *, width: int, height: int, points: list[dict[str, Any]] | None,
                boxes: list[Box] | None, plan_id: str, seed: int, planner: PlannerInfo,
                limits: Limits) -> Task[tuple[LayoutPlan, list[str]]]:
    fixed = list(boxes or [])
    room = MAX_BOXES - len(fixed)

    def build(a: dict[str, Any]) -> tuple[LayoutPlan, list[str]]:
        drafts = [Draft(b.role, b.bbox, b.caption, b.z, b.ref_artifact) for b in fixed]
        drafts += [Draft("entity", per_mille(r["box"]), r["caption"], Z_ENTITY) for r in a["regions"][:room]]
        rep = repair_drafts(drafts, width=width, height=height)
        plan = LayoutPlan(plan_id=plan_id, seed=seed, width=width, height=height, planner=planner,
                          global_caption=a["global_caption"], boxes=rep.boxes)
        return plan, rep.notes

    def check(v: tuple[LayoutPlan, list[str]]) -> list[Problem]:
        plan, _ = v
        kept = plan.boxes[:len(fixed)]
        moved = [b.caption for b, f in zip(kept, fixed, strict=True) if b.bbox != f.bbox]
        return [Problem(f"the fixed box {c!r} was changed by the repair", "warning") for c in moved]

    data = {"prompt": prompt, "canvas": {"width": width, "height": height},
            "centre_points": [{"caption": p.get("caption"), "point": to_per_mille([p["x"], p["y"]])}
                              for p in points or []],
            "fixed_boxes": [{"caption": b.caption, "box": to_per_mille(b.bbox)} for b in fixed],
            "max_new_regions": room}
    return Task(prompt_id="creatilayout.design", data=data, schema=design_schema(limits, room), build=build,
                check=check)


def scene_schema(names: list[str], limits: Limits) -> dict[str, Any]:
    item = obj({"character": enum(names), "box": box()})
    return obj({"global_caption": string(limits.long), "boxes": array(item, len(names), len(names))})


def scene_task(scene: Scene, *, names: dict[str, str], looks: dict[str, str], sheets: dict[str, str | None],
               width: int, height: int, plan_id: str, seed: int, negative_prompt: str, planner: PlannerInfo,
               limits: Limits) -> Task[tuple[LayoutPlan, list[str]]]:
    """``names``/``looks``/``sheets`` map character ids to name, visual description and sheet key."""
    cast = list(scene.cast)
    by_name = {names[m.character_id]: m for m in cast}

    def build(a: dict[str, Any]) -> tuple[LayoutPlan, list[str]]:
        drafts = [Draft("background", (0.0, 0.0, 1.0, 1.0), scene.backdrop, 0)]
        placed: set[str] = set()
        for item in a["boxes"]:
            m = by_name[item["character"]]
            if m.character_id in placed:
                continue
            placed.add(m.character_id)
            drafts.append(Draft("character", per_mille(item["box"]), m.box.caption, Z_CHARACTER,
                                sheets.get(m.character_id)))
        for m in cast:  # a cast member the answer skipped keeps the rules box
            if m.character_id not in placed:
                drafts.append(Draft("character", m.box.bbox, m.box.caption, Z_CHARACTER, sheets.get(m.character_id)))
        rep = repair_drafts(drafts, width=width, height=height, min_px=48)
        plan = LayoutPlan(plan_id=plan_id, seed=seed, width=width, height=height, negative_prompt=negative_prompt,
                          planner=planner, global_caption=a["global_caption"], boxes=rep.boxes)
        return plan, rep.notes

    data = {"canvas": {"width": width, "height": height}, "backdrop": scene.backdrop,
            "cast": [{"name": names[m.character_id], "looks": looks.get(m.character_id, ""), "pose": m.pose,
                      "expression": m.expression} for m in cast],
            "scene_prompt": scene.scene_prompt}
    return Task(prompt_id="creatilayout.scene", data=data, schema=scene_schema(list(by_name), limits), build=build)
