"""``gpu.character_sheet``: the canonical square reference image of one character (item = character id), drawn
from the character's sheet prompt with the character's own seed; batched with other sheets and backgrounds."""

from __future__ import annotations

from atelier_contracts.catalogue import S_CHARACTER_SHEET
from atelier_contracts.errors import StageError
from atelier_contracts.stage_io import SheetInputs, SheetOutput
from atelier_runtime.stage_runner import StageContext, stage_task

from .. import serving
from ..generation import registry, request
from ..serving import GenRequest


@serving.batchable(S_CHARACTER_SHEET)
def prepare_character_sheet(ctx: StageContext) -> GenRequest:
    """The request for one character sheet: square, the character's own seed, text-to-image."""
    characters = ctx.inputs(SheetInputs).characters.characters
    character = next((c for c in characters if c.id == ctx.task.item), None)
    if character is None:
        raise StageError(f"gpu.character_sheet: no character with id {ctx.task.item!r} upstream", retryable=False,
                         field="item")
    side = ctx.settings.gen_max_side
    return request(ctx, recipe="text_to_image", target=(side, side), seed=character.seed % 2**32,
                   prompt=character.sheet_prompt, negative_prompt="", params={}, kind="character_sheet",
                   output_key="sheet_key")


@stage_task(S_CHARACTER_SHEET)
def character_sheet(ctx: StageContext) -> SheetOutput:
    """The reference image of one character, batched when it can be."""
    return SheetOutput.model_validate(serving.serve(ctx, registry=registry(ctx.res)))
