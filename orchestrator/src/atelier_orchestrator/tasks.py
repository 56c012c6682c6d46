"""Celery tasks of the ``orchestrator`` queue: thin edges over :mod:`engine`."""

from __future__ import annotations

from typing import Any

from atelier_contracts.tasks import (
    T_STAGE_DONE,
    T_STAGE_PROGRESS,
    T_STAGE_STARTED,
    T_START_JOB,
    StageProgress,
    StageResult,
    StageStarted,
)
from atelier_control.db import engine_from_settings, session_factory
from atelier_runtime.stage_runner import resources
from celery import Celery, shared_task
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from . import engine

_RETRY = {"autoretry_for": (OperationalError, DBAPIError), "retry_backoff": 0.5, "retry_backoff_max": 30,
          "retry_jitter": True, "max_retries": None, "acks_late": True, "ignore_result": True}


class OrchestratorContext:
    def __init__(self, app: Celery) -> None:
        res = resources(app)
        self.settings = res.settings
        self.engine = res.extras.get("engine") or engine_from_settings(res.settings)
        self.factory: sessionmaker[Session] = session_factory(self.engine)
        self.runtime = res.runtime

        def send(name: str, args: list[Any], countdown: float | None) -> None:
            app.send_task(name, args=args, countdown=countdown)

        self.send: engine.Send = send


def orchestrator(app: Celery) -> OrchestratorContext:
    """The per-process orchestrator context (engine, session factory, sender), built once."""
    res = resources(app)
    with res.lock:
        ctx = res.extras.get("orchestrator")
        if ctx is None:
            ctx = OrchestratorContext(app)
            res.extras["orchestrator"] = ctx
    return ctx  # type: ignore[no-any-return]


@shared_task(name=T_START_JOB, bind=True, **_RETRY)
def start_job(self: Any, job_id: str) -> None:
    ctx = orchestrator(self.app)
    engine.run_in_tx(ctx.factory, ctx.send, lambda s, o: engine.start_job(s, job_id, o, settings=ctx.settings))


@shared_task(name=T_STAGE_STARTED, bind=True, **_RETRY)
def stage_started(self: Any, payload: dict[str, Any]) -> None:
    ctx = orchestrator(self.app)
    msg = StageStarted.model_validate(payload)
    engine.run_in_tx(ctx.factory, ctx.send, lambda s, o: engine.stage_started(s, msg))


@shared_task(name=T_STAGE_PROGRESS, bind=True, **_RETRY)
def stage_progress(self: Any, payload: dict[str, Any]) -> None:
    ctx = orchestrator(self.app)
    msg = StageProgress.model_validate(payload)
    engine.run_in_tx(ctx.factory, ctx.send, lambda s, o: engine.stage_progress(s, msg))


@shared_task(name=T_STAGE_DONE, bind=True, **_RETRY)
def stage_done(self: Any, payload: dict[str, Any]) -> None:
    ctx = orchestrator(self.app)
    result = StageResult.model_validate(payload)
    engine.run_in_tx(ctx.factory, ctx.send, lambda s, o: engine.stage_done(s, result, o, settings=ctx.settings))
    if result.status == "succeeded":
        # later deliveries of this stage (re-sent by the reconciler or the broker) become no-ops
        ctx.runtime.mark_done(result.stage_id, result.regeneration, result.attempt)
