"""The offline, deterministic ``rules`` backend (embedded default): same inputs → byte-identical plans."""

from __future__ import annotations

from typing import Any

from atelier_shared.plans import AdPlan, LayoutPlan, PlannerInfo, RegionalPlan, StoryPlan
from atelier_shared.specs import CampaignSpec, StorySpec

from .. import kahani, paid, rpg
from ..common import RULES_PLANNER


class RulesBackend:
    """PAID, KAHANI, RPG and CreatiLayout offline fallbacks behind the PlannerBackend protocol."""

    info: PlannerInfo = RULES_PLANNER

    def recaption(self, prompt: str, *, plan_id: str, seed: int, width: int, height: int,
                  negative_prompt: str = "") -> RegionalPlan:
        return rpg.recaption(prompt, plan_id=plan_id, seed=seed, width=width, height=height,
                             negative_prompt=negative_prompt, planner=self.info)

    def ad_prompts(self, spec: CampaignSpec, *, job_id: str) -> dict[str, Any]:
        return paid.ad_prompts(spec, job_id=job_id, planner=self.info)

    def ad_layout(self, spec: CampaignSpec, *, job_id: str, prompts_output: dict[str, Any] | None) -> AdPlan:
        return paid.ad_layout(spec, job_id=job_id, prompts_output=prompts_output, planner=self.info)

    def culture(self, spec: StorySpec, *, job_id: str) -> dict[str, Any]:
        return kahani.culture_stage(spec, job_id=job_id)

    def story(self, spec: StorySpec, *, job_id: str, culture_output: dict[str, Any] | None) -> dict[str, Any]:
        return kahani.story_stage(spec, job_id=job_id, culture_output=culture_output)

    def characters(self, spec: StorySpec, *, job_id: str, story_output: dict[str, Any] | None,
                   culture_output: dict[str, Any] | None) -> dict[str, Any]:
        # the rules backend derives the cast from the premise and culture (as the story stage did),
        # so the characters always match the story's names
        return kahani.characters_stage(spec, job_id=job_id, culture_output=culture_output)

    def scenes(self, spec: StorySpec, *, job_id: str, story_output: dict[str, Any] | None,
               characters_output: dict[str, Any] | None, culture_output: dict[str, Any] | None) -> StoryPlan:
        return kahani.scenes_stage(spec, job_id=job_id, story_output=story_output, characters_output=characters_output,
                                   culture_output=culture_output, planner=self.info)

    def scene_layouts(self, plan: StoryPlan, *, sheets: dict[str, str], job_id: str) -> list[LayoutPlan]:
        return kahani.scene_layouts(plan, sheets=sheets, job_id=job_id, planner=self.info)
