"""PAID on an LLM/VLM: product + brand → foreground/background captions; one layout per target size.

* Prompts (PAID stage 1): the model — a VLM that also sees the product photo when one is configured —
  writes the foreground caption (the product as photographed), the background caption (the scene
  around it, without the product or any text) and a few non-graphic background objects.
* Layout (PAID stage 2): per size, the model places the product, headline, subs, CTA and logo as
  per-mille boxes, plus the background objects. The answer then goes through the same CreatiLayout
  repair and checks as the rules layout (:func:`atelier_planner.paid.assemble_variant`): inside the
  safe zone, nothing over the product unless ``allow_occlude``, at most 10 boxes. Colours, text styles
  and the underlay stay algorithmic (WCAG contrast), because the model never sees the colours rendered.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from atelier_contracts.placements import parse_size
from atelier_contracts.specs import CampaignSpec

from .. import paid
from ..colors import color_name, palette_mood
from ..designer import Draft
from ..layout import (
    MAX_BOXES,
    MAX_TAGLINE_BOXES,
    Z_ENTITY,
    Z_LOGO,
    Z_PRODUCT,
    Z_TEXT,
    Z_UNDERLAY,
    SafeZone,
    aspect_class,
    union,
)
from .runner import Problem, Task
from .schema import Limits, array, box, obj, per_mille, string, to_per_mille

MAX_OBJECTS = 4
T = TypeVar("T")


def prompts_schema(limits: Limits) -> dict[str, Any]:
    return obj({"category": string(limits.short), "foreground": string(limits.long), "background": string(limits.long),
                "background_objects": array(string(limits.short), 0, min(MAX_OBJECTS, limits.list_items * 2))})


def prompts_data(spec: CampaignSpec, *, has_photo: bool) -> dict[str, Any]:
    return {"product": {"name": spec.product.name, "description": spec.product.description},
            "brand": {"name": spec.brand.name, "colours": list(dict.fromkeys(color_name(c) for c in spec.brand.palette)),
                      "mood": palette_mood(list(spec.brand.palette))},
            "locale": spec.locale, "product_photo_attached": has_photo}


def _mentions(text: str, name: str) -> bool:
    words = [w for w in re.findall(r"\w+", name.lower()) if len(w) > 3]
    return bool(words) and all(re.search(rf"\b{re.escape(w)}\b", text.lower()) for w in words)


def prompts_task(spec: CampaignSpec, *, limits: Limits, images: list[str] | None = None) -> Task[dict[str, Any]]:
    def build(answer: dict[str, Any]) -> dict[str, Any]:
        return {"category": answer["category"], "foreground": answer["foreground"], "background": answer["background"],
                "background_objects": list(dict.fromkeys(answer["background_objects"]))}

    def check(v: dict[str, Any]) -> list[Problem]:
        problems = []
        if _mentions(v["background"], spec.product.name):
            problems.append(Problem("the background caption names the product: describe only the scene around it "
                                    "(the product photo is composited in)", "warning"))
        if re.search(r"\b(text|words|letters|logo|caption|slogan)\b", v["background"].lower()):
            problems.append(Problem("the background caption asks for text or a logo: graphics are drawn later, "
                                    "describe the scene only", "warning"))
        return problems

    return Task(prompt_id="paid.ad_prompts", data=prompts_data(spec, has_photo=bool(images)),
                schema=prompts_schema(limits), build=build, check=check, images=images)


# ---------------------------------------------------------------- layout


def layout_schema(data: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """The answer's schema follows the request: one box per element the ad has, objects from its list."""
    n = 1 + len(data["subs"])
    props: dict[str, Any] = {"product": box(), "headline": box()}
    if n > 1:
        props["subs"] = array(box(), n - 1, n - 1)
    if data["cta"]:
        props["cta"] = box()
    if data["logo"]:
        props["logo"] = box()
    objects = list(dict.fromkeys(data["background_objects"]))
    room = MAX_BOXES - (3 + (n - 1) + (1 if data["cta"] else 0) + (1 if data["logo"] else 0))  # + background, underlay
    if objects and room > 0:
        item = obj({"object": {"type": "string", "enum": objects}, "box": box()})
        props["objects"] = array(item, 0, min(room, len(objects), MAX_OBJECTS))
    return obj(props)


def layout_data(spec: CampaignSpec, *, size: str, background: str, objects: list[str], safe: SafeZone,
                allow_occlude: bool) -> dict[str, Any]:
    w, h = parse_size(size)
    return {
        "target": {"width": w, "height": h, "aspect": aspect_class(w, h)},
        "units": "boxes are [x1, y1, x2, y2] in thousandths of the width and height, top-left origin",
        "safe_zone": {"box": to_per_mille(safe.rect), "note": "product, logo, text and CTA must stay inside it"},
        "allow_occlude": allow_occlude,
        "headline": spec.taglines[0],
        "subs": spec.taglines[1:MAX_TAGLINE_BOXES],
        "cta": spec.cta,
        "logo": spec.brand.name if spec.brand.logo else None,
        "product": spec.product.name,
        "background": background,
        "background_objects": objects,
    }


def layout_drafts(answer: dict[str, Any], spec: CampaignSpec, *, underlay: bool, pad: float) -> list[Draft]:
    """The answer's boxes as drafts in the ad-layout convention (roles, captions, z)."""
    captions = paid.text_captions(spec)
    drafts = [Draft("product", per_mille(answer["product"]), "", Z_PRODUCT, spec.product.image)]
    texts = [Draft("tagline", per_mille(answer["headline"]), captions[0], Z_TEXT)]
    for b, caption in zip(answer.get("subs", []), captions[1:], strict=False):
        texts.append(Draft("tagline", per_mille(b), caption, Z_TEXT))
    if underlay:
        u = texts[0].bbox
        for t in texts[1:]:
            u = union(_ordered(u), _ordered(t.bbox))
        u = _ordered(u)
        drafts.append(Draft("underlay", (u[0] - pad, u[1] - pad, u[2] + pad, u[3] + pad), "underlay", Z_UNDERLAY))
    drafts += texts
    if spec.cta and "cta" in answer:
        drafts.append(Draft("cta", per_mille(answer["cta"]), f"cta: {spec.cta}", Z_TEXT))
    if spec.brand.logo and "logo" in answer:
        drafts.append(Draft("logo", per_mille(answer["logo"]), f"logo: {spec.brand.name}", Z_LOGO, spec.brand.logo))
    for item in answer.get("objects", []):
        drafts.append(Draft("entity", per_mille(item["box"]), item["object"], Z_ENTITY))
    return drafts


def _ordered(b: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    return (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))


def layout_task(spec: CampaignSpec, *, size: str, background: str, objects: list[str], safe: SafeZone,
                allow_occlude: bool, underlay: bool, limits: Limits,
                assemble: Callable[[list[Draft]], T]) -> Task[T]:
    """The layout of one size; ``assemble`` repairs and checks the drafts (its ValueErrors go back to the model)."""

    def build(answer: dict[str, Any]) -> T:
        return assemble(layout_drafts(answer, spec, underlay=underlay, pad=0.01))

    data = layout_data(spec, size=size, background=background, objects=objects, safe=safe, allow_occlude=allow_occlude)
    return Task(prompt_id="paid.ad_layout", data=data, schema=layout_schema(data, limits), build=build)
