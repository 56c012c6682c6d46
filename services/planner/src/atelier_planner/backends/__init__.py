"""Planner backends: each turns specs into the same stage outputs and plan contracts.

* ``rules`` — offline and deterministic (:mod:`.rules`): the embedded default and every LLM backend's fallback;
* ``openai`` — an OpenAI-compatible server (vLLM, llama.cpp server, Ollama), optionally a VLM too;
* ``transformers`` — a local model folder in-process, decoding constrained by xgrammar;
* ``vllm`` — ``vllm.LLM`` in-process (optional extra for GPU planner hosts).

The three LLM backends are one :class:`~.llm.LLMBackend` over different engines. Every stage output
carries ``planner`` (which backend, engine, model and prompt version made it, and any fallback) and
``metrics`` (:mod:`atelier_planner.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from atelier_shared.plans import Box, LayoutPlan, PlannerInfo, RegionalPlan, StoryPlan
from atelier_shared.settings import Settings
from atelier_shared.specs import CampaignSpec, StorySpec

T = TypeVar("T")
BACKEND_NAMES = ("rules", "openai", "transformers", "vllm")


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

    def ad_layout(self, spec: CampaignSpec, *, job_id: str, prompts_output: dict[str, Any] | None) -> dict[str, Any]: ...

    def culture(self, spec: StorySpec, *, job_id: str) -> dict[str, Any]: ...

    def story(self, spec: StorySpec, *, job_id: str, culture_output: dict[str, Any] | None) -> dict[str, Any]: ...

    def characters(self, spec: StorySpec, *, job_id: str, story_output: dict[str, Any] | None,
                   culture_output: dict[str, Any] | None) -> dict[str, Any]: ...

    def scenes(self, spec: StorySpec, *, job_id: str, story_output: dict[str, Any] | None,
               characters_output: dict[str, Any] | None, culture_output: dict[str, Any] | None) -> dict[str, Any]: ...

    def scene_layouts(self, plan: StoryPlan, *, sheets: dict[str, str], job_id: str,
                      require_sheets: bool = True) -> dict[str, Any]: ...


def get_backend(name: str = "rules", settings: Settings | None = None, **kwargs: Any) -> PlannerBackend:
    """The backend ``name`` configured from ``settings``; ValueError naming the known ones otherwise."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown planner backend {name!r}; known: {list(BACKEND_NAMES)}")
    settings = settings or Settings()
    if name == "rules":
        from .rules import RulesBackend

        return RulesBackend()
    from .llm import llm_backend

    return llm_backend(name, settings, **kwargs)


def backend_from_settings(settings: Settings, **kwargs: Any) -> PlannerBackend:
    """The backend ``settings.planner_backend`` names (``transport=`` reaches the openai backend's HTTP client)."""
    return get_backend(settings.planner_backend, settings, **kwargs)
