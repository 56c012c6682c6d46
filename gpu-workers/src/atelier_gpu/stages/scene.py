"""``gpu.scene``: one story scene (item ``s<index>``) from its ``LayoutPlan`` (``plan.scene_layout``), the cast
kept recognisable by the identity path the settings allow (``recipes/identity.py``: InstantID, IP-Adapter, or
the weight-free reference-only attention on the character sheets). A gate's regeneration offsets the seed and
is stored under its own name (``s2.r1``).

The recipe: a scene with two or more characters is ``regional`` (``source: "cast"``): each character's prompt
(its box caption — name, pose, expression — and the character's look) acts only inside that character's box,
at every step, blended with the scene prompt by ``CAST_BASE_RATIO``; the rest of the picture gets the scene
prompt alone. That keeps two characters' looks from bleeding into each other. A scene with one character (or
none) is ``layout`` (its boxes ground the first steps). The output and the artifact record ``regional``
(``recipes.regional.record``: every region's box, prompt and character id, and the base ratio). InstantID and
the IP-Adapter path run their own pipeline call and take the scene prompt alone.

The output records ``cast_boxes`` (each character box of the layout with the cast member it shows), so
``gate.identity`` looks for each character's face in the box the scene was drawn with.
"""

from __future__ import annotations

from typing import Any

from atelier_contracts import items
from atelier_contracts.catalogue import S_SCENE, S_SCENE_LAYOUT
from atelier_contracts.errors import StageError
from atelier_contracts.plans import Box, CastMember, Character, LayoutPlan, Scene
from atelier_contracts.stage_io import SceneInputs, SceneOutput
from atelier_runtime.stage_runner import StageContext, stage_task
from PIL import Image

from .. import serving
from ..generation import REGIONAL_FAMILIES, generate, model_and_size, registry, request
from ..recipes import identity as identity_recipe

CAST_BASE_RATIO = 0.5  # the characters share a class (people): RPG's advice is a base prompt at about 0.5


def cast_regions(layout: LayoutPlan, scene: Scene, characters: dict[str, Character],
                 sheet_keys: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The layout's character boxes as regions, each with its own character's prompt and id.

    A box is matched to its cast member by its sheet key (``ref_artifact``), else by its box, else by cast
    order; its prompt is the box caption (name, pose, expression, or those of the member) and the character's
    look. Boxes without a prompt are left to the scene prompt. Captioned entity boxes (a page's own layout) follow
    as regions of their own.
    """
    by_sheet = {key: cid for cid, key in (sheet_keys or {}).items()}
    left = list(scene.cast)
    regions = []
    for box in (b for b in layout.boxes if b.role == "character"):
        member = _member_for(box, left, by_sheet)
        if member is not None:
            left.remove(member)
        character = characters.get(member.character_id) if member is not None else None
        parts = [box.caption.strip()] if box.caption.strip() else (
            [character.name if character else "", member.pose, member.expression] if member is not None else [])
        if character is not None and character.description.strip() and character.description not in box.caption:
            parts.append(character.description.strip())
        prompt = ", ".join(p for p in parts if p)
        if not prompt:
            continue
        label = {"character_id": member.character_id} if member is not None else None
        if label is not None and character is not None:
            label["name"] = character.name
        regions.append({"box": list(box.bbox), "prompt": prompt, "role": "character", "z": box.z, "label": label})
    # a page's own layout (spec.layouts) may add captioned objects: each acts in its box like a character
    regions += [{"box": list(b.bbox), "prompt": b.caption.strip(), "role": "entity", "z": b.z, "label": None}
                for b in layout.boxes if b.role == "entity" and b.caption.strip()]
    return regions


def cast_boxes(layout: LayoutPlan, scene: Scene, characters: dict[str, Character],
               sheet_keys: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The layout's character boxes with the cast member each shows (matched as ``cast_regions`` does):
    ``character_id``, ``name``, ``box`` (normalised x1, y1, x2, y2) — what ``gate.identity`` scores each
    character in."""
    by_sheet = {key: cid for cid, key in (sheet_keys or {}).items()}
    left = list(scene.cast)
    out = []
    for box in (b for b in layout.boxes if b.role == "character"):
        member = _member_for(box, left, by_sheet)
        if member is None:
            continue
        left.remove(member)
        character = characters.get(member.character_id)
        out.append({"character_id": member.character_id, "name": character.name if character else member.character_id,
                    "box": list(box.bbox)})
    return out


def _member_for(box: Box, left: list[CastMember], by_sheet: dict[str, str]) -> CastMember | None:
    """The cast member a character box shows: by sheet key, else the same box, else the next in cast order."""
    if box.ref_artifact and box.ref_artifact in by_sheet:
        found = next((m for m in left if m.character_id == by_sheet[box.ref_artifact]), None)
        if found is not None:
            return found
    same = next((m for m in left if all(abs(a - b) <= 1e-3 for a, b in zip(m.box.bbox, box.bbox, strict=True))),
                None)
    return same or (left[0] if left else None)


def _scene_generator(layout: LayoutPlan, regions: list[dict[str, Any]] | None = None) -> Any:
    """The ``generate`` the identity path calls for the scene's pixels: the regional recipe on the cast's boxes
    when there are two or more characters, else the layout recipe on the scene's boxes."""

    def generate_scene(ctx: StageContext, *, prompt: str, negative_prompt: str, target: tuple[int, int], seed: int
                       ) -> tuple[Image.Image, dict[str, Any]]:
        model_id, spec, steps, (width, height) = model_and_size(ctx, target)
        if spec.family not in REGIONAL_FAMILIES:
            return generate(ctx, prompt=prompt, negative_prompt=negative_prompt, target=target, seed=seed)
        if regions is not None and len(regions) >= 2:
            # the scene prompt (characters, poses, backdrop) is the base prompt; each character's own prompt acts
            # only inside its box, so two characters' looks do not bleed into each other
            recipe, params = "regional", {"source": "cast", "base_ratio": CAST_BASE_RATIO, "regions": regions}
        else:
            # the scene prompt is the base prompt; the boxes ground the cast for the first steps
            recipe = "layout"
            params = {"plan": layout.model_copy(update={"global_caption": prompt}).model_dump(mode="json")}
        req = request(ctx, recipe=recipe, target=target, seed=seed, prompt=prompt,
                      negative_prompt=negative_prompt, params=params, kind="scene", output_key="scene_key")
        outcome = serving.execute(registry(ctx.res), [req], max_batch=1)[id(req)]
        if outcome.error is not None:
            raise outcome.error
        info = {"width": width, "height": height, "seed": seed, "model": model_id, "steps": steps}
        return outcome.image, {**info, **outcome.info}

    return generate_scene


@stage_task(S_SCENE)
def scene(ctx: StageContext) -> SceneOutput:
    """One story scene, sized and seeded by its layout plan."""
    up = ctx.inputs(SceneInputs)
    scene_index = ctx.parsed_item(items.parse_scene)
    plan = up.scenes.plan
    ordered = sorted(plan.scenes, key=lambda s: s.index)
    position = next((i for i, s in enumerate(ordered) if s.index == scene_index), None)
    if position is None:
        raise StageError(f"gpu.scene: the story plan has no scene {scene_index}", retryable=False, field="item")
    layouts = up.scene_layout.layouts
    if position >= len(layouts):
        raise StageError(f"gpu.scene: upstream.{S_SCENE_LAYOUT}.layouts has no layout for scene {scene_index}",
                         retryable=False)
    layout = layouts[position]
    prompt = ordered[position].scene_prompt
    characters = {c.id: c for c in plan.characters}
    sheet_keys = {cid: sheet.sheet_key for cid, sheet in up.sheets.items()}
    regions = cast_regions(layout, ordered[position], characters, sheet_keys)
    image, info = identity_recipe.generate_scene(
        ctx, generate=_scene_generator(layout, regions), prompt=prompt,
        negative_prompt=layout.negative_prompt or plan.negative_prompt, target=(layout.width, layout.height),
        seed=identity_recipe.scene_seed(layout.seed, ctx.task.regeneration),
        cast=list(dict.fromkeys(c.character_id for c in ordered[position].cast)), layout=layout,
        regions=regions, base_ratio=CAST_BASE_RATIO)
    key = identity_recipe.put_scene(ctx, image, info=info, prompt=prompt)
    boxes = cast_boxes(layout, ordered[position], characters, sheet_keys)
    return SceneOutput.model_validate({"scene_key": key, **info, "cast_boxes": boxes})
