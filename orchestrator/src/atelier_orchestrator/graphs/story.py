"""Story stage graph (KAHANI, with RPG, CreatiLayout and identity) — DESIGN §1.

    plan.culture → plan.story → plan.characters → plan.scenes → gpu.character_sheet[character]
      → plan.scene_layout → gpu.scene[scene] → gate.identity[scene] → render.storybook[scene]
      → gpu.watermark[scene] → deliver

Character items are known once plan.characters has run; scene items come from the spec's page count.
gate.identity compares every character's face in the scene with its sheet (ID-Aligner's reward); a scene
below threshold is regenerated with a new seed within the job's budget, and the best attempt is kept
(``atelier_orchestrator.gates``). The watermark stage also reads the plan and the scene, for the C2PA
manifest's plan id, model and seed.
"""

from __future__ import annotations

from typing import Any

from atelier_contracts import items
from atelier_contracts.catalogue import (
    S_CHARACTER_SHEET,
    S_CHARACTERS,
    S_CULTURE,
    S_DELIVER,
    S_GATE_IDENTITY,
    S_SCENE,
    S_SCENE_LAYOUT,
    S_SCENES,
    S_STORY,
    S_STORYBOOK,
    S_WATERMARK,
)
from atelier_contracts.stage_io import CastRecord

from .base import Graph, StageDef


def characters(_spec: dict[str, Any], outputs: dict[str, dict[str, Any]]) -> list[str] | None:
    """One item per character of ``plan.characters`` (its id), once that stage has run."""
    out = outputs.get(S_CHARACTERS)
    if out is None:
        return None
    return [c.id for c in CastRecord.model_validate(out).characters]


def scenes(spec: dict[str, Any], _outputs: dict[str, dict[str, Any]]) -> list[str]:
    """One item per page: ``s0``, ``s1``, ..."""
    return [items.scene(i) for i in range(spec.get("pages", 4))]


STORY = Graph(
    kind="story",
    item_spaces={"character": characters, "scene": scenes},
    stages=(
        StageDef(S_CULTURE),
        StageDef(S_STORY, after=(S_CULTURE,)),
        StageDef(S_CHARACTERS, after=(S_STORY, S_CULTURE)),
        StageDef(S_SCENES, after=(S_STORY, S_CHARACTERS, S_CULTURE)),
        StageDef(S_CHARACTER_SHEET, after=(S_CHARACTERS,)),
        StageDef(S_SCENE_LAYOUT, after=(S_SCENES, S_CHARACTER_SHEET)),
        StageDef(S_SCENE, after=(S_SCENES, S_SCENE_LAYOUT, S_CHARACTER_SHEET)),
        StageDef(S_GATE_IDENTITY, after=(S_SCENES, S_CHARACTER_SHEET, S_SCENE)),
        StageDef(S_STORYBOOK, after=(S_SCENES, S_SCENE, S_GATE_IDENTITY)),
        StageDef(S_WATERMARK, after=(S_SCENES, S_SCENE, S_STORYBOOK), fan_out="scene"),
        StageDef(S_DELIVER, after=(S_WATERMARK,)),
    ),
)
