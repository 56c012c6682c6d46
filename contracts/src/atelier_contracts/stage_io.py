"""Typed stage outputs and inputs: what each stage returns, and what it reads of the stages before it.

A stage's **output** is its JSON result (``StageResult.output``), stored on its database row and handed to
the stages that depend on it. Fields a stage always writes are required; ``extra="allow"`` keeps what a
stage records for people (planner runs, recipe details) without every reader having to know it.

A stage's **inputs** model has one field per upstream stage it may read, aliased by that stage's name (the
keys of ``StageTask.upstream``). The shape follows the graph: a dependency fanned out over the same items
gives this item's output; one fanned out over other items gives ``{item: output}``; a single stage gives its
output. A stage the orchestrator skipped gives :class:`Skipped` (``{"skipped": reason}``).

The stage catalogue (:mod:`atelier_contracts.catalogue`) names each stage's inputs and output model; the
stage runner parses a task's upstream into the inputs model and the handler's return into the output model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from .errors import StageError
from .plans import AdPlan, AdPrompts, Character, LayoutPlan, RegionalPlan, StoryPlan
from .tasks import Repair

# stage names (the catalogue declares each stage under its name)
S_AD_PROMPTS = "plan.ad_prompts"
S_AD_LAYOUT = "plan.ad_layout"
S_BACKGROUND = "gpu.background"
S_GATE_CRITIC = "gate.critic"
S_RENDER_AD = "render.ad"
S_WATERMARK = "gpu.watermark"
S_DELIVER = "deliver"
S_CULTURE = "plan.culture"
S_STORY = "plan.story"
S_CHARACTERS = "plan.characters"
S_SCENES = "plan.scenes"
S_CHARACTER_SHEET = "gpu.character_sheet"
S_SCENE_LAYOUT = "plan.scene_layout"
S_SCENE = "gpu.scene"
S_GATE_IDENTITY = "gate.identity"
S_STORYBOOK = "render.storybook"


class StageOutput(BaseModel):
    """Base of every stage output."""

    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        """The output as the JSON the orchestrator records: the fields the stage set (and its extras)."""
        full = self.model_dump(mode="json", by_alias=True)
        fields = type(self).model_fields
        keep = {(fields[f].alias or f) if f in fields else f for f in self.model_fields_set}
        return {k: v for k, v in full.items() if k in keep}


class Skipped(StageOutput):
    """The output of a stage the orchestrator skipped for this job (no task was sent)."""

    model_config = ConfigDict(extra="forbid")

    skipped: str = Field(description="Why, e.g. 'studio backdrop: drawn by the renderer'.")


def _skipped_or_output(value: Any) -> str:
    if isinstance(value, Skipped) or (isinstance(value, dict) and "skipped" in value):
        return "skipped"
    return "output"


def or_skipped(model: type[StageOutput]) -> Any:
    """``model | Skipped``, told apart by the ``skipped`` key."""
    return Annotated[Annotated[model, Tag("output")] | Annotated[Skipped, Tag("skipped")],
                     Discriminator(_skipped_or_output)]


# ---------------------------------------------------------------- planning (campaigns)


def prompt_tokens_field() -> Any:
    """A planning output's ``prompt_tokens``: each prompt's length per vocabulary, by its place in the output."""
    return Field(default=None, description=(
        "Each prompt in this output by its place ('plan.scenes[1].scene_prompt', 'regional.regions[0].prompt'): its "
        "length in tokens per vocabulary ('clip': OpenAI CLIP's BPE, which SDXL's and FLUX's CLIP encoders read), "
        "its (text:1.3) weights left out; CLIP reads 75 a chunk, so the GPU encodes a longer prompt in several. "
        "Absent where the planner had no vocabulary to count with (atelier_planner.tokens)."))



class AdPromptsOutput(StageOutput):
    """``plan.ad_prompts``: PAID stage 1 captions, and the RPG plan of the background caption."""

    prompts: AdPrompts | None = None
    negative_prompt: str | None = None
    regional: RegionalPlan | None = Field(default=None, description="RPG recaption of the background caption.")
    background_objects: list[str] | None = None
    category: str | None = None
    product_aspect: float | None = Field(default=None, gt=0, description="The product's width/height: measured on its "
                                         "photo, else its category's usual shape; the layouts shape its box to it.")
    planner: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    prompt_tokens: dict[str, dict[str, int]] | None = prompt_tokens_field()


class AdLayoutOutput(StageOutput):
    """``plan.ad_layout``: PAID stage 2, one layout per target size."""

    plan: AdPlan
    layouts: dict[str, Any] | None = None
    planner: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    prompt_tokens: dict[str, dict[str, int]] | None = prompt_tokens_field()


# ---------------------------------------------------------------- planning (stories)


class CultureOutput(StageOutput):
    """``plan.culture``: KAHANI's culture notes, and the lexicon entry they came from."""

    culture_notes: list[str] = Field(default_factory=list)
    culture: dict[str, Any] | None = None
    planner: dict[str, Any] | None = None


class StoryOutput(StageOutput):
    """``plan.story``: the story text in the requested language."""

    title: str | None = None
    story: str | None = None
    language: str | None = None
    planner: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


class CharactersOutput(StageOutput):
    """``plan.characters``: the cast; each character's id is an item of ``gpu.character_sheet``."""

    characters: list[Character]
    planner: dict[str, Any] | None = None
    prompt_tokens: dict[str, dict[str, int]] | None = prompt_tokens_field()


class CharacterRef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str


class CastRecord(StageOutput):
    """``plan.characters`` read only for the characters' ids: the items of ``gpu.character_sheet``."""

    model_config = ConfigDict(extra="ignore")

    characters: list[CharacterRef]


class ScenesOutput(StageOutput):
    """``plan.scenes``: the whole story plan (characters, scenes with their cast and prompts)."""

    plan: StoryPlan
    planner: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    prompt_tokens: dict[str, dict[str, int]] | None = prompt_tokens_field()


class SceneLayoutOutput(StageOutput):
    """``plan.scene_layout``: one ``LayoutPlan`` per scene, in scene order."""

    layouts: list[LayoutPlan]
    planner: dict[str, Any] | None = None
    metrics: list[Any] | None = None
    prompt_tokens: dict[str, dict[str, int]] | None = prompt_tokens_field()


# ---------------------------------------------------------------- images


class ImageOutput(StageOutput):
    """What a diffusion stage records of the image it made (recipes add what they did: regions, control, ...)."""

    width: int | None = None
    height: int | None = None
    seed: int | None = None
    model: str | None = None
    steps: int | None = None
    recipe: str | None = None
    batch_size: int | None = None


class BackgroundOutput(ImageOutput):
    """``gpu.background``: one ad background (item ``<size>-v<variant>``)."""

    background_key: str
    product_rect: list[int] | None = None
    product_mode: str | None = None
    control: list[dict[str, Any]] | None = None


class SheetOutput(ImageOutput):
    """``gpu.character_sheet``: the canonical reference image of one character (item = character id)."""

    sheet_key: str


class SceneOutput(ImageOutput):
    """``gpu.scene``: one story scene (item ``s<index>``), with how identity was kept."""

    scene_key: str
    identity: dict[str, Any] | None = None
    identity_method: str | None = None


# ---------------------------------------------------------------- gates


class GateScore(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    score: float | None = None
    passed: bool | None = None
    detail: str | None = None


class GateOutput(StageOutput):
    """A quality gate's verdict on the item it judges (the orchestrator's best-of-N reads it).

    ``attempts``, ``kept`` are added by the orchestrator once it has decided (every attempt, the one kept).
    """

    gates: list[GateScore] = Field(default_factory=list)
    passed: bool = False
    score: float | None = None
    regenerate: bool = False
    detail: str | None = None
    artifact_key: str | None = None
    strict: bool = False
    warnings: list[str] = Field(default_factory=list)
    report: dict[str, Any] | None = None
    regeneration: int | None = None
    attempts: list[dict[str, Any]] | None = None
    kept: int | None = None
    repair: Repair | None = None  # with regenerate: repair these regions in place rather than draw a new image


# ---------------------------------------------------------------- renders, assets, delivery


class RenderAdOutput(StageOutput):
    """``render.ad``: the composed ad of one size and variant, and its checks."""

    render_key: str
    width: int | None = None
    height: int | None = None
    size: str | None = None
    variant: int | None = None
    gates_passed: bool | None = None
    gates_failed: list[str] | None = None


class RenderPageOutput(StageOutput):
    """``render.storybook``: one storybook page (its layout sidecar lies next to it)."""

    render_key: str
    width: int | None = None
    height: int | None = None
    page: int | None = None


class WatermarkOutput(StageOutput):
    """``gpu.watermark``: the delivered asset, C2PA-signed and (when it can carry one) watermarked.

    ``watermark.carried`` is false, with its ``reason``, for an asset too small or too flat for the mark; the
    warning is in ``warnings`` (a ``job.warning``) and the manifest is signed all the same.
    """

    asset_key: str
    width: int | None = None
    height: int | None = None
    watermark: dict[str, Any] = Field(default_factory=dict)
    c2pa: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)


class DeliverOutput(StageOutput):
    """``deliver``: the job's manifest and what it lists."""

    manifest_key: str
    assets: list[str]
    count: int
    documents: list[str] = Field(default_factory=list)
    failed: list[dict[str, Any]] = Field(default_factory=list, description="Items that failed: stage, item, error.")


# ---------------------------------------------------------------- inputs


class StageInputs(BaseModel):
    """Base of every inputs model: one optional or required field per upstream stage, aliased by its name."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class NoInputs(StageInputs):
    """A stage that reads nothing upstream (only the job spec)."""


class AdLayoutInputs(StageInputs):
    ad_prompts: AdPromptsOutput | None = Field(default=None, alias=S_AD_PROMPTS)


class BackgroundInputs(StageInputs):
    ad_prompts: AdPromptsOutput | None = Field(default=None, alias=S_AD_PROMPTS)
    ad_layout: AdLayoutOutput = Field(alias=S_AD_LAYOUT)


class CriticInputs(StageInputs):
    ad_prompts: AdPromptsOutput | None = Field(default=None, alias=S_AD_PROMPTS)
    ad_layout: AdLayoutOutput = Field(alias=S_AD_LAYOUT)
    background: or_skipped(BackgroundOutput) = Field(alias=S_BACKGROUND)  # type: ignore[valid-type]


class RenderAdInputs(StageInputs):
    ad_layout: AdLayoutOutput = Field(alias=S_AD_LAYOUT)
    background: or_skipped(BackgroundOutput) | None = Field(default=None, alias=S_BACKGROUND)  # type: ignore[valid-type]
    critic: or_skipped(GateOutput) | None = Field(default=None, alias=S_GATE_CRITIC)  # type: ignore[valid-type]


class PlanSummary(BaseModel):
    """What the C2PA assertion names of a plan."""

    model_config = ConfigDict(extra="ignore")

    plan_id: str | None = None
    planner: dict[str, Any] | None = None


class PlanRecord(StageOutput):
    """A planning output (``plan.ad_layout``, ``plan.scenes``) read only for its plan's id and planner."""

    model_config = ConfigDict(extra="ignore")

    plan: PlanSummary | None = None


class ImageRecord(StageOutput):
    """An image stage's output (``gpu.background``, ``gpu.scene``) read only for how the image was made."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    seed: int | None = None
    identity: dict[str, Any] | None = None


class WatermarkInputs(StageInputs):
    """Ads and story pages alike: the render to mark, and the plan and image the C2PA manifest describes."""

    ad_layout: PlanRecord | None = Field(default=None, alias=S_AD_LAYOUT)
    scenes: PlanRecord | None = Field(default=None, alias=S_SCENES)
    background: or_skipped(ImageRecord) | None = Field(default=None, alias=S_BACKGROUND)  # type: ignore[valid-type]
    scene: ImageRecord | None = Field(default=None, alias=S_SCENE)
    render_ad: RenderAdOutput | None = Field(default=None, alias=S_RENDER_AD)
    render_page: RenderPageOutput | None = Field(default=None, alias=S_STORYBOOK)


class DeliverInputs(StageInputs):
    watermark: dict[str, WatermarkOutput] = Field(alias=S_WATERMARK)


class StoryInputs(StageInputs):
    culture: CultureOutput | None = Field(default=None, alias=S_CULTURE)


class CharactersInputs(StageInputs):
    story: StoryOutput | None = Field(default=None, alias=S_STORY)
    culture: CultureOutput | None = Field(default=None, alias=S_CULTURE)


class ScenesInputs(StageInputs):
    story: StoryOutput | None = Field(default=None, alias=S_STORY)
    characters: CharactersOutput | None = Field(default=None, alias=S_CHARACTERS)
    culture: CultureOutput | None = Field(default=None, alias=S_CULTURE)


class SheetInputs(StageInputs):
    characters: CharactersOutput = Field(alias=S_CHARACTERS)


class SceneLayoutInputs(StageInputs):
    scenes: ScenesOutput = Field(alias=S_SCENES)
    sheets: dict[str, SheetOutput] = Field(default_factory=dict, alias=S_CHARACTER_SHEET)


class SceneInputs(StageInputs):
    scenes: ScenesOutput = Field(alias=S_SCENES)
    scene_layout: SceneLayoutOutput = Field(alias=S_SCENE_LAYOUT)
    sheets: dict[str, SheetOutput] = Field(default_factory=dict, alias=S_CHARACTER_SHEET)


class IdentityInputs(StageInputs):
    scenes: ScenesOutput = Field(alias=S_SCENES)
    sheets: dict[str, SheetOutput] = Field(default_factory=dict, alias=S_CHARACTER_SHEET)
    scene: SceneOutput = Field(alias=S_SCENE)


class StorybookInputs(StageInputs):
    scenes: ScenesOutput = Field(alias=S_SCENES)
    scene: SceneOutput = Field(alias=S_SCENE)
    identity: or_skipped(GateOutput) | None = Field(default=None, alias=S_GATE_IDENTITY)  # type: ignore[valid-type]


# ---------------------------------------------------------------- parsing

I = TypeVar("I", bound=StageInputs)  # noqa: E741
O = TypeVar("O", bound=StageOutput)  # noqa: E741


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through ``X | None``, unions and ``Annotated``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) is dict:
        return []
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _input_error(model: type[StageInputs], exc: ValidationError, stage: str) -> StageError:
    """A non-retryable StageError that names the upstream output and the field that is missing or wrong."""
    err = exc.errors()[0]
    loc = [str(x) for x in err["loc"] if x not in ("output", "skipped")]  # union tags of or_skipped()
    dep, path = loc[0], ".".join(loc)
    if err["type"] == "missing" and len(loc) == 2:
        return StageError(f"{stage}: upstream {dep} has no {loc[1]} (upstream output {path} is missing)",
                          retryable=False, field=f"upstream.{path}")
    if len(loc) == 1:
        return StageError(f"{stage}: upstream.{dep} is not valid: {err['msg']}", retryable=False,
                          field=f"upstream.{dep}")
    field = next((f for f in model.model_fields.values() if f.alias == dep), None)
    outputs = _models_in(field.annotation) if field is not None else []
    inner = [m for out in outputs if loc[1] in out.model_fields for m in _models_in(out.model_fields[loc[1]].annotation)]
    what = f"a valid {inner[0].__name__}" if inner else "valid"
    return StageError(f"{stage}: upstream.{dep}.{loc[1]} is not {what}: {exc}", retryable=False,
                      field=f"upstream.{dep}.{loc[1]}")


def read_inputs(model: type[I], upstream: Mapping[str, Any], *, stage: str, item: str = "") -> I:
    """Parse a task's ``upstream`` outputs into the stage's inputs model; StageError (not retryable) naming the
    upstream field that is missing or invalid.

    A required upstream stage that is absent is read as an empty output, so the error names its first missing
    field; a per-item dependency handed over as ``{item: output}`` is unwrapped to the item's output.
    """
    data: dict[str, Any] = {}
    for field in model.model_fields.values():
        alias = field.alias or ""
        if alias not in upstream:
            if field.is_required():
                data[alias] = {}
            continue
        value = upstream[alias]
        if item and get_origin(field.annotation) is not dict and isinstance(value, dict) \
                and isinstance(value.get(item), dict):
            value = value[item]
        data[alias] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _input_error(model, exc, stage) from exc


def as_output(model: type[O], value: O | Mapping[str, Any] | None) -> O | None:
    """An upstream output as ``model`` — given typed, or as the JSON a stage recorded — and None as None.

    For code that is handed another stage's output both ways (the planner's backends chain their own stages when
    a plan is previewed); a value that does not fit the model raises pydantic's ValidationError.
    """
    if value is None or isinstance(value, model):
        return value
    return model.model_validate(value)


def read_output(model: type[O], value: Any, *, stage: str) -> O:
    """A handler's return (its output model, or the same as a dict) as ``model``; a mismatch is a bug in the
    stage, reported as a non-retryable StageError."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise StageError(f"{stage} returned an output that is not a valid {model.__name__}: {exc}",
                         retryable=False) from exc
