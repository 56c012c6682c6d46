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

from typing import Any

from atelier_runtime.settings import Settings

from .base import Planned, PlannerBackend
from .llm import llm_backend
from .rules import RulesBackend

__all__ = ["BACKEND_NAMES", "Planned", "PlannerBackend", "RulesBackend", "backend_from_settings", "get_backend"]

BACKEND_NAMES = ("rules", "openai", "transformers", "vllm")


def get_backend(name: str = "rules", settings: Settings | None = None, **kwargs: Any) -> PlannerBackend:
    """The backend ``name`` configured from ``settings``; ValueError naming the known ones otherwise."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown planner backend {name!r}; known: {list(BACKEND_NAMES)}")
    settings = settings or Settings()
    if name == "rules":
        return RulesBackend()
    return llm_backend(name, settings, **kwargs)


def backend_from_settings(settings: Settings, **kwargs: Any) -> PlannerBackend:
    """The backend ``settings.planner_backend`` names (``transport=`` reaches the openai backend's HTTP client)."""
    return get_backend(settings.planner_backend, settings, **kwargs)
