"""What runs beside the orchestrator's Celery tasks in the same process: the reconciler and the webhook dispatcher."""

from __future__ import annotations

from celery import Celery

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
    """Start both; each has a ``stop()``."""
    return [start_reconciler(app), start_webhook_dispatcher(app)]


def resend_after_restart(app: Celery) -> ReconcileReport:
    """Re-send at once everything the database says is unfinished (for a broker that starts empty)."""
    ctx = orchestrator(app)
    return resend_unfinished(ctx.factory, ctx.send)
