from __future__ import annotations

import pytest
from atelier_contracts.plans import RegionalPlan, parse_split_ratio, split_ratio_to_boxes
from atelier_planner.rpg import extract_entities, recaption, regional_prompt_text, split_ratio_for

CAPTIONS = [
    "a marble counter with a folded towel on the left and a eucalyptus sprig on the right, soft window light",
    "a red apple above a blue book",
    "a cat and a dog and a parrot",
    "a lamp at the top left, a sofa at the bottom right and a plant at the bottom left",
    "a studio backdrop",
    "a dog to the left of a cat, cinematic lighting",
    "birds in the sky, a lake at the bottom, a boat in the middle",
    "a castle on a hill; a dragon; a knight; a horse; a tree; a moon; a river; a cloud",
]


@pytest.mark.parametrize("caption", CAPTIONS)
def test_split_ratio_cells_match_regions(caption: str) -> None:
    plan = recaption(caption)
    cells = split_ratio_to_boxes(plan.split_ratio)
    assert len(cells) == len(plan.regions)
    assert [(r.row, r.col) for r in plan.regions] == [(r, c) for r, c, _ in cells]
    assert plan.base_prompt == caption and plan.base_ratio == pytest.approx(0.3)
    assert len(plan.regions) <= 6
    RegionalPlan.model_validate(plan.model_dump())  # round-trips through the contract


def test_left_right_are_columns_of_one_row() -> None:
    plan = recaption(CAPTIONS[0])
    assert plan.split_ratio == "1,1"
    assert [r.prompt.split(",")[0] for r in plan.regions] == ["a folded towel", "a eucalyptus sprig"]
    # style phrases go to every region as a suffix, not into their own cell
    assert all(r.prompt.endswith("soft window light") for r in plan.regions)


def test_above_below_are_rows() -> None:
    plan = recaption("a red apple above a blue book")
    rows = parse_split_ratio(plan.split_ratio)
    assert len(rows) == 2 and all(len(cells) == 1 for _, cells in rows)
    assert plan.regions[0].prompt == "a red apple" and plan.regions[1].prompt == "a blue book"


def test_below_relation_puts_subject_in_bottom_row() -> None:
    plan = recaption("a cat sleeping under a wooden table")
    assert [(r.row, r.prompt) for r in plan.regions] == [(0, "a wooden table"), (1, "a cat sleeping")]


def test_grid_rows_and_columns() -> None:
    plan = recaption(CAPTIONS[3])
    assert plan.split_ratio == "1,1;1,1,1"
    by_cell = {(r.row, r.col): r.prompt for r in plan.regions}
    assert by_cell == {(0, 0): "a lamp", (1, 0): "a plant", (1, 1): "a sofa"}


def test_no_cues_gives_equal_columns() -> None:
    plan = recaption("a cat and a dog and a parrot")
    assert plan.split_ratio == "1,1,1"
    widths = parse_split_ratio(plan.split_ratio)[0][1]
    assert widths == pytest.approx([1 / 3] * 3)
    assert regional_prompt_text(plan) == "a cat BREAK a dog BREAK a parrot"


def test_single_entity_is_one_cell() -> None:
    plan = recaption("a studio backdrop")
    assert plan.split_ratio == "1" and len(plan.regions) == 1


def test_extract_entities_separates_style() -> None:
    ents, style = extract_entities("a dog on the left, cinematic lighting, a cat on the right")
    assert [(e.text, e.h) for e in ents] == [("a dog", "left"), ("a cat", "right")]
    assert style == ["cinematic lighting"]


def test_split_ratio_for_multi_row_grammar() -> None:
    assert split_ratio_for([[1], [1, 1]]) == "1,1;1,1,1"
    assert len(split_ratio_to_boxes(split_ratio_for([[1], [1, 1]]))) == 3


def test_empty_prompt_rejected() -> None:
    with pytest.raises(ValueError):
        recaption("   ")
