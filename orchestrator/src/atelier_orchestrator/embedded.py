"""The embedded default: one process runs every queue on an in-memory broker (no Redis needed)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from atelier_shared.celeryapp import ROLE_MODULES, make_celery
from atelier_shared.settings import Settings
from atelier_shared.tasks import ALL_QUEUES, GPU_QUEUES
from celery import Celery
from celery.contrib.testing.worker import start_worker

from .reconciler import Reconciler
from .tasks import orchestrator
from .webhooks import WebhookDispatcher

log = logging.getLogger(__name__)


def role_modules(queues: Sequence[str]) -> list[str]:
    """Task modules a worker consuming ``queues`` must import (by name: no static cross-service imports)."""
    unknown = [q for q in queues if q not in ROLE_MODULES]
    if unknown:
        raise ValueError(f"unknown queue(s) {unknown}; known: {sorted(ROLE_MODULES)}")
    return sorted({ROLE_MODULES[q] for q in queues})


def worker_app(settings: Settings, queues: Sequence[str]) -> Celery:
    modules = role_modules(queues)
    app = make_celery(settings, include=modules)
    for m in modules:
        importlib.import_module(m)
    return app


def start_reconciler(app: Celery) -> Reconciler:
    ctx = orchestrator(app)
    rec = Reconciler(ctx.factory, ctx.runtime, ctx.send, settings=ctx.settings)
    rec.start()
    return rec


def start_webhook_dispatcher(app: Celery) -> WebhookDispatcher:
    """The webhook outbox sender (issue 6); it runs wherever the reconciler runs."""
    ctx = orchestrator(app)
    dispatcher = WebhookDispatcher(ctx.factory, ctx.settings)
    dispatcher.start()
    return dispatcher


@contextmanager
def embedded_worker(settings: Settings, *, concurrency: int = 2) -> Iterator[Celery]:
    """Run Celery workers for every queue in this process, plus the reconciler and the webhook dispatcher.

    The GPU queues get a pool of their own with one thread, as GPU workers have everywhere (one task at a
    time: two diffusion tasks on one cached pipeline would race on its scheduler); the other queues share
    ``concurrency`` threads, so the orchestrator records progress while a diffusion task runs.
    """
    if not settings.embedded:
        raise ValueError("embedded_worker needs the in-memory broker (unset ATELIER_BROKER_URL)")
    app = worker_app(settings, ALL_QUEUES)
    common: dict[str, Any] = {"pool": "threads", "perform_ping_check": False, "loglevel": "WARNING",
                              "shutdown_timeout": 60.0}
    cpu_queues = [q for q in ALL_QUEUES if q not in GPU_QUEUES]
    with start_worker(app, concurrency=concurrency, queues=cpu_queues, hostname="cpu@embedded", **common), \
            start_worker(app, concurrency=1, queues=list(GPU_QUEUES), hostname="gpu@embedded", **common):
        rec = start_reconciler(app)
        hooks = start_webhook_dispatcher(app)
        try:
            yield app
        finally:
            rec.stop()
            hooks.stop()
