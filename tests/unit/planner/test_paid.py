from __future__ import annotations

import itertools
from typing import Any

import pytest
from atelier_contracts.colors import contrast_ratio
from atelier_contracts.plans import AdPlan, parse_split_ratio, swap_sides
from atelier_contracts.specs import CampaignSpec
from atelier_planner import paid
from atelier_planner.layout import aspect_class, overlaps

SIZES = ["1080x1080", "1200x628", "1080x1920"]


def campaign(**over: Any) -> CampaignSpec:
    data: dict[str, Any] = {
        "brand": {"name": "Brew Co", "palette": ["#6B4226", "#F5E6D3", "#D9A441"], "logo": "logo-1"},
        "product": {"name": "Cold Brew Coffee", "description": "Smooth cold brew coffee concentrate, slow steeped.",
                    "image": "img-1"},
        "taglines": ["Wake up to smooth", "Slow steeped for 20 hours"],
        "cta": "Shop now",
        "sizes": SIZES,
        "variants": 2,
    }
    data.update(over)
    return CampaignSpec.model_validate(data)


def test_category_from_product_keywords() -> None:
    assert paid.detect_category("Cold Brew Coffee", "beans")["name"] == "coffee"
    assert paid.detect_category("Glow Serum", "a vitamin C serum for skin")["name"] == "skincare"
    assert paid.detect_category("Aero Runner", "lightweight running sneakers")["name"] == "footwear"
    assert paid.detect_category("Thing", "an object")["name"] == "studio"  # default scene


def test_prompts_use_product_brand_and_scene() -> None:
    spec = campaign()
    out = paid.ad_prompts(spec, job_id="job-1")
    assert {"prompts", "negative_prompt", "regional", "background_objects"} <= set(out)
    assert out["prompts"]["foreground"].startswith("Cold Brew Coffee, ")
    bg = out["prompts"]["background"]
    assert "brown" in bg and "cream" in bg  # brand palette → style words
    assert any(obj in bg for obj in ("ceramic cup", "copper pour-over kettle"))  # coffee scene
    assert "text" in out["negative_prompt"] and "watermark" in out["negative_prompt"]
    regional = out["regional"]
    assert regional["base_prompt"] == bg
    assert regional["planner"] == {"backend": "rules", "model": "rules-v1", "prompt_version": "rules-1"}
    cells = sum(len(c) for _, c in parse_split_ratio(regional["split_ratio"]))
    assert cells == len(regional["regions"]) >= 2


@pytest.mark.parametrize("variants", [1, 3, 8])
@pytest.mark.parametrize("sizes", [["1080x1080"], ["1200x628", "1080x1920"], SIZES + ["1080x1350", "728x90", "300x600"]])
def test_ad_plan_validates_for_many_specs(sizes: list[str], variants: int) -> None:
    spec = campaign(sizes=sizes, variants=variants)
    plan = paid.ad_layout(spec, job_id=f"job-{variants}")
    again = AdPlan.model_validate(plan.model_dump(mode="json"))
    assert [v.target.name for v in again.variants] == sizes
    for v in again.variants:
        w, h = (int(x) for x in v.target.name.split("x"))
        assert (v.target.w, v.target.h) == (w, h) == (v.layout.width, v.layout.height)
        assert len(v.layout.boxes) <= 10
        assert v.layout.planner.backend == "rules"


def _text_and_product(plan: AdPlan) -> list[tuple[str, list[Any], Any]]:
    out = []
    for v in plan.variants:
        product = next(b for b in v.layout.boxes if b.role == "product")
        texts = [b for b in v.layout.boxes if b.role in ("tagline", "cta")]
        out.append((v.target.name, texts, product))
    return out


@pytest.mark.parametrize("taglines,cta,logo", list(itertools.product(
    [["One"], ["One", "Two"], ["One", "Two", "Three", "Four"]], [None, "Buy"], [None, "logo-1"])))
def test_text_never_overlaps_product_and_stays_inside(taglines: list[str], cta: str | None, logo: str | None) -> None:
    brand = {"name": "B", "palette": ["#1F2937", "#F9FAFB"], "logo": logo}
    spec = campaign(taglines=taglines, cta=cta, brand=brand, sizes=SIZES + ["728x90", "160x600", "1000x1000"])
    plan = paid.ad_layout(spec, job_id="j")
    for _name, texts, product in _text_and_product(plan):
        assert texts, "every layout has at least the headline box"
        for t in texts:
            assert not overlaps(t.bbox, product.bbox), (t.caption, t.bbox, product.bbox)
        for b in plan.variants[0].layout.boxes:
            x1, y1, x2, y2 = b.bbox
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
    v = plan.variants[0]
    roles = [b.role for b in v.layout.boxes]
    assert roles.count("tagline") == min(3, len(taglines))
    assert ("cta" in roles) == bool(cta) and ("logo" in roles) == bool(logo)
    assert len(v.text_styles) == roles.count("tagline") + roles.count("cta")


def test_headline_and_sub_captions_and_style_order() -> None:
    plan = paid.ad_layout(campaign(), job_id="j")
    v = plan.variants[0]
    texts = [b for b in v.layout.boxes if b.role in ("tagline", "cta")]
    assert [b.caption for b in texts] == ["headline: Wake up to smooth", "sub: Slow steeped for 20 hours", "cta: Shop now"]
    assert [s.box_role for s in v.text_styles] == ["tagline", "tagline", "cta"]
    assert [t.level for t in plan.taglines] == ["headline", "sub", "cta"]


def test_per_aspect_templates() -> None:
    plan = paid.ad_layout(campaign(), job_id="j")
    by = {v.target.name: {b.caption.split(":")[0] if b.role in ("tagline", "cta") else b.role: b.bbox
                          for b in v.layout.boxes} for v in plan.variants}
    sq, ls, pt = by["1080x1080"], by["1200x628"], by["1080x1920"]
    assert sq["product"][2] <= sq["headline"][0]  # square: product left, tagline right
    assert ls["headline"][2] <= ls["product"][0]  # landscape: text left, product right
    assert pt["headline"][3] <= pt["product"][1] and pt["product"][3] <= pt["cta"][1]  # portrait: top / middle / bottom
    assert aspect_class(1080, 1350) == "portrait" and aspect_class(1200, 628) == "landscape"


@pytest.mark.parametrize("palette", [["#1F2937", "#F9FAFB"], ["#FFD400"], ["#777777", "#888888"], ["#6B4226", "#F5E6D3"],
                                     ["#000000"], ["#FFFFFF", "#FEFEFE"]])
def test_text_colours_reach_wcag_contrast(palette: list[str]) -> None:
    spec = campaign(brand={"name": "B", "palette": palette})
    plan = paid.ad_layout(spec, job_id="j")
    tone = plan.product["background_tone"]
    assert tone is not None
    for v in plan.variants:
        assert paid.text_contrast_ok(v, tone)
        has_underlay_box = any(b.role == "underlay" for b in v.layout.boxes)
        tagline_styles = [s for s in v.text_styles if s.box_role == "tagline"]
        assert has_underlay_box == (tagline_styles[0].underlay_color is not None)
        for s in tagline_styles:
            if s.underlay_color is None:
                assert s.color in palette and contrast_ratio(s.color, tone) >= 4.5


def test_underlay_added_only_when_palette_fails() -> None:
    ok = paid.choose_colours(["#111111", "#FFFFFF"], "#ECEBE7")
    assert ok.underlay is None and ok.text == "#111111"
    bad = paid.choose_colours(["#888888", "#F5E6D3", "#6B4226"], "#9C9A96")
    assert bad.underlay is not None and contrast_ratio(bad.text, bad.underlay) >= 4.5


def test_plans_are_deterministic_and_seeded() -> None:
    spec = campaign()
    a = paid.ad_layout(spec, job_id="job-x").model_dump(mode="json")
    b = paid.ad_layout(spec, job_id="job-x").model_dump(mode="json")
    c = paid.ad_layout(spec, job_id="job-y").model_dump(mode="json")
    assert a == b
    assert a["plan_id"] != c["plan_id"] and len(a["plan_id"]) == 16
    assert a["seed"] != c["seed"]
    seeded = paid.ad_layout(campaign(seed=1234), job_id="job-x")
    assert seeded.seed == 1234 and all(v.layout.seed == 1234 for v in seeded.variants)


@pytest.mark.parametrize(("locale", "name", "description", "expected", "never"), [
    ("hi-IN", "Masala Chai Tin", "A round tin of masala chai leaves.", ("Indian kitchen", "chai stall"), "whisk"),
    ("en-US", "Masala Chai Tin", "A round tin of masala chai leaves.", ("Indian kitchen", "chai stall"), "whisk"),
    ("en-US", "Green Tea", "Loose green tea leaves.", ("linen-covered table",), "whisk"),
    ("ja-JP", "Green Tea", "Loose green tea leaves.", ("bamboo whisk",), "chai"),
    ("hi-IN", "Filter Coffee", "South Indian filter coffee decoction.", ("South Indian kitchen",), "Mexican"),
])
def test_the_scene_fits_the_product_and_the_locale(locale: str, name: str, description: str,
                                                   expected: tuple[str, ...], never: str) -> None:
    """A hi-IN chai tin gets an Indian setting; a culturally specific scene that fits neither the product nor the
    locale is never picked (the issue's Japanese matcha scene for a chai tin)."""
    for seed in range(8):
        spec = CampaignSpec.model_validate({"brand": {"name": "B"}, "product": {"name": name, "description": description},
                                            "taglines": ["t"], "locale": locale, "seed": seed})
        caption = paid.pick_scene(spec, seed).caption
        assert any(e in caption for e in expected) and never not in caption, (seed, caption)


def test_locale_regions() -> None:
    assert paid.locale_region("hi-IN") == "IN" and paid.locale_region("hi") == "IN"
    assert paid.locale_region("es-MX") == "MX" and paid.locale_region("en") is None
    assert paid.locale_region("zh-Hant-TW") == "TW"


@pytest.mark.parametrize("size", ["1080x1080", "1200x628", "1080x1920", "300x250", "728x90", "160x600"])
@pytest.mark.parametrize("aspect", [0.4, 1.0, 1.8])
def test_the_product_box_takes_the_products_shape(size: str, aspect: float) -> None:
    """A tall bottle gets a tall box, a shoe a wide one (pixels; the box stands on its slot's bottom)."""
    spec = CampaignSpec.model_validate({"brand": {"name": "B"}, "product": {"name": "P", "description": "d"},
                                        "taglines": ["t"], "sizes": [size]})
    w, h = (int(v) for v in size.split("x"))
    prompts = {**paid.ad_prompts(spec, job_id="asp"), "product_aspect": aspect}
    plan, infos = paid.ad_layout_with_info(spec, job_id="asp", prompts_output=prompts)
    (product,) = [b for b in plan.variants[0].layout.boxes if b.role == "product"]
    x1, y1, x2, y2 = product.bbox
    got = (x2 - x1) * w / ((y2 - y1) * h)
    # exact unless the 17 px minimum side or the 3-decimal rounding of the box moves it
    assert got == pytest.approx(aspect, rel=0.12) or min((x2 - x1) * w, (y2 - y1) * h) <= 18, (got, product.bbox)
    assert infos[size]["product_aspect"] == aspect and infos[size]["repairs"] == []


def test_without_a_photo_the_category_gives_the_shape() -> None:
    bottle = CampaignSpec.model_validate({"brand": {"name": "B"}, "product": {"name": "Sparkling Water",
                                          "description": "A bottle of sparkling water."}, "taglines": ["t"]})
    assert paid.category_aspect(bottle) == 0.4
    plan, infos = paid.ad_layout_with_info(bottle, job_id="cat")
    assert infos["1080x1080"]["product_aspect"] == 0.4
    assert paid.image_aspect(None) is None and paid.image_aspect(b"not an image") is None


@pytest.mark.parametrize("size", ["1080x1080", "1200x628", "1600x900", "300x250", "728x90", "320x50", "970x250",
                                  "1080x1920", "160x600", "1080x1350"])
def test_odd_variants_are_composed_the_other_way_round(size: str) -> None:
    """Variants differ in composition, not only in seed: v1 flips the layout left to right (the product changes
    side) and swaps the caption's sides, where the safe zone is symmetric and the layout is not a centred portrait."""
    spec = CampaignSpec.model_validate({"brand": {"name": "B"}, "product": {"name": "Masala Chai Tin",
                                        "description": "A tin of chai."}, "taglines": ["Brewed slow", "Since 1952"],
                                        "cta": "Shop", "locale": "hi-IN", "sizes": [size], "variants": 2})
    plan, infos = paid.ad_layout_with_info(spec, job_id="mirror")
    (_, v0), (_, v1) = plan.variant_for(size, 0), plan.variant_for(size, 1)
    w, h = (int(x) for x in size.split("x"))
    portrait = w / h < 0.85
    assert infos[size]["mirror_odd"] is (not portrait)
    if portrait:  # the same composition, the next scene
        assert v1.layout.boxes[1:] == v0.layout.boxes[1:] and v1.layout.global_caption != v0.layout.global_caption
        return
    p0 = next(b.bbox for b in v0.layout.boxes if b.role == "product")
    p1 = next(b.bbox for b in v1.layout.boxes if b.role == "product")
    assert p1 == pytest.approx((1 - p0[2], p0[1], 1 - p0[0], p0[3]))
    scene1 = plan.variants[0].scene_captions[1]  # v1 paints the size's second scene, composed the other way round
    assert ("left" in scene1) and v1.layout.global_caption == swap_sides(scene1)
    safe = paid.safe_zone_for(w, h)
    assert paid.layout_problems(v1.layout.boxes, safe=safe) == []
    # the background objects stay on the side their (swapped) caption names
    sides = paid.object_sides(v1.layout.global_caption, [b.caption for b in v1.layout.boxes if b.role == "entity"])
    for b in v1.layout.boxes:
        if b.role == "entity" and b.caption in sides:
            assert ((b.bbox[0] + b.bbox[2]) / 2 < 0.5) == (sides[b.caption] == "left")


@pytest.mark.parametrize("size", ["1080x1080", "1080x1920", "300x250", "728x90"])
@pytest.mark.parametrize("product,locale", [("Masala Chai Tin", "hi-IN"), ("Cold Brew Coffee", "en-US"),
                                            ("Trail Running Shoe", "es-MX"), ("Wooden Puzzle", "en")])
def test_variants_differ_in_scene_not_only_in_seed(size: str, product: str, locale: str) -> None:
    """Variants of one size paint the same setting and objects in other lights, in turn: v0, v1 and v2 have three
    different background captions (each naming every object the layout places), the light clause is the one that
    changes, and v3 comes back to v0's scene."""
    spec = CampaignSpec.model_validate({"brand": {"name": "B", "palette": ["#FFFFFF", "#0A2342"]},
                                        "product": {"name": product, "description": "The product."},
                                        "taglines": ["One line"], "locale": locale, "sizes": [size], "variants": 4})
    plan = paid.ad_layout(spec, job_id="scenes")
    drawn = [plan.variant_for(size, k)[1] for k in range(4)]  # type: ignore[index]
    planned = plan.variants[0]
    scenes = [paid_scene(planned, k) for k in range(4)]
    assert len(set(scenes[:3])) == 3 and scenes[3] == scenes[0]
    assert scenes[0] == planned.layout.global_caption
    objects = [b.caption for b in planned.layout.boxes if b.role == "entity"]
    for k, v in enumerate(drawn):
        caption = v.layout.global_caption
        assert all(o.split()[-1] in caption for o in objects)
        assert v.layout.boxes[0].role == "background" and v.layout.boxes[0].caption == caption
        changed = set(caption.split(", ")) ^ set(plan.variants[0].layout.global_caption.split(", "))
        if k % 3 and not (planned.mirror_odd and k % 2):
            assert len(changed) == 2 and all(paid._LIGHT.search(c) for c in changed), changed
    assert "colour accents" in scenes[1]  # the brand's colours stay in every scene


def paid_scene(v: Any, k: int) -> str:
    return str(v.in_scene(k).layout.global_caption)


def test_a_caption_without_a_light_clause_gets_one() -> None:
    out = paid.scene_variations("a marble counter, colour accents in light grey, studio", seed=3)
    assert out[0] == "a marble counter, colour accents in light grey, studio"
    assert all(c.startswith("a marble counter, ") and c.endswith(", colour accents in light grey, studio")
               for c in out[1:]) and len(set(out)) == 3
