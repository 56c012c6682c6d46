"""The embedded default: one process runs every queue on an in-memory broker (no Redis needed)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from atelier_shared.celeryapp import ROLE_MODULES, make_celery
from atelier_shared.settings import Settings
from atelier_shared.tasks import ALL_QUEUES
from celery import Celery
from celery.contrib.testing.worker import start_worker

from .reconciler import Reconciler
from .tasks import orchestrator

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


@contextmanager
def embedded_worker(settings: Settings, *, concurrency: int = 2) -> Iterator[Celery]:
    """Run a Celery worker for every queue in this process (thread pool) plus the reconciler."""
    if not settings.embedded:
        raise ValueError("embedded_worker needs the in-memory broker (unset ATELIER_BROKER_URL)")
    app = worker_app(settings, ALL_QUEUES)
    with start_worker(app, pool="threads", concurrency=concurrency, perform_ping_check=False, loglevel="WARNING",
                      shutdown_timeout=60.0):
        rec = start_reconciler(app)
        try:
            yield app
        finally:
            rec.stop()
