"""What the orchestrator's process tells Prometheus at scrape time: jobs and unfinished stages by state (from the
database), and the depth of every broker queue (from Redis). Registered once per process beside the reconciler;
served with the rest of the default registry on ``ATELIER_METRICS_PORT`` (:mod:`atelier_runtime.observability`).

A scrape costs two GROUP BY queries (jobs by status; stage rows in pending, queued or running — the finished ones,
the bulk of the table, are not counted) and one LLEN per queue. A failing source is skipped for that scrape and
counted in ``atelier_metrics_source_errors``; it never fails the scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis
from atelier_contracts.tasks import ALL_QUEUES
from atelier_control.models import JOB_STATUSES, Job, Stage
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
UNFINISHED = ("pending", "queued", "running")
SOURCE_ERRORS = Counter("atelier_metrics_source_errors", "Scrapes where a source (database, broker) could not be "
                        "read, by source.", ["source"])


class StateCollector(Collector):
    """``atelier_jobs{state}``, ``atelier_stages{state}`` (unfinished states) and ``atelier_queue_depth{queue}``."""

    def __init__(self, factory: sessionmaker[Session], queue_length: Callable[[str], int] | None,
                 queues: Sequence[str] = ALL_QUEUES) -> None:
        self.factory, self.queue_length, self.queues = factory, queue_length, tuple(queues)

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("atelier_jobs", "Jobs by state, now.", labels=["state"])
        stages = GaugeMetricFamily("atelier_stages", "Stage rows waiting or running, by state, now.",
                                   labels=["state"])
        try:
            with self.factory() as session:
                by_job = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
                by_stage = dict(session.execute(select(Stage.status, func.count()).where(Stage.status.in_(UNFINISHED))
                                                .group_by(Stage.status)).all())
            for state in JOB_STATUSES:
                jobs.add_metric([state], float(by_job.get(state, 0)))
            for state in UNFINISHED:
                stages.add_metric([state], float(by_stage.get(state, 0)))
            yield jobs
            yield stages
        except Exception:  # noqa: BLE001 - a scrape never fails for a source that is down
            SOURCE_ERRORS.labels("database").inc()
            log.warning("metrics: could not count jobs and stages", exc_info=True)
        if self.queue_length is None:
            return
        depth = GaugeMetricFamily("atelier_queue_depth", "Tasks waiting in each broker queue, now.", labels=["queue"])
        try:
            for q in self.queues:
                depth.add_metric([q], float(self.queue_length(q)))
            yield depth
        except Exception:  # noqa: BLE001
            SOURCE_ERRORS.labels("broker").inc()
            log.warning("metrics: could not read the queue depths", exc_info=True)


def redis_queue_length(broker_url: str) -> Callable[[str], int] | None:
    """LLEN of a queue's list on a Redis broker (Celery's Redis transport keeps each queue as a list of that name);
    None for another broker (no depth is reported)."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    return lambda queue: int(client.llen(queue))


def register_state_collector(factory: sessionmaker[Session], broker_url: str | None,
                             registry: CollectorRegistry = REGISTRY) -> StateCollector:
    collector = StateCollector(factory, redis_queue_length(broker_url) if broker_url else None)
    registry.register(collector)
    return collector
