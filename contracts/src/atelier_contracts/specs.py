"""Job specs: what a client submits. Validation errors name the field that is wrong."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from . import placements
from .layouts import CampaignLayout, SceneLayout

HEX_COLOR = Annotated[str, StringConstraints(pattern=r"^#[0-9A-Fa-f]{6}$")]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Brand(_Spec):
    name: ShortText
    palette: list[HEX_COLOR] = Field(default_factory=lambda: ["#1F2937", "#F9FAFB"], min_length=1, max_length=8)
    font: Identifier | None = None
    logo: Identifier | None = Field(default=None, description="Artifact id of an uploaded logo image.")
    # filled from a brand kit (/v1/brands) when the job names ``brand_id``
    font_artifact: Identifier | None = Field(default=None, description="Artifact id of the brand kit's TTF/OTF font.")
    tone: ShortText | None = Field(default=None, description="Brand voice, e.g. 'warm, confident'.")


class Product(_Spec):
    name: ShortText
    description: LongText
    image: Identifier | None = Field(default=None, description="Artifact id returned by POST /v1/uploads.")


# ControlNet kinds a campaign may steer its background with (the GPU registry's kinds)
ControlKind = Literal["canny", "depth", "pose"]
CONTROL_KINDS: tuple[str, ...] = get_args(ControlKind)
MAX_CONTROLS = 3


class BackgroundControl(_Spec):
    """One ControlNet condition on the generated background (``gpu.background``'s ``control`` recipe).

    The weights of all controls are normalised to sum 1 (Ctrl-Adapter averaging), so each ControlNet
    acts with ``scale * weight / sum(weights)``; ``start``/``end`` bound the fraction of the denoising
    steps during which it acts.
    """

    kind: ControlKind = Field(
        description="canny: edges are taken from the image (any picture or sketch); depth / pose: the image "
                    "is the map itself (a depth map, an OpenPose skeleton). The job's model needs a ControlNet "
                    "of this kind in its models.yaml entry.")
    image: Identifier = Field(description="Artifact id returned by POST /v1/uploads; resized to each background.")
    weight: float = Field(default=1.0, gt=0, le=100, strict=True,
                          description="Relative share in the average of the controls (normalised to sum 1).")
    scale: float = Field(default=0.8, gt=0, le=2, strict=True,
                         description="Conditioning scale: how strongly this control steers the image.")
    start: float = Field(default=0.0, ge=0, lt=1, strict=True,
                         description="Fraction of the denoising at which the control starts acting.")
    end: float = Field(default=1.0, gt=0, le=1, strict=True,
                       description="Fraction of the denoising at which it stops; must be above `start`.")

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, end: float, info: ValidationInfo) -> float:
        start = info.data.get("start")
        if start is not None and end <= start:
            raise ValueError(f"end ({end}) must be greater than start ({start})")
        return end


AssetFormatName = Literal["png", "jpeg", "webp"]


class AssetFormat(_Spec):
    """How one placement's asset is delivered: its file format and the byte cap it must fit (C2PA manifest included)."""

    format: AssetFormatName = "png"
    max_bytes: int | None = Field(
        default=None, ge=10_000, le=50_000_000,
        description="Bytes the delivered file must fit in. Default: the placement's usual cap (150,000 for IAB units) "
                    "for jpeg/webp, none for png. A lossy asset is encoded at the highest quality that fits; one that "
                    "cannot fit fails as an item (the others are delivered).")


def asset_format(spec: dict[str, Any], size: str) -> tuple[str, int | None]:
    """(format, byte cap) of a size's delivered asset, from a stored campaign spec's ``formats``: the size's entry,
    else ``default``, else PNG; a lossy format without a cap takes the placement's usual one (150 KB for IAB)."""
    formats = spec.get("formats") or {}
    raw = formats.get(size) or formats.get("default")
    chosen = AssetFormat.model_validate(raw) if raw else AssetFormat()
    cap = chosen.max_bytes
    if cap is None and chosen.format != "png":
        cap = placements.placement(size).max_bytes
    return chosen.format, cap


class CampaignSpec(_Spec):
    """A campaign: one product, its taglines, a brand and the ad sizes to produce."""

    JOB_KIND: ClassVar[str] = "campaign"

    brand: Brand
    product: Product
    taglines: list[ShortText] = Field(min_length=1, max_length=5)
    cta: ShortText | None = None
    locale: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = "en-US"
    sizes: list[str] = Field(
        default_factory=lambda: ["1080x1080"], min_length=1, max_length=12,
        description="Ad sizes: `WIDTHxHEIGHT` or a placement name (IAB: iab-medium-rectangle 300x250, "
                    "iab-leaderboard 728x90, iab-mobile-leaderboard 320x50, iab-wide-skyscraper 160x600, "
                    "iab-half-page 300x600, iab-billboard 970x250, iab-large-mobile-banner 320x100; social: "
                    "social-square 1080x1080, social-portrait 1080x1350, social-story 1080x1920, social-link "
                    "1200x628, social-landscape 1600x900). Names are stored as their `WxH`. Refused: sides outside "
                    "32..4096, under 12,000 pixels, or wider than 12:1 (no room for legible text).")
    variants: int = Field(default=1, ge=1, le=8)
    model: Identifier | None = None
    seed: Seed | None = None
    # a tenant's brand kit (its fields fill ``brand`` at submission); the ad backdrop
    brand_id: Identifier | None = Field(default=None, description="Brand kit id (/v1/brands); fills `brand` at submission.")
    backdrop: Literal["generated", "studio"] = Field(
        default="generated", description="generated: the GPU background; studio: a brand-palette studio sweep drawn "
                                         "by the renderer (no GPU needed).")
    # ControlNets steering the generated background (after `backdrop`: its validator reads it)
    control: list[BackgroundControl] = Field(
        default_factory=list, max_length=MAX_CONTROLS,
        description="Up to 3 ControlNet conditions (canny, depth, pose from uploaded images) on the generated "
                    "background, averaged with weights normalised to sum 1. With a product image, the background "
                    "follows the controls and the product is pasted back unchanged in its box.")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: list[str]) -> list[str]:
        resolved = []
        for i, s in enumerate(sizes):
            try:
                resolved.append(placements.resolve(s))
            except ValueError as exc:
                raise ValueError(f"sizes[{i}]: {exc}") from None
        repeated = sorted({s for s in resolved if resolved.count(s) > 1})
        if repeated:
            raise ValueError(f"sizes must not repeat (a name and its WxH are the same size): {', '.join(repeated)}")
        return resolved

    # delivery formats per size (after `sizes`: its validator reads them)
    formats: dict[str, AssetFormat] = Field(
        default_factory=dict, max_length=13,
        description="Per size (`WxH` or a placement name, as in `sizes`) or `default`: the delivered file's format "
                    "(png, jpeg, webp) and byte cap. Sizes not named take `default`, else PNG.")

    @field_validator("formats")
    @classmethod
    def _formats(cls, formats: dict[str, AssetFormat], info: ValidationInfo) -> dict[str, AssetFormat]:
        sizes = info.data.get("sizes") or []
        out: dict[str, AssetFormat] = {}
        for key, value in formats.items():
            if key == "default":
                out[key] = value
                continue
            try:
                size = placements.resolve(key)
            except ValueError as exc:
                raise ValueError(f"formats[{key!r}]: {exc}") from None
            if size not in sizes:
                raise ValueError(f"formats[{key!r}]: {size} is not one of sizes {sizes}")
            out[size] = value
        return out

    def format_for(self, size: str) -> tuple[str, int | None]:
        """(format, byte cap) of a size's delivered asset (see :func:`asset_format`)."""
        return asset_format({"formats": {k: v.model_dump() for k, v in self.formats.items()}}, size)

    @field_validator("control")
    @classmethod
    def _control_needs_a_generated_backdrop(cls, control: list[BackgroundControl],
                                            info: ValidationInfo) -> list[BackgroundControl]:
        if control and info.data.get("backdrop") == "studio":
            raise ValueError("control steers the generated background; backdrop 'studio' has none (use 'generated')")
        return control

    layout: CampaignLayout | None = Field(
        default=None,
        description="Your own layout for every size (from POST /v1/layouts:design, or edited by hand): boxes in 0..1 "
                    "with roles product (exactly one), tagline (the taglines in reading order), cta, logo, underlay, "
                    "entity (a captioned object painted into the background). Each size's safe zone may move a box; "
                    "the plan's layout info lists every repair. Unset: the planner designs the layout.")

    @field_validator("layout")
    @classmethod
    def _layout_fits_the_spec(cls, layout: CampaignLayout | None, info: ValidationInfo) -> CampaignLayout | None:
        if layout is None:
            return None
        brand = info.data.get("brand")
        for i, box in enumerate(layout.boxes):
            if box.role == "cta" and not info.data.get("cta"):
                raise ValueError(f"boxes[{i}]: a cta box needs spec.cta (the button's text)")
            if box.role == "logo" and (brand is None or not brand.logo):
                raise ValueError(f"boxes[{i}]: a logo box needs spec.brand.logo (an uploaded logo)")
            if box.role == "entity" and not box.caption:
                raise ValueError(f"boxes[{i}]: an entity box needs a caption (what it shows)")
        taglines = sum(b.role == "tagline" for b in layout.boxes)
        if taglines > len(info.data.get("taglines") or []):
            raise ValueError(f"{taglines} tagline boxes for {len(info.data.get('taglines') or [])} taglines")
        return layout


class StorySpec(_Spec):
    """A story: a premise set in a culture, told in a language, over 1..12 illustrated pages."""

    JOB_KIND: ClassVar[str] = "story"

    premise: LongText
    culture: ShortText
    language: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = "en"
    pages: int = Field(default=4, ge=1, le=12)
    audience: ShortText | None = None
    style: ShortText | None = None
    model: Identifier | None = None
    seed: Seed | None = None
    layouts: list[SceneLayout] = Field(
        default_factory=list, max_length=12,
        description="Your own layouts for some pages (from POST /v1/layouts:design, or drawn by hand): per page, "
                    "character boxes that take that page's cast in order and captioned entity boxes. Pages without "
                    "one are laid out by the planner.")

    @field_validator("layouts")
    @classmethod
    def _pages_exist_once(cls, layouts: list[SceneLayout], info: ValidationInfo) -> list[SceneLayout]:
        pages = info.data.get("pages") or 0
        seen: set[int] = set()
        for i, layout in enumerate(layouts):
            if layout.page > pages:
                raise ValueError(f"[{i}].page {layout.page}: the story has {pages} page(s)")
            if layout.page in seen:
                raise ValueError(f"[{i}].page {layout.page}: a page has one layout")
            seen.add(layout.page)
        return layouts


JobKind = Literal["campaign", "story"]
SPEC_MODELS: dict[str, type[_Spec]] = {"campaign": CampaignSpec, "story": StorySpec}


MAX_METADATA_KEYS = 50
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.:-]+$")]
MetadataValue = Annotated[str, StringConstraints(max_length=500)]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


class JobRequest(BaseModel):
    """Body of ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    spec: dict[str, object]
    external_id: ExternalId | None = Field(default=None, description=(
        "Your own reference for this job (a CRM record, a campaign id): echoed in the job, in every `job.*` "
        "webhook and filterable with `GET /v1/jobs?external_id=`. Not unique: several jobs may share one."))
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, description=(
        f"Up to {MAX_METADATA_KEYS} string labels (keys of letters, digits and `_.:-`, at most 40 characters; values "
        "at most 500), stored with the job and echoed in its view and in every `job.*` webhook."))

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} keys; got {len(value)}")
        return value

    def parsed_spec(self) -> CampaignSpec | StorySpec:
        model = SPEC_MODELS[self.kind]
        return model.model_validate(self.spec)  # type: ignore[return-value]
