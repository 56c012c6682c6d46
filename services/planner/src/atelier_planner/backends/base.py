"""What every planner backend is: one method per planning stage returning the stage's JSON output, plus RPG's
recaption and the CreatiLayout designer (:class:`PlannerBackend`), and a plan with how it was made (:class:`Planned`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from atelier_contracts.layouts import SceneLayout
from atelier_contracts.plans import Box, LayoutPlan, PlannerInfo, RegionalPlan, StoryPlan
from atelier_contracts.specs import CampaignSpec, StorySpec
from atelier_contracts.stage_io import AdPromptsOutput, CharactersOutput, CultureOutput, StoryOutput

T = TypeVar("T")


@dataclass
class Planned(Generic[T]):
    """A plan and how it was made (``run`` is the stage output's ``planner`` entry)."""

    value: T
    run: dict[str, Any]
    notes: list[str] = field(default_factory=list)


class PlannerBackend(Protocol):
    """One method per planning stage (returning the stage's JSON output), plus RPG and the designer."""

    name: str
    info: PlannerInfo

    def recaption(self, prompt: str, *, plan_id: str, seed: int, width: int, height: int,
                  negative_prompt: str = "") -> Planned[RegionalPlan]: ...

    def design_layout(self, prompt: str, *, width: int = 1024, height: int = 1024,
                      points: list[dict[str, Any]] | None = None, boxes: list[Box] | None = None,
                      plan_id: str = "design", seed: int = 0) -> Planned[LayoutPlan]: ...

    def ad_prompts(self, spec: CampaignSpec, *, job_id: str, product_image: bytes | None = None) -> dict[str, Any]: ...

    def ad_layout(self, spec: CampaignSpec, *, job_id: str, prompts_output: AdPromptsOutput | dict[str, Any] | None) -> dict[str, Any]: ...

    def culture(self, spec: StorySpec, *, job_id: str) -> dict[str, Any]: ...

    def story(self, spec: StorySpec, *, job_id: str, culture_output: CultureOutput | dict[str, Any] | None) -> dict[str, Any]: ...

    def characters(self, spec: StorySpec, *, job_id: str, story_output: StoryOutput | dict[str, Any] | None,
                   culture_output: CultureOutput | dict[str, Any] | None) -> dict[str, Any]: ...

    def scenes(self, spec: StorySpec, *, job_id: str, story_output: StoryOutput | dict[str, Any] | None,
               characters_output: CharactersOutput | dict[str, Any] | None, culture_output: CultureOutput | dict[str, Any] | None) -> dict[str, Any]: ...

    def scene_layouts(self, plan: StoryPlan, *, sheets: dict[str, str], job_id: str,
                      require_sheets: bool = True, pages: dict[int, SceneLayout] | None = None) -> dict[str, Any]: ...
