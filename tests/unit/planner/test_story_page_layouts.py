"""A story's own page layouts (``spec.layouts``): their character boxes place the page's cast in order, their entity
boxes join the page's layout with their captions, with the rules and the LLM planner alike."""

from __future__ import annotations

from typing import Any

import pytest
from atelier_contracts.plans import LayoutPlan, StoryPlan
from atelier_contracts.specs import StorySpec
from atelier_planner.backends import backend_from_settings
from atelier_planner.backends.llm import LLMBackend
from atelier_planner.backends.rules import RulesBackend
from atelier_planner.preview import preview_plans
from llm_double import ChatDouble, schema_name
from pydantic import ValidationError

SPEC = {"premise": "Two friends find a lost kite on a beach and return it to a girl", "culture": "Kerala, India",
        "pages": 2, "seed": 7}
PAGE_2 = {"page": 2, "boxes": [{"bbox": [0.55, 0.3, 0.95, 1.0]}, {"bbox": [0.05, 0.3, 0.45, 1.0]},
                               {"bbox": [0.4, 0.05, 0.6, 0.25], "role": "entity", "caption": "a red kite"}]}


def _check(stages: dict[str, Any]) -> tuple[StoryPlan, list[LayoutPlan]]:
    plan = StoryPlan.model_validate(stages["plan.scenes"]["plan"])
    layouts = [LayoutPlan.model_validate(lp) for lp in stages["plan.scene_layout"]["layouts"]]
    page = sorted(plan.scenes, key=lambda s: s.index)[1]
    assert [list(m.box.bbox) for m in page.cast[:2]] == [PAGE_2["boxes"][0]["bbox"], PAGE_2["boxes"][1]["bbox"]]
    characters = [b for b in layouts[1].boxes if b.role == "character"]
    assert [list(b.bbox) for b in characters[:2]] == [PAGE_2["boxes"][0]["bbox"], PAGE_2["boxes"][1]["bbox"]]
    [kite] = [b for b in layouts[1].boxes if b.role == "entity"]
    assert list(kite.bbox) == [0.4, 0.05, 0.6, 0.25] and kite.caption == "a red kite"
    assert not any(b.role == "entity" for b in layouts[0].boxes)  # page 1 is the planner's own
    assert stages["plan.scenes"]["page_layouts"]["pages"] == [2]
    return plan, layouts


def test_the_rules_planner_lays_out_a_page_in_its_own_boxes() -> None:
    without = preview_plans(RulesBackend(), kind="story", spec=SPEC)["stages"]
    stages = preview_plans(RulesBackend(), kind="story", spec={**SPEC, "layouts": [PAGE_2]})["stages"]
    plan, layouts = _check(stages)
    before = StoryPlan.model_validate(without["plan.scenes"]["plan"])
    assert plan.scenes[0].cast == before.scenes[0].cast  # the other page is untouched
    assert plan.scenes[1].narration == before.scenes[1].narration  # only the boxes moved
    page = plan.scenes[1]
    notes = stages["plan.scenes"]["page_layouts"]["notes"]
    if len(page.cast) > 2:  # a cast member beyond the boxes keeps the planner's box, and the plan says so
        assert notes and notes[0].startswith("page 2:") and "keep(s) the planner's box" in notes[0]
        assert page.cast[2].box == before.scenes[1].cast[2].box
    else:
        assert notes == []


def test_the_llm_planner_keeps_the_pages_own_layout_and_designs_the_others(openai_settings: Any,
                                                                          llm_double: ChatDouble) -> None:
    b = backend_from_settings(openai_settings)
    assert isinstance(b, LLMBackend)
    stages = preview_plans(b, kind="story", spec={**SPEC, "layouts": [PAGE_2]})["stages"]
    _check(stages)
    designed = [r for r in llm_double.requests if schema_name(r) == "creatilayout_scene"]
    assert len(designed) == 1  # page 1 only
    runs = stages["plan.scene_layout"]["planner"]
    assert "spec.layouts" in str(runs)


@pytest.mark.parametrize("layouts,message", [
    ([{"page": 3, "boxes": [{"bbox": [0.1, 0.1, 0.5, 0.9]}]}], "[0].page 3: the story has 2 page(s)"),
    ([PAGE_2, PAGE_2], "[1].page 2: a page has one layout"),
    ([{"page": 1, "boxes": [{"bbox": [0.1, 0.1, 0.5, 0.9], "role": "entity"}]}], "needs a caption"),
    ([{"page": 1, "boxes": [{"bbox": [0.5, 0.1, 0.1, 0.9]}]}], "0<=x1<x2<=1"),
    ([{"page": 1, "boxes": []}], "at least 1"),
])
def test_page_layouts_that_do_not_fit_the_story_are_refused(layouts: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        StorySpec.model_validate({**SPEC, "layouts": layouts})
