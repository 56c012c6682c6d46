"""The System page: queue depths, workers online, GPU-seconds and images per hour, recent failures.

Queue depths and workers describe the whole deployment (no tenant data: other tenants' job ids are
never shown); the hourly figures and failures are the viewer's tenant's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from atelier_contracts.tasks import ALL_QUEUES
from atelier_control.models import Artifact, Event, Job, Stage
from atelier_runtime.settings import Settings
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..views import as_utc

log = logging.getLogger(__name__)

# kombu's Redis transport keeps each queue in a list named after it, with one more list per priority step
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
FAILURE_EVENTS = ("stage.failed", "stage.retrying", "job.failed")


@dataclass(frozen=True)
class QueueDepth:
    name: str
    ready: int | None


@dataclass
class Queues:
    mode: str  # embedded | redis | unknown | unreachable
    depths: list[QueueDepth] = field(default_factory=list)
    unacked: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class RunningTask:
    stage: str
    job_id: str | None  # only when the job is the viewer's


@dataclass
class Worker:
    name: str
    queues: list[str]
    active: list[RunningTask] = field(default_factory=list)


@dataclass
class Workers:
    mode: str  # embedded | inspected | unreachable
    items: list[Worker] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Hour:
    start: datetime
    gpu_seconds: float
    images: int


@dataclass(frozen=True)
class Failure:
    at: datetime
    job_id: str
    type: str
    stage: str
    message: str


def queue_depths(settings: Settings, *, client: Any = None) -> Queues:
    """Ready messages per queue (LLEN over the queue's priority lists) and unacked deliveries."""
    if settings.embedded:
        return Queues(mode="embedded")
    url = settings.broker_url or ""
    if not url.startswith(("redis://", "rediss://")) and client is None:
        return Queues(mode="unknown", error=f"queue depths are read from Redis; the broker is {url.split(':')[0]}")
    try:
        if client is None:
            client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        pipe = client.pipeline(transaction=False)
        for q in ALL_QUEUES:
            pipe.llen(q)
            for p in PRIORITY_STEPS:
                pipe.llen(f"{q}{PRIORITY_SEP}{p}")
        pipe.hlen("unacked")
        counts = pipe.execute()
    except Exception as exc:  # noqa: BLE001 - an unreachable broker is something to show, not to crash on
        return Queues(mode="unreachable", error=f"{type(exc).__name__}: {exc}")
    per = 1 + len(PRIORITY_STEPS)
    depths = [QueueDepth(q, int(sum(counts[i * per:(i + 1) * per]))) for i, q in enumerate(ALL_QUEUES)]
    return Queues(mode="redis", depths=depths, unacked=int(counts[-1]))


def workers_online(settings: Settings, celery: Celery, *, own_job: Callable[[str], bool],
                   timeout_s: float = 1.0) -> Workers:
    """Workers that answer a broadcast within ``timeout_s``: their queues and the stages they run now."""
    if settings.embedded:
        return Workers(mode="embedded", items=[Worker(name="embedded (this process)", queues=list(ALL_QUEUES))])
    try:
        inspect = celery.control.inspect(timeout=timeout_s)
        with ThreadPoolExecutor(2) as pool:
            queues_f = pool.submit(inspect.active_queues)
            active_f = pool.submit(inspect.active)
            queues, active = queues_f.result() or {}, active_f.result() or {}
    except Exception as exc:  # noqa: BLE001
        return Workers(mode="unreachable", error=f"{type(exc).__name__}: {exc}")
    items = []
    for name in sorted(set(queues) | set(active)):
        running = []
        for task in active.get(name) or []:
            stage, job_id = _describe(task)
            running.append(RunningTask(stage=stage, job_id=job_id if job_id and own_job(job_id) else None))
        items.append(Worker(name=name, queues=sorted(q.get("name", "?") for q in queues.get(name) or []),
                            active=running))
    return Workers(mode="inspected", items=items)


def _describe(task: dict[str, Any]) -> tuple[str, str | None]:
    name = str(task.get("name") or task.get("type") or "?")
    stage = name.removeprefix("atelier.stage.").removeprefix("atelier.")
    args = task.get("args")
    job_id = None
    if isinstance(args, list | tuple) and args:
        first = args[0]
        if isinstance(first, dict):
            stage = f"{first.get('stage', stage)}" + (f"[{first['item']}]" if first.get("item") else "")
            job_id = first.get("job_id")
        elif isinstance(first, str):
            job_id = first
    return stage, job_id if isinstance(job_id, str) else None


def hourly(session: Session, *, tenant_id: str, now: datetime, hours: int = 24) -> list[Hour]:
    """GPU-seconds (stage rows by finish time) and delivered images (asset artifacts) per hour."""
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    gpu = [0.0] * hours
    images = [0] * hours
    rows = session.execute(
        select(Stage.finished_at, Stage.gpu_seconds).join(Job, Job.id == Stage.job_id)
        .where(Job.tenant_id == tenant_id, Stage.finished_at >= start, Stage.gpu_seconds > 0))
    for finished, seconds in rows:
        i = _bucket(finished, start, hours)
        if i is not None:
            gpu[i] += float(seconds or 0.0)
    for (created,) in session.execute(select(Artifact.created_at).where(
            Artifact.tenant_id == tenant_id, Artifact.kind == "asset", Artifact.created_at >= start)):
        i = _bucket(created, start, hours)
        if i is not None:
            images[i] += 1
    return [Hour(start + timedelta(hours=i), round(gpu[i], 3), images[i]) for i in range(hours)]


def _bucket(t: datetime | None, start: datetime, hours: int) -> int | None:
    t = as_utc(t)
    if t is None:
        return None
    i = int((t - start).total_seconds() // 3600)
    return i if 0 <= i < hours else None


def recent_failures(session: Session, *, tenant_id: str, limit: int = 15) -> list[Failure]:
    """The tenant's latest stage failures, automatic retries and failed jobs, newest first."""
    rows = session.scalars(select(Event).where(Event.tenant_id == tenant_id, Event.type.in_(FAILURE_EVENTS))
                           .order_by(Event.id.desc()).limit(limit))
    out = []
    for e in rows:
        data = e.data or {}
        stage = str(data.get("stage") or "")
        if data.get("item"):
            stage += f"[{data['item']}]"
        at = as_utc(e.created_at)
        assert at is not None
        out.append(Failure(at=at, job_id=e.job_id or "", type=e.type, stage=stage,
                           message=str(data.get("error") or "")[:500]))
    return out
