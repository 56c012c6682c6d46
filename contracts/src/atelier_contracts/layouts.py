"""Layouts a client gives: the body of ``POST /v1/layouts:design`` and a campaign's own ``spec.layout``.

Boxes are ``[x1, y1, x2, y2]`` fractions of the canvas (0..1, top-left origin), as in every plan
(:class:`atelier_contracts.plans.Box`), so one layout fits every ad size; the planner's repair step then fits it
to each size's safe zone and says what it changed.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_LAYOUT_BOXES = 10
# the planner's reply to a design request (kind "layout" on the planning queue) holds its answer under this key
DESIGN_STEP = "creatilayout.design"
DesignText = Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)]
Caption = Annotated[str, StringConstraints(max_length=200, strip_whitespace=True)]
BBox = tuple[float, float, float, float]


def checked_bbox(b: BBox) -> BBox:
    x1, y1, x2, y2 = b
    if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
        raise ValueError(f"bbox {list(b)} must satisfy 0<=x1<x2<=1 and 0<=y1<y2<=1 (fractions of the canvas)")
    return b


# a box of a client's layout: the fractions checked as every plan's are
CheckedBBox = Annotated[BBox, AfterValidator(checked_bbox)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class DesignPoint(_Strict):
    """A centre point for one of the prompt's entities: matched by ``caption`` when given, else by order."""

    x: float = Field(ge=0.0, le=1.0)
    y: float = Field(ge=0.0, le=1.0)
    caption: Caption | None = Field(default=None, description="The entity this point places (a word of the prompt).")


DesignRole = Literal["entity", "character", "product", "logo", "tagline", "cta", "underlay"]


class DesignBox(_Strict):
    """A box the designer keeps (repaired only when it breaks a rule: outside the canvas, too small)."""

    bbox: CheckedBBox = Field(description="[x1, y1, x2, y2] in 0..1, top-left origin.")
    caption: Caption = ""
    role: DesignRole = "entity"


class LayoutDesignRequest(_Strict):
    """Body of ``POST /v1/layouts:design``: a prompt, optional centre points or fixed boxes, a target size."""

    prompt: DesignText = Field(description="What the picture shows, e.g. 'a red kite on the left and a dog on the "
                                           "right, watercolour'.")
    width: int = Field(default=1024, ge=64, le=4096, description="Target width in pixels.")
    height: int = Field(default=1024, ge=64, le=4096, description="Target height in pixels.")
    points: list[DesignPoint] = Field(default_factory=list, max_length=MAX_LAYOUT_BOXES,
                                      description="Centre points, one per entity (by caption or in order).")
    boxes: list[DesignBox] = Field(default_factory=list, max_length=MAX_LAYOUT_BOXES,
                                   description="Boxes to keep; the designer places the prompt's other entities "
                                               "around them.")
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


CampaignBoxRole = Literal["product", "tagline", "cta", "logo", "underlay", "entity"]


class CampaignBox(_Strict):
    bbox: CheckedBBox = Field(description="[x1, y1, x2, y2] in 0..1, top-left origin.")
    role: CampaignBoxRole
    caption: Caption = Field(default="", description="What an `entity` box shows (it is painted in the background).")


class CampaignLayout(_Strict):
    """A campaign's own layout (designed with ``POST /v1/layouts:design`` or edited by hand), used for every size.

    One ``product`` box; ``tagline`` boxes take the taglines in order (reading order: top to bottom); a ``cta``
    box needs ``spec.cta`` and a ``logo`` box ``spec.brand.logo``."""

    boxes: list[CampaignBox] = Field(min_length=1, max_length=MAX_LAYOUT_BOXES - 1)

    @field_validator("boxes")
    @classmethod
    def _one_product(cls, boxes: list[CampaignBox]) -> list[CampaignBox]:
        products = sum(b.role == "product" for b in boxes)
        if products != 1:
            raise ValueError(f"a campaign layout has exactly one product box; this one has {products}")
        return boxes


SceneBoxRole = Literal["character", "entity"]


class SceneBox(_Strict):
    """A box of a story page's own layout: a ``character`` box places the page's next cast member (in the order
    the planner casts them), an ``entity`` box a captioned object of the scene."""

    bbox: CheckedBBox = Field(description="[x1, y1, x2, y2] in 0..1, top-left origin.")
    role: SceneBoxRole = "character"
    caption: Caption = Field(default="", description="What an `entity` box shows.")


class SceneLayout(_Strict):
    """A story page's own layout (designed with ``POST /v1/layouts:design`` or drawn by hand): its character boxes
    take the page's cast in order (a cast member beyond them keeps the planner's box); entity boxes add captioned
    objects. The backdrop is always the whole page."""

    page: int = Field(ge=1, le=12, description="The page (1-based) this layout is for.")
    boxes: list[SceneBox] = Field(min_length=1, max_length=MAX_LAYOUT_BOXES - 1)

    @field_validator("boxes")
    @classmethod
    def _captioned_entities(cls, boxes: list[SceneBox]) -> list[SceneBox]:
        for i, box in enumerate(boxes):
            if box.role == "entity" and not box.caption:
                raise ValueError(f"boxes[{i}]: an entity box needs a caption (what it shows)")
        return boxes
