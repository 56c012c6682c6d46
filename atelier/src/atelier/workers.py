"""Worker processes: a Celery app that consumes some queues and imports exactly the code they need.

Which modules a queue needs comes from the stage catalogue (``atelier_contracts.catalogue.queue_modules``):
the handler of every stage routed to it, plus the queue's other tasks (the orchestrator's, the plan preview).
They are imported by name, so a host installs only its roles' packages (``atelier[gpu]`` on a GPU host).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from atelier_contracts.catalogue import queue_modules
from atelier_contracts.tasks import ALL_QUEUES
from atelier_runtime.celeryapp import make_celery
from atelier_runtime.settings import Settings
from celery import Celery

# the extra of the `atelier` package that installs each module's package
EXTRAS = {"atelier_orchestrator": "orchestrator", "atelier_planner": "planner", "atelier_renderer": "renderer",
          "atelier_gpu": "gpu"}


def role_modules(queues: Sequence[str]) -> list[str]:
    """The modules a worker consuming ``queues`` imports; ValueError naming an unknown queue."""
    unknown = [q for q in queues if q not in ALL_QUEUES]
    if unknown:
        raise ValueError(f"unknown queue(s) {unknown}; known: {sorted(ALL_QUEUES)}")
    return queue_modules(queues)


def worker_app(settings: Settings, queues: Sequence[str]) -> Celery:
    """The Celery app of a worker consuming ``queues``, with their tasks registered."""
    modules = role_modules(queues)
    settings.home_dir()
    app = make_celery(settings, include=modules)
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            package = module.split(".")[0]
            if exc.name != package:
                raise
            raise ValueError(f"queue(s) {', '.join(queues)} need {package}, which is not installed: "
                             f"pip install 'atelier[{EXTRAS.get(package, package)}]'") from exc
    return app
