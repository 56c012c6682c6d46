"""Property tests of the rules layouts and the RPG grammar (hypothesis)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from atelier_contracts.placements import MAX_ASPECT, PLACEMENTS
from atelier_contracts.plans import parse_split_ratio, split_ratio_to_boxes
from atelier_contracts.specs import CampaignSpec
from atelier_planner import paid
from atelier_planner.layout import GRAPHIC_ROLES, MAX_OCCLUSION, MIN_TEXT_PX, TEXT_ROLES, overlaps, safe_zone_for
from atelier_planner.metrics import layout_metrics, regional_metrics
from atelier_planner.rpg import grid_split_ratio, ratio_grid, split_ratio_cells, split_ratio_from_cells
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COVERING = (*TEXT_ROLES, "logo", "underlay")


def spec_for(size: str, taglines: int, cta: bool, logo: bool, palette: list[str]) -> CampaignSpec:
    data: dict[str, Any] = {
        "brand": {"name": "Brand", "palette": palette, "logo": "logo-1" if logo else None},
        "product": {"name": "Cold Brew Coffee", "description": "A glass bottle of cold brew coffee.", "image": "img-1"},
        "taglines": ["Slow steeped. Boldly smooth.", "Twelve hours of patience", "In every sip"][:taglines],
        "cta": "Shop now" if cta else None, "sizes": [size]}
    return CampaignSpec.model_validate(data)


# free sizes the specs accept (up to 12:1), and every standard placement (the small IAB units included)
sizes = (st.tuples(st.integers(300, 4096), st.integers(250, 4096)).filter(lambda s: max(s) / min(s) <= MAX_ASPECT)
         | st.sampled_from([(p.width, p.height) for p in PLACEMENTS.values()]))
palettes = st.sampled_from([["#1F2937", "#F9FAFB"], ["#888888", "#F5E6D3", "#6B4226"], ["#FFD400"], ["#3B2416", "#C8102E"]])


@PROPS
@given(size=sizes, taglines=st.integers(1, 3), cta=st.booleans(), logo=st.booleans(), palette=palettes)
def test_rules_layout_keeps_text_off_the_product_and_inside_the_safe_zone(size: tuple[int, int], taglines: int,
                                                                          cta: bool, logo: bool,
                                                                          palette: list[str]) -> None:
    w, h = size
    spec = spec_for(f"{w}x{h}", taglines, cta, logo, palette)
    plan, infos = paid.ad_layout_with_info(spec, job_id="prop")
    variant = plan.variants[0]
    boxes = variant.layout.boxes
    safe = safe_zone_for(w, h)
    product = next(b for b in boxes if b.role == "product")
    assert len(boxes) <= 10
    shown = infos[f"{w}x{h}"]["taglines_shown"]
    assert [b.role for b in boxes].count("tagline") == shown
    # sub-taglines are left out only where they cannot be set at the placement's minimum text height
    assert shown == taglines or (min(w, h) < 400 and 1 <= shown < taglines), (size, shown, taglines)
    for b in boxes:
        x1, y1, x2, y2 = b.bbox
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1, (b.role, b.bbox)  # inside the canvas
        if b.role in GRAPHIC_ROLES:
            assert safe.contains(b.bbox), (b.role, b.bbox, safe.rect)
        if b.role in COVERING:
            assert not overlaps(b.bbox, product.bbox), (b.role, b.bbox, product.bbox)
        if b.role in TEXT_ROLES:
            assert (y2 - y1) * h >= MIN_TEXT_PX and (x2 - x1) * w >= 3 * MIN_TEXT_PX, (b.role, b.bbox, size)
    texts = [b for b in boxes if b.role == "tagline"]
    assert all(a.bbox[1] <= b.bbox[1] for a, b in zip(texts, texts[1:], strict=False))  # reading order
    m = infos[f"{w}x{h}"]["metrics"]
    assert m["text_product_overlap"] == 0 and m["safe_zone_violation"] == 0 and m["out_of_bounds"] == 0
    assert m["product_occlusion"] == 0
    assert infos[f"{w}x{h}"]["repairs"] == []  # the solver's layout needs no repair
    if any(b.role == "underlay" for b in boxes):
        assert m["underlay_coverage"] == 1.0


@PROPS
@given(size=sizes, taglines=st.integers(1, 3))
def test_allow_occlude_lets_graphics_cover_only_part_of_the_product(size: tuple[int, int], taglines: int) -> None:
    w, h = size
    spec = spec_for(f"{w}x{h}", taglines, True, False, ["#888888", "#F5E6D3", "#6B4226"])
    strict = paid.ad_layout(spec, job_id="p", allow_occlude=False).variants[0].layout
    loose = paid.ad_layout(spec, job_id="p", allow_occlude=True).variants[0].layout
    area = {lp_id: next(b for b in lp.boxes if b.role == "product").bbox for lp_id, lp in (("s", strict), ("l", loose))}
    sa = (area["s"][2] - area["s"][0]) * (area["s"][3] - area["s"][1])
    la = (area["l"][2] - area["l"][0]) * (area["l"][3] - area["l"][1])
    assert la >= sa  # the product grows under the text side
    occlusion = layout_metrics(loose.boxes)["product_occlusion"]
    assert occlusion is not None and occlusion <= MAX_OCCLUSION
    safe = safe_zone_for(w, h)
    assert all(safe.contains(b.bbox) for b in loose.boxes if b.role in GRAPHIC_ROLES)


grids = st.lists(st.tuples(st.integers(1, 9), st.lists(st.integers(1, 9), min_size=1, max_size=5)), min_size=1,
                 max_size=5)


@PROPS
@given(grid=grids)
def test_split_ratio_round_trip_is_exact(grid: list[tuple[int, list[int]]]) -> None:
    split = grid_split_ratio(grid)  # type: ignore[arg-type]
    cells = split_ratio_cells(split)
    assert split_ratio_from_cells(cells) == split  # grammar → boxes → grammar, exactly
    exact = ratio_grid(split)
    if len(grid) > 1:
        total = sum(h for h, _ in grid)
        assert [h for h, _ in exact] == [Fraction(h, total) for h, _ in grid]
    for (_, widths), (_, ws) in zip(exact, grid, strict=True):
        assert widths == [Fraction(x, sum(ws)) for x in ws]
    # the shared float conversion agrees with the exact one, cell by cell
    floats = split_ratio_to_boxes(split)
    assert [(r, c) for r, c, _ in floats] == [(r, c) for r, c, _ in cells]
    for (_, _, fb), (_, _, xb) in zip(floats, cells, strict=True):
        assert all(abs(f - float(x)) < 1e-12 for f, x in zip(fb, xb, strict=True))
    assert len(parse_split_ratio(split)) == len(grid)
    m = regional_metrics(split)
    assert m["covers_canvas_exactly_once"] and m["cells"] == sum(len(ws) for _, ws in grid)


@PROPS
@given(grid=grids, scale=st.integers(2, 7))
def test_scaled_and_decimal_ratios_read_the_same(grid: list[tuple[int, list[int]]], scale: int) -> None:
    split = grid_split_ratio(grid)  # type: ignore[arg-type]
    scaled = ";".join(",".join(str(int(x) * scale) for x in row.split(",")) for row in split.split(";"))
    decimal = ";".join(",".join(f"{int(x) / 4:g}" for x in row.split(",")) for row in split.split(";"))
    assert ratio_grid(scaled) == ratio_grid(split) == ratio_grid(decimal)
    assert split_ratio_from_cells(split_ratio_cells(scaled)) == split


PRODUCTS = [("Masala Chai Tin", "A round tin of masala chai leaves."), ("Cold Brew", "A bottle of cold brew coffee."),
            ("Glow Serum", "A vitamin C serum."), ("Trail Shoe", "A running shoe for trails."),
            ("Matcha Powder", "Ceremonial grade matcha."), ("Desk Lamp", "A brass desk lamp.")]


@PROPS
@given(size=sizes, product=st.sampled_from(PRODUCTS), locale=st.sampled_from(["en-US", "hi-IN", "ja-JP", "es-MX"]),
       seed=st.integers(0, 50))
def test_object_boxes_sit_on_the_side_their_caption_names(size: tuple[int, int], product: tuple[str, str],
                                                          locale: str, seed: int) -> None:
    w, h = size
    spec = CampaignSpec.model_validate({
        "brand": {"name": "B"}, "product": {"name": product[0], "description": product[1]}, "taglines": ["t"],
        "locale": locale, "sizes": [f"{w}x{h}"], "seed": seed})
    plan = paid.ad_layout(spec, job_id="sides")
    sides = paid.object_sides(plan.prompts.background, [b.caption for b in plan.variants[0].layout.boxes
                                                         if b.role == "entity"])
    for b in plan.variants[0].layout.boxes:
        if b.role == "entity" and b.caption in sides:
            centre = (b.bbox[0] + b.bbox[2]) / 2
            assert (centre < 0.5) if sides[b.caption] == "left" else (centre > 0.5), (b.caption, b.bbox, size)


@PROPS
@given(size=sizes, product=st.sampled_from(PRODUCTS), locale=st.sampled_from(["en-US", "hi-IN", "ja-JP", "es-MX"]),
       seed=st.integers(0, 50), variants=st.integers(2, 6))
def test_variants_are_not_identical_in_scene(size: tuple[int, int], product: tuple[str, str], locale: str, seed: int,
                                             variants: int) -> None:
    """No two of a size's first three variants paint the same scene in the same composition, and every variant's
    object boxes still sit on the side its own caption names."""
    w, h = size
    name = f"{w}x{h}"
    spec = CampaignSpec.model_validate({
        "brand": {"name": "B"}, "product": {"name": product[0], "description": product[1]}, "taglines": ["t"],
        "locale": locale, "sizes": [name], "seed": seed, "variants": variants})
    plan = paid.ad_layout(spec, job_id="scenes")
    drawn = [plan.variant_for(name, k)[1] for k in range(variants)]  # type: ignore[index]
    looks = [(v.layout.global_caption, tuple(b.bbox for b in v.layout.boxes)) for v in drawn]
    assert len(set(looks[:3])) == min(3, variants)
    for v in drawn:
        sides = paid.object_sides(v.layout.global_caption, [b.caption for b in v.layout.boxes if b.role == "entity"])
        for b in v.layout.boxes:
            if b.role == "entity" and b.caption in sides:
                centre = (b.bbox[0] + b.bbox[2]) / 2
                assert (centre < 0.5) if sides[b.caption] == "left" else (centre > 0.5), (b.caption, b.bbox, size)


def test_object_sides_are_read_from_the_caption() -> None:
    caption = ("a sunlit linen-covered table with a glass teapot on the left and loose tea leaves in a small bowl on "
               "the right, soft diffused daylight")
    assert paid.object_sides(caption, ["glass teapot", "bowl of loose tea leaves"]) == {
        "glass teapot": "left", "bowl of loose tea leaves": "right"}
    assert paid.object_sides("a plain studio backdrop", ["pedestal"]) == {}
