"""Atelier planner: turns job specs into versioned plans (PAID, KAHANI, RPG, CreatiLayout).

The embedded default is the offline, deterministic ``rules`` backend (:mod:`atelier_planner.backends.rules`);
LLM backends implement the same :class:`atelier_planner.backends.PlannerBackend` protocol.
"""

__version__ = "0.1.0"
