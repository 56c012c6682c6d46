"""PAID offline planner: product + brand → foreground/background captions, and one layout per size.

Prompt stage (PAID stage 1): the product's category is found from keywords in its name (weight 3)
and description (weight 1) and picks a scene template (``data/paid_scenes.json``); the brand's palette
adds colour and mood words. Layout stage (PAID stage 2): per-aspect templates from
:mod:`atelier_planner.layout`; background objects from the scene get entity boxes (CreatiLayout).

Box conventions of an ad LayoutPlan (the renderer relies on them):

* ``background`` — full canvas, caption = background caption, z 0;
* ``entity`` — one per background object, z 1;
* ``product`` — caption = foreground caption, z 2;
* ``underlay`` — only when no palette colour reaches WCAG 4.5:1 on the scene's assumed background, z 3;
* ``tagline`` — the headline box has caption ``"headline: <text>"``; the second tagline (if any) gets
  a ``tagline`` box with caption ``"sub: <text>"``; z 4;
* ``cta`` — caption ``"cta: <text>"`` (only when the spec has a CTA), z 4;
* ``logo`` — caption ``"logo: <brand>"``, ``ref_artifact`` = the logo's upload id (only when the brand has a logo), z 4.

``AdVariant.text_styles`` holds one TextStyle per text box, in the order the boxes appear
(headline, sub, cta). Extra taglines beyond the second are kept in ``AdPlan.taglines`` (level
``sub``) but get no box. Text boxes never overlap the product box.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from atelier_shared.plans import (
    AdPlan,
    AdPrompts,
    AdVariant,
    Box,
    LayoutPlan,
    PlannerInfo,
    RegionalPlan,
    Tagline,
    Target,
    TextStyle,
)
from atelier_shared.specs import Brand, CampaignSpec, parse_size

from . import rpg
from .colors import WCAG_AA, best_pair, black_or_white, color_name, contrast_ratio, first_passing, palette_mood
from .common import RULES_PLANNER, clean_text, load_data, plan_id_for, seed_for, stable_index, truncate_words
from .layout import (
    MAX_BOXES,
    TEXT_ROLES,
    Z_ENTITY,
    Z_LOGO,
    Z_PRODUCT,
    Z_TEXT,
    Z_UNDERLAY,
    AdTemplate,
    full_canvas_box,
    overlaps,
    rounded,
    template_for,
    union,
)

STAGE_PROMPTS = "plan.ad_prompts"
STAGE_LAYOUT = "plan.ad_layout"


@dataclass(frozen=True)
class Scene:
    category: str
    caption: str
    objects: tuple[str, ...]
    tone: str  # assumed background colour of the scene (for text colour choice before pixels exist)


def _score(keyword: str, text: str) -> int:
    return len(re.findall(rf"\b{re.escape(keyword.lower())}\b", text.lower()))


def detect_category(name: str, description: str) -> dict[str, Any]:
    """The scene-table entry whose keywords best match the product (name counts 3x); default if none."""
    table = load_data("paid_scenes.json")
    best: tuple[int, int, dict[str, Any]] | None = None
    for i, cat in enumerate(table["categories"]):
        score = sum(3 * _score(k, name) + _score(k, description) for k in cat["keywords"])
        if score > 0 and (best is None or score > best[0]):
            best = (score, -i, cat)
    return best[2] if best else table["default"]


def pick_scene(spec: CampaignSpec, seed: int) -> Scene:
    cat = detect_category(spec.product.name, spec.product.description)
    scenes = cat["scenes"]
    s = scenes[stable_index(len(scenes), "scene", seed)]
    return Scene(category=cat["name"], caption=s["caption"], objects=tuple(s["objects"]), tone=cat["tone"])


def style_words(brand: Brand) -> str:
    names: list[str] = []
    for c in brand.palette:
        n = color_name(c)
        if n not in names:
            names.append(n)
    return f"colour accents in {'/'.join(names[:3])}, {' '.join(palette_mood(brand.palette))} mood"


def foreground_caption(spec: CampaignSpec) -> str:
    desc = truncate_words(clean_text(spec.product.description).rstrip("."), 20)
    suffix = load_data("paid_scenes.json")["foreground_suffix"]
    return f"{spec.product.name}, {desc}, {suffix}"


def background_caption(spec: CampaignSpec, scene: Scene) -> str:
    suffix = load_data("paid_scenes.json")["background_suffix"]
    return f"{scene.caption}, {style_words(spec.brand)}, {suffix}"


def negative_prompt() -> str:
    return str(load_data("paid_scenes.json")["negative_prompt"])


def ad_prompts(spec: CampaignSpec, *, job_id: str, planner: PlannerInfo = RULES_PLANNER) -> dict[str, Any]:
    """Output of ``plan.ad_prompts``: prompts, negative prompt and the RPG plan of the background caption."""
    seed = seed_for(job_id, spec.seed)
    scene = pick_scene(spec, seed)
    fg, bg = foreground_caption(spec), background_caption(spec, scene)
    neg = negative_prompt()
    w, h = parse_size(spec.sizes[0])
    regional: RegionalPlan = rpg.recaption(bg, plan_id=plan_id_for(job_id, STAGE_PROMPTS), seed=seed, width=w, height=h,
                                           negative_prompt=neg, planner=planner)
    return {"prompts": {"foreground": fg, "background": bg}, "negative_prompt": neg,
            "regional": regional.model_dump(mode="json")}


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class Colours:
    text: str
    underlay: str | None
    cta_fill: str
    cta_text: str


def choose_colours(palette: list[str], background: str) -> Colours:
    """Text colour from the palette with contrast >= 4.5 on ``background``; else an underlay pair."""
    text = first_passing(palette, background)
    underlay: str | None = None
    if text is None:
        pair = best_pair(palette)
        if pair is not None:
            underlay, text = pair
        else:
            underlay = palette[0]
            text = black_or_white(underlay)
    # CTA button: the palette colour that stands out most from the background, text readable on it
    fill = max(palette, key=lambda c: (contrast_ratio(c, background), -palette.index(c)))
    cta_text = first_passing([c for c in palette if c != fill], fill) or black_or_white(fill)
    return Colours(text=text, underlay=underlay, cta_fill=fill, cta_text=cta_text)


def _taglines(spec: CampaignSpec) -> list[Tagline]:
    out = [Tagline(text=t, level="headline" if i == 0 else "sub") for i, t in enumerate(spec.taglines)]
    if spec.cta:
        out.append(Tagline(text=spec.cta, level="cta"))
    return out


def layout_variant(spec: CampaignSpec, *, size: str, job_id: str, seed: int, prompts: AdPrompts, scene: Scene,
                   negative: str, planner: PlannerInfo = RULES_PLANNER) -> AdVariant:
    """One AdVariant (LayoutPlan + text styles) for one target size."""
    w, h = parse_size(size)
    t: AdTemplate = template_for(w, h)
    colours = choose_colours(list(spec.brand.palette), scene.tone)
    has_sub = len(spec.taglines) > 1
    headline_box = t.headline if has_sub else union(t.headline, t.sub)

    boxes: list[Box] = [full_canvas_box(prompts.background)]
    text_boxes: list[Box] = [Box(bbox=rounded(headline_box), caption=f"headline: {spec.taglines[0]}", role="tagline", z=Z_TEXT)]
    styles = [TextStyle(box_role="tagline", font=spec.brand.font, color=colours.text, underlay_color=colours.underlay,
                        align=t.align)]
    if has_sub:
        text_boxes.append(Box(bbox=rounded(t.sub), caption=f"sub: {spec.taglines[1]}", role="tagline", z=Z_TEXT))
        styles.append(TextStyle(box_role="tagline", font=spec.brand.font, color=colours.text,
                                underlay_color=colours.underlay, align=t.align))
    if spec.cta:
        text_boxes.append(Box(bbox=rounded(t.cta), caption=f"cta: {spec.cta}", role="cta", z=Z_TEXT))
        styles.append(TextStyle(box_role="cta", font=spec.brand.font, color=colours.cta_text,
                                underlay_color=colours.cta_fill, align="center"))
    graphic: list[Box] = [Box(bbox=rounded(t.product), caption=prompts.foreground, role="product", z=Z_PRODUCT,
                              ref_artifact=spec.product.image)]
    if colours.underlay is not None:
        graphic.append(Box(bbox=rounded(t.underlay), caption="underlay", role="underlay", z=Z_UNDERLAY))
    graphic.extend(text_boxes)
    if spec.brand.logo:
        graphic.append(Box(bbox=rounded(t.logo), caption=f"logo: {spec.brand.name}", role="logo", z=Z_LOGO,
                           ref_artifact=spec.brand.logo))
    room = MAX_BOXES - len(boxes) - len(graphic)
    for obj, slot in list(zip(scene.objects, t.objects, strict=False))[:max(0, room)]:
        boxes.append(Box(bbox=rounded(slot), caption=obj, role="entity", z=Z_ENTITY))
    boxes.extend(graphic)

    check_ad_layout(boxes)
    layout = LayoutPlan(plan_id=plan_id_for(job_id, STAGE_LAYOUT, size), seed=seed, width=w, height=h,
                        negative_prompt=negative, planner=planner, global_caption=prompts.background, boxes=boxes)
    return AdVariant(target=Target(w=w, h=h, name=size), layout=layout, text_styles=styles)


def check_ad_layout(boxes: list[Box]) -> None:
    """Invariants every ad layout keeps: no text box on the product, all inside the canvas, <= 10 boxes."""
    if len(boxes) > MAX_BOXES:
        raise ValueError(f"layout has {len(boxes)} boxes; at most {MAX_BOXES}")
    products = [b for b in boxes if b.role == "product"]
    for b in boxes:
        x1, y1, x2, y2 = b.bbox
        if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
            raise ValueError(f"box {b.caption!r} leaves the canvas")
        if b.role in TEXT_ROLES and any(overlaps(b.bbox, p.bbox) for p in products):
            raise ValueError(f"text box {b.caption!r} overlaps the product box")


def ad_layout(spec: CampaignSpec, *, job_id: str, prompts_output: dict[str, Any] | None = None,
              planner: PlannerInfo = RULES_PLANNER) -> AdPlan:
    """Output plan of ``plan.ad_layout``: an AdPlan with one variant per target size."""
    seed = seed_for(job_id, spec.seed)
    scene = pick_scene(spec, seed)
    up = prompts_output or ad_prompts(spec, job_id=job_id, planner=planner)
    prompts = AdPrompts.model_validate(up["prompts"])
    negative = str(up.get("negative_prompt", negative_prompt()))
    variants = [layout_variant(spec, size=s, job_id=job_id, seed=seed, prompts=prompts, scene=scene, negative=negative,
                               planner=planner) for s in spec.sizes]
    w, h = parse_size(spec.sizes[0])
    return AdPlan(plan_id=plan_id_for(job_id, STAGE_LAYOUT), seed=seed, width=w, height=h, negative_prompt=negative,
                  planner=planner,
                  product={"name": spec.product.name, "description": spec.product.description, "image": spec.product.image,
                           "category": scene.category, "background_tone": scene.tone},
                  taglines=_taglines(spec), prompts=prompts, variants=variants)


def text_contrast_ok(variant: AdVariant, background: str) -> bool:
    """Every text style reaches 4.5:1 on its underlay, or on ``background`` when it has none."""
    return all(contrast_ratio(s.color, s.underlay_color or background) >= WCAG_AA for s in variant.text_styles)
