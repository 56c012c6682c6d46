"""The reconciler: re-drives stages whose worker died and jobs whose start message was lost.

A running stage whose heartbeat (and start, and last queueing) is older than ``stall_after_s`` is
sent again; so is a queued stage no worker has touched for ``queued_stall_s``; so is a job still
``queued`` ``start_stall_s`` after submission. Re-sent work is idempotent (deterministic keys,
artifact rows keyed by storage key), and the orchestrator ignores a second result for a finished stage.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from atelier_contracts.tasks import T_START_JOB
from atelier_control.models import Job, Stage
from atelier_runtime.settings import Settings
from atelier_runtime.state import RuntimeState
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from . import engine

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    stages_redriven: int = 0
    jobs_restarted: int = 0


def _ts(dt: datetime | None) -> float:
    if dt is None:
        return 0.0
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


REDRIVE_BACKOFF_MAX_DOUBLINGS = 4


def reconcile_once(factory: sessionmaker[Session], runtime: RuntimeState, send: engine.Send, *, settings: Settings,
                   now: datetime | None = None) -> ReconcileReport:
    """One pass over unfinished work; returns what it re-drove."""
    now = now or datetime.now(UTC)
    report = ReconcileReport()
    with factory() as session:
        rows = list(session.scalars(
            select(Stage).join(Job, Job.id == Stage.job_id)
            .where(Stage.status.in_(("queued", "running")), Job.status == "running")
        ))
        stale_jobs = list(session.scalars(
            select(Job.id).where(Job.status == "queued", Job.created_at < now - timedelta(seconds=settings.start_stall_s))
        ))
    for row in rows:
        beat = runtime.last_heartbeat(row.id) or 0.0
        last = max(beat, _ts(row.started_at), _ts(row.queued_at))
        limit = settings.stall_after_s if row.status == "running" else settings.queued_stall_s
        if beat and row.status == "queued":
            limit = settings.stall_after_s  # a worker took it, then went silent
        # each re-drive of the same row waits twice as long (up to 16x): a copy already sent is most often just
        # waiting behind a busy worker's queue, and sending more copies only adds no-op deliveries
        limit *= 2 ** min(row.redriven, REDRIVE_BACKOFF_MAX_DOUBLINGS)
        if now.timestamp() - last <= limit:
            continue
        cutoff = now - timedelta(seconds=limit)
        reason = f"no heartbeat for {now.timestamp() - last:.1f}s while {row.status}"
        # by id: the row read above is a snapshot, and the stage may have finished since (merging the snapshot
        # into the new session would write its stale status back over the result)
        def _redrive(s: Session, o: engine.Outbox, sid: str = row.id, why: str = reason,
                     cut: datetime = cutoff) -> bool:
            return engine.redrive(s, sid, o, reason=why, not_since=cut, now=now)

        if engine.run_in_tx(factory, send, _redrive):
            report.stages_redriven += 1
            log.warning("re-drove stage %s[%s] of job %s: %s", row.name, row.item, row.job_id, reason)
    for job_id in stale_jobs:
        send(T_START_JOB, [job_id], None)
        report.jobs_restarted += 1
    return report


def resend_unfinished(factory: sessionmaker[Session], send: engine.Send, *, now: datetime | None = None
                      ) -> ReconcileReport:
    """Send every queued or running stage again, and start every job still queued — at once.

    For a process whose broker starts empty by construction (the embedded mode's in-memory transport): whatever
    the database says is queued or running was lost with the previous process, so waiting for the stall timers
    (``queued_stall_s``, ``stall_after_s``) would only leave jobs idle. Services mode keeps its broker's messages
    across restarts and leaves this to the reconciler's timers.
    """
    now = now or datetime.now(UTC)
    report = ReconcileReport()
    with factory() as session:
        stage_ids = list(session.scalars(
            select(Stage.id).join(Job, Job.id == Stage.job_id)
            .where(Stage.status.in_(("queued", "running")), Job.status == "running")))
        queued_jobs = list(session.scalars(select(Job.id).where(Job.status == "queued")))
    for sid in stage_ids:
        def _redrive(s: Session, o: engine.Outbox, stage_id: str = sid) -> bool:
            return engine.redrive(s, stage_id, o, reason="the process restarted with an empty broker", not_since=now,
                                  now=now)

        if engine.run_in_tx(factory, send, _redrive):
            report.stages_redriven += 1
    for job_id in queued_jobs:
        send(T_START_JOB, [job_id], None)
        report.jobs_restarted += 1
    if report.stages_redriven or report.jobs_restarted:
        log.warning("re-sent %d unfinished stage(s) and started %d queued job(s) after a restart",
                    report.stages_redriven, report.jobs_restarted)
    return report


class Reconciler(threading.Thread):
    """Runs :func:`reconcile_once` every ``reconcile_interval_s`` until stopped."""

    def __init__(self, factory: sessionmaker[Session], runtime: RuntimeState, send: engine.Send, *, settings: Settings) -> None:
        super().__init__(daemon=True, name="atelier-reconciler")
        self.factory, self.runtime, self.send, self.settings = factory, runtime, send, settings
        self.stop_event = threading.Event()
        self.total = ReconcileReport()

    def run(self) -> None:
        while not self.stop_event.wait(self.settings.reconcile_interval_s):
            try:
                rep = reconcile_once(self.factory, self.runtime, self.send, settings=self.settings)
                self.total.stages_redriven += rep.stages_redriven
                self.total.jobs_restarted += rep.jobs_restarted
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("reconcile pass failed")

    def stop(self) -> None:
        self.stop_event.set()
