"""The embedded default: one process runs every queue on an in-memory broker (no Redis needed)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from atelier_contracts.tasks import ALL_QUEUES, GPU_QUEUES
from atelier_orchestrator.background import resend_after_restart, start_background
from atelier_runtime.settings import Settings
from celery import Celery
from celery.contrib.testing.worker import start_worker

from .workers import worker_app


@contextmanager
def embedded_worker(settings: Settings, *, concurrency: int = 2) -> Iterator[Celery]:
    """Run Celery workers for every queue in this process, plus the reconciler and the webhook dispatcher.

    The GPU queues get a pool of their own with one thread, as GPU workers have everywhere (one task at a
    time: two diffusion tasks on one cached pipeline would race on its scheduler); the other queues share
    ``concurrency`` threads, so the orchestrator records progress while a diffusion task runs.

    The in-memory broker starts empty, so whatever an earlier process left queued or running is sent again at
    once rather than after the reconciler's stall timers.
    """
    if not settings.embedded:
        raise ValueError("embedded_worker needs the in-memory broker (unset ATELIER_BROKER_URL)")
    app = worker_app(settings, ALL_QUEUES)
    common: dict[str, Any] = {"pool": "threads", "perform_ping_check": False, "loglevel": "WARNING",
                              "shutdown_timeout": 60.0}
    cpu_queues = [q for q in ALL_QUEUES if q not in GPU_QUEUES]
    with start_worker(app, concurrency=concurrency, queues=cpu_queues, hostname="cpu@embedded", **common), \
            start_worker(app, concurrency=1, queues=list(GPU_QUEUES), hostname="gpu@embedded", **common):
        background = start_background(app)
        resend_after_restart(app)
        try:
            yield app
        finally:
            for service in background:
                service.stop()
