"""The one Celery configuration every Atelier process uses (producer or worker, any role)."""

from __future__ import annotations

from collections.abc import Sequence

from atelier_contracts.catalogue import STAGE_QUEUES
from atelier_contracts.tasks import (
    ALL_QUEUES,
    Q_ORCHESTRATOR,
    Q_PLANNING,
    T_CANCEL_JOB,
    T_PREVIEW,
    T_STAGE_DONE,
    T_STAGE_PROGRESS,
    T_STAGE_STARTED,
    T_START_JOB,
    stage_task_name,
)
from celery import Celery
from kombu import Queue

from .settings import Settings


def task_routes() -> dict[str, dict[str, str]]:
    """Every task's queue: the orchestrator's own, the plan preview, and each stage's from the catalogue."""
    routes = {name: {"queue": Q_ORCHESTRATOR} for name in (T_START_JOB, T_STAGE_STARTED, T_STAGE_PROGRESS, T_STAGE_DONE, T_CANCEL_JOB)}
    routes[T_PREVIEW] = {"queue": Q_PLANNING}
    routes.update({stage_task_name(stage): {"queue": q} for stage, q in STAGE_QUEUES.items()})
    return routes


def make_celery(settings: Settings, *, include: Sequence[str] = (), name: str = "atelier") -> Celery:
    """Build the Celery app: Redis (or in-memory) broker, explicit queues, late acks for redelivery."""
    broker = settings.broker_url or "memory://"
    app = Celery(name, broker=broker, include=list(include))
    app.conf.update(
        task_queues=[Queue(q, routing_key=q) for q in ALL_QUEUES],
        task_default_queue=Q_ORCHESTRATOR,
        task_routes=task_routes(),
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "retry_on_timeout": True,
        },
        enable_utc=True,
    )
    if broker.startswith("memory://"):
        # the in-process transport polls; the default 1 s poll would dominate every stage handoff
        app.conf.broker_transport_options = {"polling_interval": 0.01}
    app.atelier_settings = settings  # type: ignore[attr-defined]
    return app
