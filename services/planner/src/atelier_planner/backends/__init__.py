"""Planner backends: each turns specs into the same plan contracts.

``rules`` (offline, deterministic) is the embedded default. An LLM backend implements the same
:class:`PlannerBackend` protocol (with its own ``info``) and is registered in :data:`BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from atelier_shared.plans import AdPlan, LayoutPlan, PlannerInfo, RegionalPlan, StoryPlan
from atelier_shared.specs import CampaignSpec, StorySpec


class PlannerBackend(Protocol):
    """One method per planning stage; outputs are the stage outputs (JSON-ready) or plan models."""

    info: PlannerInfo

    def recaption(self, prompt: str, *, plan_id: str, seed: int, width: int, height: int,
                  negative_prompt: str = "") -> RegionalPlan: ...

    def ad_prompts(self, spec: CampaignSpec, *, job_id: str) -> dict[str, Any]: ...

    def ad_layout(self, spec: CampaignSpec, *, job_id: str, prompts_output: dict[str, Any] | None) -> AdPlan: ...

    def culture(self, spec: StorySpec, *, job_id: str) -> dict[str, Any]: ...

    def story(self, spec: StorySpec, *, job_id: str, culture_output: dict[str, Any] | None) -> dict[str, Any]: ...

    def characters(self, spec: StorySpec, *, job_id: str, story_output: dict[str, Any] | None,
                   culture_output: dict[str, Any] | None) -> dict[str, Any]: ...

    def scenes(self, spec: StorySpec, *, job_id: str, story_output: dict[str, Any] | None,
               characters_output: dict[str, Any] | None, culture_output: dict[str, Any] | None) -> StoryPlan: ...

    def scene_layouts(self, plan: StoryPlan, *, sheets: dict[str, str], job_id: str) -> list[LayoutPlan]: ...


def _rules() -> PlannerBackend:
    from .rules import RulesBackend

    return RulesBackend()


BACKENDS: dict[str, Callable[[], PlannerBackend]] = {"rules": _rules}


def get_backend(name: str = "rules") -> PlannerBackend:
    """The backend registered under ``name``; ValueError naming the known ones otherwise."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown planner backend {name!r}; known: {sorted(BACKENDS)}") from None
    return factory()
