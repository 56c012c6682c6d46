"""Layout metrics on hand-made layouts with known answers."""

from __future__ import annotations

from fractions import Fraction

import pytest
from atelier_planner.layout import SafeZone
from atelier_planner.metrics import cells_metrics, layout_metrics, regional_metrics, union_area

F = Fraction


def test_union_area_counts_overlaps_once() -> None:
    assert union_area([(0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)]) == pytest.approx(0.25 + 0.25 - 0.0625)
    assert union_area([(0, 0, 1, 1), (0.2, 0.2, 0.4, 0.4)]) == pytest.approx(1.0)
    assert union_area([]) == 0.0


def test_perfect_layout_scores() -> None:
    boxes = [("background", (0, 0, 1, 1), 0), ("product", (0.1, 0.1, 0.45, 0.9), 2),
             ("underlay", (0.5, 0.1, 0.9, 0.5), 3), ("tagline", (0.55, 0.15, 0.85, 0.3), 4),
             ("tagline", (0.55, 0.32, 0.85, 0.45), 4), ("cta", (0.55, 0.6, 0.85, 0.7), 4)]
    m = layout_metrics(boxes, safe=SafeZone("t", 0.05, 0.05, 0.05, 0.05))
    assert m["boxes"] == 6
    assert m["overlap"] == 0 and m["product_occlusion"] == 0 and m["text_product_overlap"] == 0
    assert m["underlay_coverage"] == 1.0 and m["out_of_bounds"] == 0 and m["safe_zone_violation"] == 0
    assert m["alignment"] == pytest.approx(0.0)  # the texts share a left edge, the tops line up with the product


def test_bad_layout_scores() -> None:
    boxes = [("product", (0.2, 0.2, 0.6, 0.6), 2), ("tagline", (0.4, 0.4, 0.8, 0.8), 4),
             ("logo", (-0.1, 0.0, 0.1, 0.1), 4), ("underlay", (0.0, 0.9, 0.1, 1.0), 3)]
    m = layout_metrics(boxes, safe=SafeZone("t", 0.05, 0.05, 0.05, 0.05))
    assert m["product_occlusion"] == pytest.approx(0.04 / 0.16)  # the tagline covers a quarter of the product
    assert m["text_product_overlap"] == pytest.approx(0.25)
    assert m["overlap"] == pytest.approx((0.04 / 0.28) / 3)  # one overlapping pair out of three
    assert m["underlay_coverage"] == 0.0
    assert m["out_of_bounds"] > 0 and m["safe_zone_violation"] > 0
    assert m["alignment"] > 0


def test_no_product_or_underlay_gives_none() -> None:
    m = layout_metrics([("entity", (0, 0, 0.5, 0.5), 1)])
    assert m["product_occlusion"] is None and m["underlay_coverage"] is None and m["safe_zone_violation"] is None


def test_regional_cells_cover_the_canvas_exactly_once() -> None:
    m = regional_metrics("1,2,1;3,1,1,1")
    assert m == {"cells": 5, "rows": 2, "covers_canvas_exactly_once": True, "coverage": 1.0, "overlap": 0.0}
    # the check can fail: cells that overlap, leave a gap or stick out
    overlap = cells_metrics([(F(0), F(0), F(2, 3), F(1)), (F(1, 3), F(0), F(1), F(1))])
    gap = cells_metrics([(F(0), F(0), F(1, 2), F(1))])
    out = cells_metrics([(F(0), F(0), F(1), F(1)), (F(1), F(0), F(3, 2), F(1))])
    assert not overlap["covers_canvas_exactly_once"] and overlap["overlap"] == pytest.approx(1 / 3)
    assert not gap["covers_canvas_exactly_once"] and gap["coverage"] == 0.5
    assert not out["covers_canvas_exactly_once"]
