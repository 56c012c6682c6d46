"""The stage catalogue: one declaration per stage, and the only list of stages there is.

Each :class:`StageDecl` says where a stage runs (its queue), where its code is (the handler module, one file
named after the stage in its service's ``stages/`` folder), what it reads (its inputs model) and returns (its
output model), how it fans out, and, for a quality gate, which stage it judges. Derived from it:

* Celery routing (``atelier_runtime.celeryapp``) and the modules a worker of each queue imports;
* the stage runner's parsing of a task's upstream outputs and of the handler's result;
* the job graphs' validation (``atelier_orchestrator.graphs``) and the gates' targets;
* the README's "where is it" table (:func:`where_is_it`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from .stage_io import (
    S_AD_LAYOUT,
    S_AD_PROMPTS,
    S_BACKGROUND,
    S_CHARACTER_SHEET,
    S_CHARACTERS,
    S_CULTURE,
    S_DELIVER,
    S_GATE_CRITIC,
    S_GATE_IDENTITY,
    S_RENDER_AD,
    S_SCENE,
    S_SCENE_LAYOUT,
    S_SCENES,
    S_STORY,
    S_STORYBOOK,
    S_WATERMARK,
    AdLayoutInputs,
    AdLayoutOutput,
    AdPromptsOutput,
    BackgroundInputs,
    BackgroundOutput,
    CharactersInputs,
    CharactersOutput,
    CriticInputs,
    CultureOutput,
    DeliverInputs,
    DeliverOutput,
    GateOutput,
    IdentityInputs,
    NoInputs,
    RenderAdInputs,
    RenderAdOutput,
    RenderPageOutput,
    SceneInputs,
    SceneLayoutInputs,
    SceneLayoutOutput,
    SceneOutput,
    ScenesInputs,
    ScenesOutput,
    SheetInputs,
    SheetOutput,
    StageInputs,
    StageOutput,
    StorybookInputs,
    StoryInputs,
    StoryOutput,
    WatermarkInputs,
    WatermarkOutput,
)
from .tasks import Q_GPU_DIFFUSION, Q_GPU_IDENTITY, Q_GPU_WATERMARK, Q_ORCHESTRATOR, Q_PLANNING, Q_RENDER

__all__ = [
    "CATALOGUE", "QUEUE_TASK_MODULES", "STAGES", "STAGE_QUEUES", "FanOut", "StageDecl", "gates", "handler_stem",
    "queue_modules", "stage", "where_is_it",
    "S_AD_LAYOUT", "S_AD_PROMPTS", "S_BACKGROUND", "S_CHARACTER_SHEET", "S_CHARACTERS", "S_CULTURE", "S_DELIVER",
    "S_GATE_CRITIC", "S_GATE_IDENTITY", "S_RENDER_AD", "S_SCENE", "S_SCENE_LAYOUT", "S_SCENES", "S_STORY",
    "S_STORYBOOK", "S_WATERMARK",
]

FanOut = Literal["none", "size_variant", "character", "scene"]


@dataclass(frozen=True)
class StageDecl:
    """One stage.

    Args:
        name: the stage name (``gpu.background``); its Celery task is ``atelier.stage.<name>``.
        queue: the queue its tasks go to (which worker role runs it).
        handler: the module that registers its handler, ``<package>.stages.<stem>`` (:func:`handler_stem`).
        inputs: what it reads of its upstream stages; output: what it returns.
        fan_out: ``none`` (once per job), or the item space it runs once per item of; a stage that serves both
            job kinds may name one space per kind (the watermark marks ads per size and variant, pages per scene).
        gate_for: for a quality gate, the stage whose item it judges (and regenerates, best-of-N).
        summary: one line for people (the README's table).
    """

    name: str
    queue: str
    handler: str
    inputs: type[StageInputs]
    output: type[StageOutput]
    fan_out: FanOut | tuple[FanOut, ...]
    summary: str
    gate_for: str | None = None

    @property
    def is_gate(self) -> bool:
        return self.gate_for is not None

    @property
    def item_spaces(self) -> tuple[FanOut, ...]:
        """The item spaces this stage may fan out over (``("none",)`` for a once-per-job stage)."""
        return self.fan_out if isinstance(self.fan_out, tuple) else (self.fan_out,)


CATALOGUE: tuple[StageDecl, ...] = (
    # campaigns (PAID, with RPG and CreatiLayout)
    StageDecl(S_AD_PROMPTS, Q_PLANNING, "atelier_planner.stages.ad_prompts", NoInputs, AdPromptsOutput, "none",
              "product + brand → foreground/background captions; RPG regional prompts of the background"),
    StageDecl(S_AD_LAYOUT, Q_PLANNING, "atelier_planner.stages.ad_layout", AdLayoutInputs, AdLayoutOutput, "none",
              "one layout per target size: product, logo, taglines, CTA, background objects"),
    StageDecl(S_BACKGROUND, Q_GPU_DIFFUSION, "atelier_gpu.stages.background", BackgroundInputs, BackgroundOutput,
              "size_variant", "the background around the product (control, inpaint, layout, regional or text-to-image)"),
    StageDecl(S_GATE_CRITIC, Q_PLANNING, "atelier_planner.stages.gate_critic", CriticInputs, GateOutput,
              "size_variant", "VLM critic: does each region of the background show its caption?",
              gate_for=S_BACKGROUND),
    StageDecl(S_RENDER_AD, Q_RENDER, "atelier_renderer.stages.render_ad", RenderAdInputs, RenderAdOutput,
              "size_variant", "taglines, logo, CTA drawn as graphics; OCR, contrast and safe-zone checks"),
    # stories (KAHANI, with RPG, CreatiLayout and identity)
    StageDecl(S_CULTURE, Q_PLANNING, "atelier_planner.stages.culture", NoInputs, CultureOutput, "none",
              "culture notes grounding the story"),
    StageDecl(S_STORY, Q_PLANNING, "atelier_planner.stages.story", StoryInputs, StoryOutput, "none",
              "the story in the requested language"),
    StageDecl(S_CHARACTERS, Q_PLANNING, "atelier_planner.stages.characters", CharactersInputs, CharactersOutput,
              "none", "the cast, with sheet prompts and seeds"),
    StageDecl(S_SCENES, Q_PLANNING, "atelier_planner.stages.scenes", ScenesInputs, ScenesOutput, "none",
              "the story plan: scenes, narration, cast and prompts"),
    StageDecl(S_CHARACTER_SHEET, Q_GPU_DIFFUSION, "atelier_gpu.stages.character_sheet", SheetInputs, SheetOutput,
              "character", "one canonical reference image per character"),
    StageDecl(S_SCENE_LAYOUT, Q_PLANNING, "atelier_planner.stages.scene_layout", SceneLayoutInputs,
              SceneLayoutOutput, "none", "character and backdrop boxes per scene (CreatiLayout)"),
    StageDecl(S_SCENE, Q_GPU_DIFFUSION, "atelier_gpu.stages.scene", SceneInputs, SceneOutput, "scene",
              "one scene from its layout, each character conditioned on their sheet"),
    StageDecl(S_GATE_IDENTITY, Q_GPU_IDENTITY, "atelier_gpu.stages.gate_identity", IdentityInputs, GateOutput,
              "scene", "face similarity of every character to their sheet (ID-Aligner's reward)",
              gate_for=S_SCENE),
    StageDecl(S_STORYBOOK, Q_RENDER, "atelier_renderer.stages.render_storybook", StorybookInputs, RenderPageOutput,
              "scene", "one storybook page: the scene and its narration"),
    # both
    StageDecl(S_WATERMARK, Q_GPU_WATERMARK, "atelier_gpu.stages.watermark", WatermarkInputs, WatermarkOutput,
              ("size_variant", "scene"), "invisible watermark, read back, then a signed C2PA manifest"),
    StageDecl(S_DELIVER, Q_RENDER, "atelier_renderer.stages.deliver", DeliverInputs, DeliverOutput, "none",
              "the manifest of every asset (and the storybook PDF and HTML)"),
)
STAGES: dict[str, StageDecl] = {d.name: d for d in CATALOGUE}
STAGE_QUEUES: dict[str, str] = {d.name: d.queue for d in CATALOGUE}

# tasks that are not stages, by the queue that runs them: the orchestrator's own, and the planner's plan preview
QUEUE_TASK_MODULES: dict[str, tuple[str, ...]] = {
    Q_ORCHESTRATOR: ("atelier_orchestrator.tasks",),
    Q_PLANNING: ("atelier_planner.preview",),
}


def stage(name: str) -> StageDecl:
    """The declaration of stage ``name``; KeyError naming the known stages otherwise."""
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {sorted(STAGES)}") from None


def gates() -> dict[str, str]:
    """Gate stage → the stage whose item it judges."""
    return {d.name: d.gate_for for d in CATALOGUE if d.gate_for is not None}


def queue_modules(queues: Iterable[str]) -> list[str]:
    """The modules a worker consuming ``queues`` imports: its stages' handlers and the queues' other tasks."""
    wanted = set(queues)
    modules = {d.handler for d in CATALOGUE if d.queue in wanted}
    for q in wanted:
        modules.update(QUEUE_TASK_MODULES.get(q, ()))
    return sorted(modules)


def handler_stem(name: str) -> str:
    """The file name (without ``.py``) of a stage's handler: the stage name with dots as underscores, without the
    ``plan.``/``gpu.`` prefix its package already says (``gpu.background`` → ``background``,
    ``render.ad`` → ``render_ad``, ``gate.critic`` → ``gate_critic``)."""
    for prefix in ("plan.", "gpu."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace(".", "_")


def where_is_it(path_of: Callable[[str], str]) -> str:
    """The README's "where is it" table (Markdown): stage → handler file → queue → inputs / output.

    ``path_of(module)`` gives the handler module's file path relative to the repository.
    """

    def reads(d: StageDecl) -> str:
        names = [f.alias or n for n, f in d.inputs.model_fields.items()]
        return ", ".join(f"`{n}`" for n in names) or "the job spec"

    rows = ["| stage | handler | queue | fan-out | reads | returns |", "|---|---|---|---|---|---|"]
    for d in CATALOGUE:
        name = f"`{d.name}`" + (f" (gate of `{d.gate_for}`)" if d.gate_for else "")
        fan = " or ".join(d.item_spaces) if d.item_spaces != ("none",) else "—"
        rows.append(f"| {name} | [`{path_of(d.handler)}`]({path_of(d.handler)}) | `{d.queue}` | {fan} | "
                    f"{reads(d)} | `{d.output.__name__}` |")
    return "\n".join(rows) + "\n"
