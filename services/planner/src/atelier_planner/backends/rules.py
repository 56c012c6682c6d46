"""The offline, deterministic ``rules`` backend (embedded default): same inputs → byte-identical plans."""

from __future__ import annotations

from typing import Any

from atelier_contracts.layouts import SceneLayout
from atelier_contracts.plans import Box, LayoutPlan, PlannerInfo, RegionalPlan, StoryPlan
from atelier_contracts.specs import CampaignSpec, StorySpec
from atelier_contracts.stage_io import AdPromptsOutput, CharactersOutput, CultureOutput, StoryOutput

from .. import designer, kahani, paid, rpg
from ..common import RULES_PLANNER
from ..llm.kahani import story_metrics
from ..metrics import layout_metrics, regional_metrics
from .base import Planned

RULES_RUN: dict[str, Any] = {"backend": "rules", "engine": "rules", "model": RULES_PLANNER.model,
                             "prompt_version": RULES_PLANNER.prompt_version, "fallback": None}


def rules_run(**extra: Any) -> dict[str, Any]:
    return {**RULES_RUN, **extra}


def scenes_metrics(plan: StoryPlan) -> list[dict[str, Any]]:
    """Layout metrics of every scene's character boxes (index order)."""
    return [layout_metrics([m.box for m in s.cast]) for s in sorted(plan.scenes, key=lambda s: s.index)]


class RulesBackend:
    """PAID, KAHANI, RPG and CreatiLayout offline planners behind the PlannerBackend protocol."""

    name = "rules"
    info: PlannerInfo = RULES_PLANNER

    def __init__(self, *, allow_occlude: bool = False) -> None:
        self.allow_occlude = allow_occlude

    def recaption(self, prompt: str, *, plan_id: str, seed: int, width: int, height: int,
                  negative_prompt: str = "") -> Planned[RegionalPlan]:
        plan = rpg.recaption(prompt, plan_id=plan_id, seed=seed, width=width, height=height,
                             negative_prompt=negative_prompt, planner=self.info)
        return Planned(plan, rules_run())

    def design_layout(self, prompt: str, *, width: int = 1024, height: int = 1024,
                      points: list[dict[str, Any]] | None = None, boxes: list[Box] | None = None,
                      plan_id: str = "design", seed: int = 0) -> Planned[LayoutPlan]:
        plan, notes = designer.design_layout(prompt, width=width, height=height, points=points, boxes=boxes,
                                             plan_id=plan_id, seed=seed, planner=self.info)
        return Planned(plan, rules_run(), notes)

    def ad_prompts(self, spec: CampaignSpec, *, job_id: str, product_image: bytes | None = None) -> dict[str, Any]:
        out = paid.ad_prompts(spec, job_id=job_id, planner=self.info)
        return {**out, "planner": rules_run(), "metrics": {"regional": regional_metrics(out["regional"]["split_ratio"])}}

    def ad_layout(self, spec: CampaignSpec, *, job_id: str, prompts_output: AdPromptsOutput | dict[str, Any] | None) -> dict[str, Any]:
        occlude = paid.allow_occlude_of(spec, self.allow_occlude)
        plan, infos = paid.ad_layout_with_info(spec, job_id=job_id, prompts_output=prompts_output, planner=self.info,
                                               allow_occlude=occlude)
        return layout_output(plan.model_dump(mode="json"), infos, rules_run())

    def culture(self, spec: StorySpec, *, job_id: str) -> dict[str, Any]:
        return {**kahani.culture_stage(spec, job_id=job_id), "planner": rules_run()}

    def story(self, spec: StorySpec, *, job_id: str, culture_output: CultureOutput | dict[str, Any] | None) -> dict[str, Any]:
        out = kahani.story_stage(spec, job_id=job_id, culture_output=culture_output)
        return {**out, "planner": rules_run(), "metrics": story_metrics(out["story"], spec.language)}

    def characters(self, spec: StorySpec, *, job_id: str, story_output: StoryOutput | dict[str, Any] | None,
                   culture_output: CultureOutput | dict[str, Any] | None) -> dict[str, Any]:
        # the rules backend derives the cast from the premise and culture (as the story stage did),
        # so the characters always match the story's names
        return {**kahani.characters_stage(spec, job_id=job_id, culture_output=culture_output), "planner": rules_run()}

    def scenes(self, spec: StorySpec, *, job_id: str, story_output: StoryOutput | dict[str, Any] | None,
               characters_output: CharactersOutput | dict[str, Any] | None, culture_output: CultureOutput | dict[str, Any] | None) -> dict[str, Any]:
        plan = kahani.scenes_stage(spec, job_id=job_id, story_output=story_output, characters_output=characters_output,
                                   culture_output=culture_output, planner=self.info)
        return {"plan": plan.model_dump(mode="json"), "planner": rules_run(),
                "metrics": {"scenes": scenes_metrics(plan)}}

    def scene_layouts(self, plan: StoryPlan, *, sheets: dict[str, str], job_id: str,
                      require_sheets: bool = True, pages: dict[int, SceneLayout] | None = None) -> dict[str, Any]:
        layouts = kahani.scene_layouts(plan, sheets=sheets, job_id=job_id, planner=self.info,
                                       require_sheets=require_sheets, pages=pages)
        return {"layouts": [lp.model_dump(mode="json") for lp in layouts], "planner": rules_run(),
                "metrics": [layout_metrics(lp.boxes) for lp in layouts]}


def layout_output(plan: dict[str, Any], infos: dict[str, dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """The ``plan.ad_layout`` output: the AdPlan, per-size layout info, metrics per size and the run."""
    return {"plan": plan, "layouts": {size: {k: v for k, v in info.items() if k != "metrics"} for size, info in infos.items()},
            "metrics": {size: info["metrics"] for size, info in infos.items()}, "planner": run}
