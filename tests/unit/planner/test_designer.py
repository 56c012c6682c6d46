"""CreatiLayout designer (rules): layouts from a prompt, from centre points, from some boxes; the repair."""

from __future__ import annotations

import pytest
from atelier_contracts.plans import Box, LayoutPlan
from atelier_planner.designer import (
    Draft,
    design_layout,
    place_in_free_space,
    repair_drafts,
    repair_layout,
    size_prior,
)
from atelier_planner.layout import overlaps, safe_zone_for


def centre(b: tuple[float, float, float, float]) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def test_design_from_a_prompt_follows_spatial_words() -> None:
    plan, notes = design_layout("a lamp at the top left, a sofa at the bottom right and a plant at the bottom left, "
                                "warm light")
    assert plan.global_caption.startswith("a lamp at the top left")
    by = {b.caption.split(",")[0]: b.bbox for b in plan.boxes}
    assert set(by) == {"a lamp", "a sofa", "a plant"}
    lamp, sofa, plant = (centre(by[k]) for k in ("a lamp", "a sofa", "a plant"))
    assert lamp[1] < plant[1] and lamp[0] < sofa[0] and plant[0] < sofa[0]
    assert all(b.caption.endswith("warm light") for b in plan.boxes)  # style words reach every region
    assert all(b.role == "entity" for b in plan.boxes) and notes == []
    LayoutPlan.model_validate(plan.model_dump())


def test_without_cues_entities_stand_in_reading_order_on_a_third_line() -> None:
    plan, _ = design_layout("a cat and a dog and a parrot")
    xs = [centre(b.bbox)[0] for b in plan.boxes]
    assert [b.caption for b in plan.boxes] == ["a cat", "a dog", "a parrot"] and xs == sorted(xs)
    assert all(abs(centre(b.bbox)[1] - 2 / 3) < 0.01 for b in plan.boxes)
    assert not any(overlaps(a.bbox, b.bbox) for i, a in enumerate(plan.boxes) for b in plan.boxes[i + 1:])


def test_centre_points_place_entities_in_order_or_by_caption() -> None:
    plan, _ = design_layout("a cat and a dog", points=[(0.2, 0.3), (0.8, 0.7)])
    cat, dog = plan.boxes
    assert centre(cat.bbox) == pytest.approx((0.2, 0.3), abs=0.002) and centre(dog.bbox) == pytest.approx((0.8, 0.7), abs=0.002)
    named, _ = design_layout("a cat and a dog", points=[{"caption": "dog", "x": 0.25, "y": 0.5}])
    dog = next(b for b in named.boxes if "dog" in b.caption)
    assert centre(dog.bbox) == pytest.approx((0.25, 0.5), abs=0.002)
    with pytest.raises(ValueError, match="0..1"):
        design_layout("a cat", points=[(1.5, 0.2)])


def test_partial_boxes_are_kept_and_the_rest_goes_into_free_space() -> None:
    mine = Box(bbox=(0.0, 0.0, 0.6, 0.6), caption="a red apple", role="entity", z=1)
    plan, _ = design_layout("a red apple and a blue book and a vase", boxes=[mine])
    assert plan.boxes[0].bbox == mine.bbox and plan.boxes[0].caption == "a red apple"
    others = plan.boxes[1:]
    assert {b.caption for b in others} == {"a blue book", "a vase"}
    assert not any(overlaps(b.bbox, mine.bbox) for b in others)


def test_at_most_ten_boxes() -> None:
    prompt = "; ".join(f"a {w}" for w in "cat dog bird fox owl cow horse duck tree house lamp cup book".split())
    plan, _ = design_layout(prompt)
    assert 1 <= len(plan.boxes) <= 10


def test_size_priors() -> None:
    assert size_prior("a tall oak tree")[1] > size_prior("a ceramic cup")[1]
    assert size_prior("the evening sky")[0] == pytest.approx(0.9)
    assert size_prior("a gizmo") == size_prior("a widget")  # the default


def test_repair_clamps_orders_grows_and_moves_text_off_the_product() -> None:
    safe = safe_zone_for(1080, 1920)
    drafts = [Draft("product", (0.2, 0.3, 0.8, 0.7)), Draft("tagline", (0.95, 0.85, 0.1, 0.35), "headline: Hi"),
              Draft("cta", (0.45, 0.5, 0.46, 0.505), "cta: Buy"), Draft("entity", (-0.2, 0.9, 0.3, 1.3), "a towel")]
    fixed = repair_drafts(drafts, width=1080, height=1920, safe=safe)
    product, headline, cta, towel = fixed.boxes
    for b in (headline, cta):
        assert not overlaps(b.bbox, product.bbox) and safe.contains(b.bbox)
        assert (b.bbox[2] - b.bbox[0]) * 1080 >= 15.9 and (b.bbox[3] - b.bbox[1]) * 1920 >= 15.9
    assert towel.bbox == (0.0, 0.9, 0.3, 1.0)  # clamped, and background objects need no safe zone
    joined = " ".join(fixed.notes)
    for what in ("corners reordered", "moved inside the safe zone", "moved off the product", "grown to the minimum",
                 "clamped to the canvas"):
        assert what in joined


def test_repair_cuts_the_product_when_text_has_nowhere_else_to_go() -> None:
    drafts = [Draft("product", (0.0, 0.0, 1.0, 1.0)), Draft("tagline", (0.1, 0.05, 0.9, 0.2), "headline: Hi")]
    fixed = repair_drafts(drafts, width=1000, height=1000)
    product, text = fixed.boxes
    assert not overlaps(product.bbox, text.bbox)
    assert product.bbox[1] >= text.bbox[3]  # the product keeps the larger piece, below the text
    assert "product box was cut back" in " ".join(fixed.notes)


def test_allow_occlude_leaves_text_on_the_product() -> None:
    drafts = [Draft("product", (0.1, 0.1, 0.9, 0.9)), Draft("tagline", (0.2, 0.2, 0.5, 0.3), "headline: Hi")]
    fixed = repair_drafts(drafts, width=1000, height=1000, allow_occlude=True)
    assert fixed.boxes[1].bbox == (0.2, 0.2, 0.5, 0.3) and fixed.notes == []


def test_repair_keeps_at_most_ten_boxes_dropping_background_objects_first() -> None:
    drafts = [Draft("product", (0.1, 0.1, 0.4, 0.4)), Draft("tagline", (0.5, 0.1, 0.9, 0.2), "headline: Hi")]
    drafts += [Draft("entity", (0.05 * i, 0.8, 0.05 * i + 0.04, 0.9), f"object {i}") for i in range(12)]
    fixed = repair_drafts(drafts, width=1000, height=1000)
    roles = [b.role for b in fixed.boxes]
    assert len(roles) == 10 and roles[:2] == ["product", "tagline"]
    assert sum("dropped" in n for n in fixed.notes) == 4


def test_repair_layout_on_a_plan() -> None:
    from atelier_planner.common import RULES_PLANNER

    plan = LayoutPlan(plan_id="p", seed=1, width=1200, height=628, planner=RULES_PLANNER, global_caption="x",
                      boxes=[Box(bbox=(0.5, 0.1, 0.95, 0.9), role="product"),
                             Box(bbox=(0.4, 0.2, 0.7, 0.4), role="tagline", caption="headline: A")])
    fixed, notes = repair_layout(plan, safe=safe_zone_for(1200, 628))
    assert not overlaps(fixed.boxes[0].bbox, fixed.boxes[1].bbox) and notes


def test_free_space_finds_the_largest_hole() -> None:
    occupied = [(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 0.5, 1.0)]
    spot = place_in_free_space((0.3, 0.3), occupied)
    assert spot is not None and spot[0] >= 0.5 - 1e-9 and spot[1] >= 0.5 - 1e-9
    assert not any(overlaps(spot, o) for o in occupied)
    assert place_in_free_space((0.3, 0.3), [(0.0, 0.0, 1.0, 1.0)]) is None
