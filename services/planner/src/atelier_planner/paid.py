"""PAID offline planner: product + brand → foreground/background captions, and one layout per size.

Prompt stage (PAID stage 1): the product's category is found from keywords in its name (weight 3)
and description (weight 1) and picks a scene template (``data/paid_scenes.json``); the brand's palette
adds colour and mood words. Layout stage (PAID stage 2): the constraint solver of
:func:`atelier_planner.layout.solve_ad_layout` (arrangement by aspect ratio inside the channel's safe zone);
background objects from the scene get entity boxes in the free space (CreatiLayout designer).

Box conventions of an ad LayoutPlan (the renderer relies on them):

* ``background`` — full canvas, caption = background caption, z 0;
* ``entity`` — one per background object, z 1;
* ``product`` — caption = foreground caption, z 2;
* ``underlay`` — only when no palette colour reaches WCAG 4.5:1 on the scene's assumed background, z 3;
* ``tagline`` — the headline box has caption ``"headline: <text>"``; the second and third taglines (if
  any) get ``tagline`` boxes with caption ``"sub: <text>"``; z 4;
* ``cta`` — caption ``"cta: <text>"`` (only when the spec has a CTA), z 4;
* ``logo`` — caption ``"logo: <brand>"``, ``ref_artifact`` = the logo's upload id (only when the brand has a logo), z 4.

``AdVariant.text_styles`` holds one TextStyle per text box, in the order the boxes appear
(headline, subs, cta). Taglines beyond the third are kept in ``AdPlan.taglines`` (level ``sub``) but get
no box. Text, logo and underlay boxes never overlap the product box unless ``allow_occlude`` (then they
cover at most a quarter of it); every graphic box lies inside the channel's safe zone
(:func:`atelier_planner.layout.safe_zone_for`), background objects inside the canvas.

Both the rules layout and an LLM's layout go through :func:`assemble_variant` (CreatiLayout repair,
then the checks), so the renderer sees one convention whichever backend drew it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

from atelier_contracts.catalogue import S_AD_LAYOUT, S_AD_PROMPTS
from atelier_contracts.colors import WCAG_AA, best_pair, black_or_white, contrast_ratio, first_passing
from atelier_contracts.placements import parse_size
from atelier_contracts.plans import (
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
from atelier_contracts.specs import Brand, CampaignSpec
from atelier_contracts.stage_io import AdPromptsOutput, as_output
from PIL import Image

from . import rpg
from .colors import color_name, palette_mood
from .common import RULES_PLANNER, clean_text, load_data, plan_id_for, seed_for, stable_index, truncate_words
from .designer import Draft, place_in_free_space, repair_drafts, size_prior
from .layout import (
    GRAPHIC_ROLES,
    MAX_BOXES,
    MAX_OCCLUSION,
    MAX_TAGLINE_BOXES,
    TEXT_ROLES,
    Z_ENTITY,
    Z_LOGO,
    Z_PRODUCT,
    Z_TEXT,
    Z_UNDERLAY,
    AdSlots,
    SafeZone,
    area,
    full_canvas_box,
    inside_canvas,
    intersection,
    safe_zone_for,
    solve_ad_layout,
)
from .metrics import layout_metrics


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


# a language's usual region, for a locale without one ("hi" alone is Hindi as written in India)
LANGUAGE_REGION = {"hi": "IN", "ta": "IN", "te": "IN", "bn": "IN", "mr": "IN", "gu": "IN", "kn": "IN", "ml": "IN",
                   "pa": "IN", "ja": "JP", "ko": "KR", "vi": "VN", "sw": "KE", "yo": "NG"}


def locale_region(locale: str) -> str | None:
    """The region of a BCP 47 locale (``hi-IN`` → ``IN``; ``hi`` → ``IN`` by its language; ``en`` → None)."""
    parts = locale.split("-")
    region = next((p.upper() for p in parts[1:] if len(p) == 2 and p.isalpha()), None)
    return region or LANGUAGE_REGION.get(parts[0].lower())


def scene_fit(scene: dict[str, Any], product_text: str, region: str | None) -> int | None:
    """How well a scene fits the product and the locale: 0 for a generic scene, +2 when a product keyword it names
    occurs, +1 when the locale's region is one of its regions; None (never picked) for a culturally specific
    scene that fits neither."""
    fits = scene.get("fits")
    if not fits:
        return 0
    keyword = any(_score(k, product_text) for k in fits.get("keywords", []))
    regional = region is not None and region in fits.get("regions", [])
    if not (keyword or regional):
        return None
    return 2 * keyword + regional


def pick_scene(spec: CampaignSpec, seed: int) -> Scene:
    """The category's scene that fits the product and the locale best (the seed picks among equals)."""
    cat = detect_category(spec.product.name, spec.product.description)
    text = f"{spec.product.name} {spec.product.description}"
    region = locale_region(spec.locale)
    scored = [(f, sc) for sc in cat["scenes"] if (f := scene_fit(sc, text, region)) is not None]
    best = max(f for f, _ in scored)
    scenes = [sc for f, sc in scored if f == best]
    s = scenes[stable_index(len(scenes), "scene", seed)]
    return Scene(category=cat["name"], caption=s["caption"], objects=tuple(s["objects"]), tone=cat["tone"])


_SIDE = re.compile(r"\bon the (left|right)\b")


def object_sides(caption: str, objects: list[str]) -> dict[str, str]:
    """Which side the caption puts each object on ("a tray with a whisk on the left and a bowl on the right"):
    the clause before each "on the left/right" is matched to the object sharing the most words with it."""
    sides: dict[str, str] = {}
    start = 0
    for m in _SIDE.finditer(caption.lower()):
        clause = set(re.findall(r"[a-z]{3,}", caption.lower()[start:m.start()]))
        start = m.end()
        best, hits = None, 0
        for obj in objects:
            n = len(set(re.findall(r"[a-z]{3,}", obj.lower())) & clause)
            if n > hits and obj not in sides:
                best, hits = obj, n
        if best is not None:
            sides[best] = m.group(1)
    return sides


def category_aspect(spec: CampaignSpec) -> float | None:
    """The usual width/height of the product's category (``paid_scenes.json``), when no photo was measured."""
    aspect = detect_category(spec.product.name, spec.product.description).get("aspect")
    return float(aspect) if aspect else None


def image_aspect(data: bytes | None) -> float | None:
    """Width/height of an image (its header only), None when there is none or it cannot be read."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width / im.height if im.height else None
    except (OSError, ValueError):
        return None


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
    regional: RegionalPlan = rpg.recaption(bg, plan_id=plan_id_for(job_id, S_AD_PROMPTS), seed=seed, width=w, height=h,
                                           negative_prompt=neg, planner=planner)
    return {"prompts": {"foreground": fg, "background": bg}, "negative_prompt": neg,
            "regional": regional.model_dump(mode="json"), "background_objects": list(scene.objects),
            "category": scene.category}


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


def allow_occlude_of(spec: CampaignSpec, default: bool = False) -> bool:
    """PAID's ``allow_occlude``: the product spec's flag when the spec carries one, else ``default`` (settings)."""
    value = getattr(spec.product, "allow_occlude", None)
    return default if value is None else bool(value)


def text_captions(spec: CampaignSpec) -> list[str]:
    """Captions of the tagline boxes, in reading order: ``headline: ...``, then ``sub: ...``."""
    return [f"{'headline' if i == 0 else 'sub'}: {t}" for i, t in enumerate(spec.taglines[:MAX_TAGLINE_BOXES])]


def rules_drafts(spec: CampaignSpec, *, width: int, height: int, objects: list[str], colours: Colours,
                 safe: SafeZone, allow_occlude: bool = False, sides: dict[str, str] | None = None,
                 product_aspect: float | None = None) -> tuple[list[Draft], AdSlots]:
    """The offline layout of one size: solved slots plus background objects placed in the free space — on the
    side the background caption names for them (``sides``), or not at all: a box never contradicts its caption."""
    slots = solve_ad_layout(width, height, taglines=len(spec.taglines), cta=bool(spec.cta), logo=bool(spec.brand.logo),
                            underlay=colours.underlay is not None, allow_occlude=allow_occlude, safe=safe,
                            product_aspect=product_aspect)
    drafts = [Draft("product", slots.product, "", Z_PRODUCT, spec.product.image)]
    if slots.underlay is not None:
        drafts.append(Draft("underlay", slots.underlay, "underlay", Z_UNDERLAY))
    drafts += [Draft("tagline", b, c, Z_TEXT) for b, c in zip(slots.texts, text_captions(spec), strict=False)]
    if spec.cta and slots.cta is not None:
        drafts.append(Draft("cta", slots.cta, f"cta: {spec.cta}", Z_TEXT))
    if spec.brand.logo and slots.logo is not None:
        drafts.append(Draft("logo", slots.logo, f"logo: {spec.brand.name}", Z_LOGO, spec.brand.logo))
    occupied = [d.bbox for d in drafts]
    room = MAX_BOXES - 1 - len(drafts)
    for obj in objects[:max(0, room)]:
        w, h = size_prior(obj)
        # priors are for a square canvas: keep the object's shape on wide or tall targets
        scale = min(1.0, height / width) if width > height else min(1.0, width / height)
        # at least the repair's 16 px minimum on the shorter side, so the repair never grows an object into text
        side = (sides or {}).get(obj)
        region = (0.0, 0.0, 0.5, 1.0) if side == "left" else (0.5, 0.0, 1.0, 1.0) if side == "right" else (0.0, 0.0, 1.0, 1.0)
        spot = place_in_free_space((w * scale if width > height else w, h * scale if height > width else h), occupied,
                                   min_size=max(0.04, 17 / min(width, height)), region=region)
        if spot is not None:
            drafts.append(Draft("entity", spot, obj, Z_ENTITY))
            occupied.append(spot)
    return drafts, slots


_SPEC_Z = {"entity": Z_ENTITY, "product": Z_PRODUCT, "underlay": Z_UNDERLAY, "tagline": Z_TEXT, "cta": Z_TEXT,
           "logo": Z_LOGO}


def spec_layout_drafts(spec: CampaignSpec) -> list[Draft]:
    """``spec.layout``'s boxes as drafts (the repair then fits them to each size's safe zone). The tagline boxes in
    reading order (top to bottom, then left to right) take the taglines in order, headline first; the cta, logo and
    product boxes take what the rules' boxes of those roles take."""
    assert spec.layout is not None
    texts = sorted((b for b in spec.layout.boxes if b.role == "tagline"), key=lambda b: (b.bbox[1], b.bbox[0]))
    drafts = [Draft("tagline", tuple(b.bbox), c, Z_TEXT) for b, c in zip(texts, text_captions(spec), strict=False)]  # type: ignore[arg-type]
    for b in spec.layout.boxes:
        if b.role == "tagline":
            continue
        caption = {"cta": f"cta: {spec.cta}", "logo": f"logo: {spec.brand.name}", "underlay": "underlay",
                   "product": ""}.get(b.role, b.caption)
        ref = spec.product.image if b.role == "product" else spec.brand.logo if b.role == "logo" else None
        drafts.append(Draft(b.role, tuple(b.bbox), caption, _SPEC_Z[b.role], ref))  # type: ignore[arg-type]
    return drafts


def spec_layout_align(spec: CampaignSpec) -> str:
    """Text alignment for ``spec.layout``: the side the first tagline box sits on (centred when it spans the middle)."""
    assert spec.layout is not None
    texts = [b.bbox for b in spec.layout.boxes if b.role == "tagline"]
    if not texts:
        return "center"
    x1, _, x2, _ = min(texts, key=lambda b: (b[1], b[0]))
    mid = (x1 + x2) / 2
    return "left" if mid < 0.4 else "right" if mid > 0.6 else "center"


_ORDER = {"background": 0, "entity": 1, "product": 2, "underlay": 3, "tagline": 4, "cta": 5, "logo": 6}


def assemble_variant(spec: CampaignSpec, *, size: str, drafts: list[Draft], colours: Colours, align: str,
                     job_id: str, seed: int, prompts: AdPrompts, negative: str, planner: PlannerInfo,
                     safe: SafeZone, allow_occlude: bool = False) -> tuple[AdVariant, dict[str, Any]]:
    """Repair drafted boxes into the ad-layout convention, check them, and add text styles and metrics."""
    w, h = parse_size(size)
    raw = layout_metrics([(d.role, d.bbox, d.z) for d in drafts], safe=safe)
    fixed = repair_drafts(drafts, width=w, height=h, safe=safe, allow_occlude=allow_occlude)
    body = sorted(fixed.boxes, key=lambda b: _ORDER.get(b.role, 9))  # stable: reading order inside a role
    for b in body:
        if b.role == "product":
            b.caption, b.ref_artifact = prompts.foreground, spec.product.image
    boxes = [full_canvas_box(prompts.background), *body]
    check_ad_layout(boxes, safe=safe, allow_occlude=allow_occlude)
    styles = []
    for b in boxes:
        if b.role == "tagline":
            styles.append(TextStyle(box_role="tagline", font=spec.brand.font, color=colours.text,
                                    underlay_color=colours.underlay, align=align))  # type: ignore[arg-type]
        elif b.role == "cta":
            styles.append(TextStyle(box_role="cta", font=spec.brand.font, color=colours.cta_text,
                                    underlay_color=colours.cta_fill, align="center"))
    layout = LayoutPlan(plan_id=plan_id_for(job_id, S_AD_LAYOUT, size), seed=seed, width=w, height=h,
                        negative_prompt=negative, planner=planner, global_caption=prompts.background, boxes=boxes)
    scenes = scene_variations(prompts.background, seed)
    info = {"safe_zone": safe.as_dict(), "allow_occlude": allow_occlude, "metrics": layout_metrics(boxes, safe=safe),
            "raw_metrics": raw, "repairs": fixed.notes, "scenes": scenes}
    return AdVariant(target=Target(w=w, h=h, name=size), layout=layout, text_styles=styles, scene_captions=scenes), info


_LIGHT = re.compile(r"\b(?:light|lighting|daylight|sunlight|sun|glow|spotlight|lamplight)\b", re.IGNORECASE)
SCENES_PER_SIZE = 3


def scene_variations(caption: str, seed: int, n: int = SCENES_PER_SIZE) -> list[str]:
    """The background scene as ``n`` scenes variants paint in turn: the caption as written, then the same setting
    and objects in other lights (its light clause, the last comma clause naming a light, replaced by one of
    ``paid_scenes.json``'s ``variant_lights`` chosen by the seed; a caption without one gets the light added after
    its first clause)."""
    lights = [str(x) for x in load_data("paid_scenes.json")["variant_lights"]]
    clauses = caption.split(", ")
    at = next((i for i in range(len(clauses) - 1, -1, -1)
               if _LIGHT.search(clauses[i]) and not clauses[i].lower().startswith("colour")), None)
    own = clauses[at].lower() if at is not None else ""
    options = [x for x in lights if x.lower() != own]
    start = stable_index(len(options), "light", seed)
    out = [caption]
    for i in range(max(0, n - 1)):
        light = options[(start + i) % len(options)]
        relit = [*clauses[:at], light, *clauses[at + 1:]] if at is not None else [clauses[0], light, *clauses[1:]]
        out.append(", ".join(relit))
    return out


def mirror_ok(width: int, height: int, safe: SafeZone) -> bool:
    """Whether odd variants of a size take the mirrored composition (variants differ in composition, not only in
    seed): where the safe zone is the same on both sides and the layout is not a centred portrait one."""
    return abs(safe.left - safe.right) < 1e-9 and width / height >= 0.85


def layout_problems(boxes: list[Box], *, safe: SafeZone | None = None, allow_occlude: bool = False) -> list[str]:
    """What breaks the ad-layout invariants (empty when none): <= 10 boxes, one product, boxes inside the
    canvas, graphics inside the safe zone, nothing covering the product (or at most a quarter of it)."""
    problems = []
    if len(boxes) > MAX_BOXES:
        problems.append(f"layout has {len(boxes)} boxes; at most {MAX_BOXES}")
    products = [b for b in boxes if b.role == "product"]
    if len(products) != 1:
        problems.append(f"layout has {len(products)} product boxes; exactly one is needed")
    for b in boxes:
        if not inside_canvas(b.bbox):
            problems.append(f"box {b.caption!r} leaves the canvas")
        if safe is not None and b.role in GRAPHIC_ROLES and not safe.contains(b.bbox):
            problems.append(f"{b.role} box {b.caption!r} leaves the {safe.name} safe zone {list(safe.rect)}")
    if products:
        p = products[0].bbox
        covering = [b for b in boxes if b.role in (*TEXT_ROLES, "logo", "underlay")]
        if not allow_occlude:
            for b in covering:
                if intersection(b.bbox, p) is not None:
                    problems.append(f"{b.role} box {b.caption!r} overlaps the product box")
        else:
            occluded = layout_metrics(boxes)["product_occlusion"] or 0.0
            if occluded > MAX_OCCLUSION:
                problems.append(f"graphics cover {occluded:.0%} of the product; at most {MAX_OCCLUSION:.0%}")
    return problems


def check_ad_layout(boxes: list[Box], *, safe: SafeZone | None = None, allow_occlude: bool = False) -> None:
    """Raise ValueError naming every broken invariant of :func:`layout_problems`."""
    problems = layout_problems(boxes, safe=safe, allow_occlude=allow_occlude)
    if problems:
        raise ValueError("; ".join(problems))


def layout_variant(spec: CampaignSpec, *, size: str, job_id: str, seed: int, prompts: AdPrompts, scene: Scene,
                   negative: str, planner: PlannerInfo = RULES_PLANNER, objects: list[str] | None = None,
                   allow_occlude: bool = False, product_aspect: float | None = None) -> tuple[AdVariant, dict[str, Any]]:
    """One AdVariant (LayoutPlan + text styles) for one target size, and its layout info (metrics, repairs)."""
    w, h = parse_size(size)
    safe = safe_zone_for(w, h)
    colours = choose_colours(list(spec.brand.palette), scene.tone)
    if spec.layout is not None:
        drafts, align, arrangement = spec_layout_drafts(spec), spec_layout_align(spec), "spec.layout"
    else:
        placed = list(scene.objects if objects is None else objects)
        drafts, slots = rules_drafts(spec, width=w, height=h, objects=placed, colours=colours, safe=safe,
                                     allow_occlude=allow_occlude, sides=object_sides(prompts.background, placed),
                                     product_aspect=product_aspect)
        align, arrangement = slots.align, slots.arrangement
    variant, info = assemble_variant(spec, size=size, drafts=drafts, colours=colours, align=align, job_id=job_id,
                                     seed=seed, prompts=prompts, negative=negative, planner=planner, safe=safe,
                                     allow_occlude=allow_occlude)
    info["arrangement"] = arrangement
    info["product_aspect"] = product_aspect
    # the user's composition is kept as drawn: no mirrored variants of it
    variant.mirror_odd = info["mirror_odd"] = spec.layout is None and mirror_ok(w, h, safe)
    shown = min(sum(d.role == "tagline" for d in drafts), len(spec.taglines))
    info["taglines_shown"] = shown
    if shown < len(spec.taglines):
        info["taglines_left_out"] = list(spec.taglines[shown:])
    return variant, info


def captions_of(output: AdPromptsOutput | dict[str, Any]) -> tuple[AdPrompts, str, list[str] | None]:
    """What the layout reads of ``plan.ad_prompts``: the captions, the negative prompt and the background objects."""
    out = as_output(AdPromptsOutput, output)
    if out is None or out.prompts is None:
        raise ValueError("the plan.ad_prompts output has no prompts")
    negative = out.negative_prompt if out.negative_prompt is not None else negative_prompt()
    return out.prompts, negative, out.background_objects


def ad_layout_with_info(spec: CampaignSpec, *, job_id: str, prompts_output: AdPromptsOutput | dict[str, Any] | None = None,
                        planner: PlannerInfo = RULES_PLANNER,
                        allow_occlude: bool | None = None) -> tuple[AdPlan, dict[str, dict[str, Any]]]:
    """:func:`ad_layout` and, per size, its layout info (safe zone, arrangement, metrics, repairs)."""
    seed = seed_for(job_id, spec.seed)
    scene = pick_scene(spec, seed)
    prompts_out = as_output(AdPromptsOutput, prompts_output or ad_prompts(spec, job_id=job_id, planner=planner))
    prompts, negative, objects = captions_of(prompts_out)
    aspect = (prompts_out.product_aspect if prompts_out is not None else None) or category_aspect(spec)
    occlude = allow_occlude_of(spec) if allow_occlude is None else allow_occlude
    variants, infos = [], {}
    for s in spec.sizes:
        v, info = layout_variant(spec, size=s, job_id=job_id, seed=seed, prompts=prompts, scene=scene, negative=negative,
                                 planner=planner, objects=[str(o) for o in objects] if isinstance(objects, list) else None,
                                 allow_occlude=occlude, product_aspect=aspect)
        variants.append(v)
        infos[s] = info
    return ad_plan(spec, job_id=job_id, seed=seed, scene=scene, prompts=prompts, negative=negative, planner=planner,
                   variants=variants), infos


def ad_plan(spec: CampaignSpec, *, job_id: str, seed: int, scene: Scene, prompts: AdPrompts, negative: str,
            planner: PlannerInfo, variants: list[AdVariant]) -> AdPlan:
    w, h = parse_size(spec.sizes[0])
    return AdPlan(plan_id=plan_id_for(job_id, S_AD_LAYOUT), seed=seed, width=w, height=h, negative_prompt=negative,
                  planner=planner,
                  product={"name": spec.product.name, "description": spec.product.description, "image": spec.product.image,
                           "category": scene.category, "background_tone": scene.tone},
                  taglines=_taglines(spec), prompts=prompts, variants=variants)


def ad_layout(spec: CampaignSpec, *, job_id: str, prompts_output: AdPromptsOutput | dict[str, Any] | None = None,
              planner: PlannerInfo = RULES_PLANNER, allow_occlude: bool | None = None) -> AdPlan:
    """Output plan of ``plan.ad_layout``: an AdPlan with one variant per target size."""
    return ad_layout_with_info(spec, job_id=job_id, prompts_output=prompts_output, planner=planner,
                               allow_occlude=allow_occlude)[0]


def text_contrast_ok(variant: AdVariant, background: str) -> bool:
    """Every text style reaches 4.5:1 on its underlay, or on ``background`` when it has none."""
    return all(contrast_ratio(s.color, s.underlay_color or background) >= WCAG_AA for s in variant.text_styles)


def product_area(variant: AdVariant) -> float:
    """Area of the product box (fraction of the canvas)."""
    return area(next(b for b in variant.layout.boxes if b.role == "product").bbox)
