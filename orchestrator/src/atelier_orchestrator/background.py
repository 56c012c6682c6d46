"""What runs beside the orchestrator's Celery tasks in the same process: the reconciler and the webhook dispatcher."""

from __future__ import annotations

import threading

from celery import Celery

from .metrics import StateCollector, register_state_collector
from .reconciler import Reconciler, ReconcileReport, resend_unfinished
from .tasks import orchestrator
from .webhooks import WebhookDispatcher


def start_reconciler(app: Celery) -> Reconciler:
    """Re-drives stages whose worker went quiet and jobs that never started."""
    ctx = orchestrator(app)
    rec = Reconciler(ctx.factory, ctx.runtime, ctx.send, settings=ctx.settings)
    rec.start()
    return rec


def start_webhook_dispatcher(app: Celery) -> WebhookDispatcher:
    """Sends the webhook outbox; it runs wherever the reconciler runs."""
    ctx = orchestrator(app)
    dispatcher = WebhookDispatcher(ctx.factory, ctx.settings)
    dispatcher.start()
    return dispatcher


def start_background(app: Celery) -> list[Reconciler | WebhookDispatcher]:
    """Start both; each has a ``stop()``. The process's metrics also count jobs, stages and queue depths."""
    register_metrics(app)
    return [start_reconciler(app), start_webhook_dispatcher(app)]


def register_metrics(app: Celery) -> StateCollector:
    """The jobs/stages/queue-depth collector on the default registry, once per process."""
    ctx = orchestrator(app)
    with _METRICS_LOCK:
        global _COLLECTOR
        if _COLLECTOR is None:
            _COLLECTOR = register_state_collector(ctx.factory, ctx.settings.broker_url)
        return _COLLECTOR


_METRICS_LOCK = threading.Lock()
_COLLECTOR: StateCollector | None = None


def resend_after_restart(app: Celery) -> ReconcileReport:
    """Re-send at once everything the database says is unfinished (for a broker that starts empty)."""
    ctx = orchestrator(app)
    return resend_unfinished(ctx.factory, ctx.send)
