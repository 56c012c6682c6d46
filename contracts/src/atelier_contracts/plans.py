"""Versioned plan contracts (DESIGN §2). GPU workers only ever receive LayoutPlan or RegionalPlan."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PLAN_VERSION = "1"
Role = Literal["entity", "background", "product", "logo", "tagline", "underlay", "cta", "character"]


class PlannerInfo(BaseModel):
    backend: Literal["llm", "rules"]
    model: str
    prompt_version: str


class _Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan_id: str
    version: str = PLAN_VERSION
    seed: int = Field(ge=0, le=2**32 - 1)
    width: int = Field(ge=16, le=4096)
    height: int = Field(ge=16, le=4096)
    negative_prompt: str = ""
    planner: PlannerInfo


class Box(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bbox: tuple[float, float, float, float] = Field(description="[x1,y1,x2,y2] in 0..1, top-left origin")
    caption: str = ""
    role: Role
    z: int = 0
    ref_artifact: str | None = None

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, b: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = b
        if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
            raise ValueError(f"bbox {list(b)} must satisfy 0<=x1<x2<=1 and 0<=y1<y2<=1")
        return b

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        x1, y1, x2, y2 = self.bbox
        return round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)


class LayoutPlan(_Plan):
    global_caption: str
    boxes: list[Box] = Field(default_factory=list, max_length=10)
    grounding_fraction: float = Field(default=0.3, ge=0.0, le=1.0)


class Region(BaseModel):
    row: int = Field(ge=0)
    col: int = Field(ge=0)
    prompt: str


_RATIO_RE = re.compile(r"^\s*[\d.]+(\s*,\s*[\d.]+)*(\s*;\s*[\d.]+(\s*,\s*[\d.]+)*)*\s*$")


def parse_split_ratio(split_ratio: str) -> list[tuple[float, list[float]]]:
    """RPG grammar → [(row_height, [cell_widths])], weights normalised to sum 1.

    ``;`` separates rows; ``,`` separates numbers in a row. With ``;`` present the first number of
    each row is its height and the rest are cell widths; without ``;`` the string is one row of cells.
    """
    if not _RATIO_RE.match(split_ratio):
        raise ValueError(f"split_ratio {split_ratio!r} is not RPG grammar like '1,1,1;1,1,1'")
    rows_txt = split_ratio.split(";")
    rows: list[tuple[float, list[float]]] = []
    if len(rows_txt) == 1:
        cells = [float(c) for c in rows_txt[0].split(",")]
        rows.append((1.0, cells))
    else:
        for r in rows_txt:
            nums = [float(c) for c in r.split(",")]
            rows.append((nums[0], nums[1:] or [1.0]))
    total_h = sum(h for h, _ in rows)
    if total_h <= 0 or any(sum(c) <= 0 for _, c in rows):
        raise ValueError(f"split_ratio {split_ratio!r} has a zero row or cell weight")
    return [(h / total_h, [c / sum(cells) for c in cells]) for h, cells in rows]


def split_ratio_to_boxes(split_ratio: str) -> list[tuple[int, int, tuple[float, float, float, float]]]:
    """Exact conversion of a split ratio to (row, col, bbox) cells, left→right, top→bottom."""
    out = []
    y = 0.0
    for r, (h, cells) in enumerate(parse_split_ratio(split_ratio)):
        x = 0.0
        for c, w in enumerate(cells):
            out.append((r, c, (x, y, min(1.0, x + w), min(1.0, y + h))))
            x += w
        y += h
    return out


class RegionalPlan(_Plan):
    base_prompt: str
    base_ratio: float = Field(default=0.3, ge=0.0, le=1.0)
    split_ratio: str
    regions: list[Region]

    @model_validator(mode="after")
    def _regions_match_grid(self) -> RegionalPlan:
        cells = split_ratio_to_boxes(self.split_ratio)
        if len(cells) != len(self.regions):
            raise ValueError(f"split_ratio has {len(cells)} cells but {len(self.regions)} regions were given")
        return self


class Tagline(BaseModel):
    text: str
    level: Literal["headline", "sub", "cta"]


class Target(BaseModel):
    w: int
    h: int
    name: str


class TextStyle(BaseModel):
    box_role: Role
    font: str | None = None
    color: str
    underlay_color: str | None = None
    align: Literal["left", "center", "right"] = "center"


_SIDE_WORDS = re.compile(r"\b(left|right)\b")


def swap_sides(text: str) -> str:
    """"a kettle on the left and cups on the right" → "... on the right and ... on the left"."""
    return _SIDE_WORDS.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


class AdVariant(BaseModel):
    target: Target
    layout: LayoutPlan
    text_styles: list[TextStyle] = Field(default_factory=list)
    mirror_odd: bool = Field(default=False, description="Odd variants (v1, v3, ...) use the mirrored composition: "
                                                        "every box flipped left to right, the caption's sides swapped.")
    scene_captions: list[str] = Field(default_factory=list, description=(
        "The background scenes this size's variants paint in turn: variant k paints scene_captions[k % n] (index 0 "
        "is the layout's own caption; the others are the same setting and objects in another light). Empty: "
        "every variant paints the layout's caption."))

    def in_scene(self, k: int) -> AdVariant:
        """The variant whose background paints scene ``k % n`` of ``scene_captions`` (itself for scene 0): the
        layout's global caption and its full-canvas background box take that caption; the boxes stay."""
        if len(self.scene_captions) < 2 or k % len(self.scene_captions) == 0:
            return self
        caption = self.scene_captions[k % len(self.scene_captions)]
        old = self.layout.global_caption
        boxes = [b.model_copy(update={"caption": caption}) if b.role == "background" and b.caption == old else b
                 for b in self.layout.boxes]
        layout = self.layout.model_copy(update={"boxes": boxes, "global_caption": caption,
                                                "plan_id": f"{self.layout.plan_id}-s{k % len(self.scene_captions)}"})
        return self.model_copy(update={"layout": layout})

    def mirrored(self) -> AdVariant:
        """The same ad composed the other way round: boxes flipped horizontally, "left"/"right" swapped in the
        captions (the background objects stay where the caption says); text keeps its alignment."""
        boxes = [b.model_copy(update={"bbox": (round(1 - b.bbox[2], 6), b.bbox[1], round(1 - b.bbox[0], 6), b.bbox[3]),
                                      "caption": swap_sides(b.caption)}) for b in self.layout.boxes]
        layout = self.layout.model_copy(update={"boxes": boxes, "global_caption": swap_sides(self.layout.global_caption),
                                                "plan_id": f"{self.layout.plan_id}-mirrored"})
        return self.model_copy(update={"layout": layout, "mirror_odd": False})


class AdPrompts(BaseModel):
    foreground: str
    background: str


class AdPlan(_Plan):
    product: dict[str, str | None]
    taglines: list[Tagline]
    prompts: AdPrompts
    variants: list[AdVariant]  # one per target size

    def variant_for(self, size: str, k: int = 0) -> tuple[int, AdVariant] | None:
        """(index of the size among ``variants``, the AdVariant variant ``k`` of that size draws): variant ``k``
        paints the size's scene ``k % n`` (:meth:`AdVariant.in_scene`), and odd variants of a size whose
        ``mirror_odd`` is set are composed the other way round; None for a size the plan does not have. The
        variant returned is the plan's own object only for the caption and composition as planned."""
        for i, v in enumerate(self.variants):
            if v.target.name == size:
                drawn = v.in_scene(k)
                return i, (drawn.mirrored() if v.mirror_odd and k % 2 == 1 else drawn)
        return None


class Character(BaseModel):
    id: str
    name: str
    description: str
    sheet_prompt: str
    seed: int


class CastMember(BaseModel):
    character_id: str
    pose: str
    expression: str
    box: Box


class Scene(BaseModel):
    index: int
    narration: str
    backdrop: str
    cast: list[CastMember]
    scene_prompt: str


class StoryPlan(_Plan):
    title: str
    story: str
    culture_notes: list[str]
    language: str
    characters: list[Character]
    scenes: list[Scene]
