"""Atelier planner: turns job specs into versioned plans (PAID, KAHANI, RPG, CreatiLayout).

The embedded default is the offline, deterministic ``rules`` backend (:mod:`atelier_planner.backends.rules`);
the ``openai``, ``transformers`` and ``vllm`` backends (:mod:`atelier_planner.backends.llm`) implement the same
:class:`atelier_planner.backends.PlannerBackend` protocol and fall back to rules. Also here: layout metrics
(:mod:`.metrics`), the CreatiLayout designer and repair (:mod:`.designer`), the VLM critic (:mod:`.critic`)
and plan previews (:mod:`.preview`).
"""

__version__ = "0.1.0"
