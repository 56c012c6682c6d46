"""The orchestrator's logic: start jobs, queue ready stages, record results, retry, finish.

The database row is the truth about where a job stands. Every transition is a conditional UPDATE
(``... WHERE status = 'pending'``), so two orchestrator processes handling the same job never queue a
stage twice; messages are sent only after the transaction that justifies them commits.

Partial success: where the graph contains an item's failure (``Graph.contains_failure``: a campaign size), the
failed item's later stages are canceled ("not run"), a ``job.warning`` names it, the partial fan-in
(``deliver``) runs on the items that succeeded with the failures in its task, and the job ends ``succeeded``
with them listed (its ``job.succeeded`` event and its view's ``failures``). Only when no item is left does
the job fail.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atelier_contracts.keys import in_job, job_prefix
from atelier_contracts.stage_io import Skipped
from atelier_contracts.tasks import ItemFailure, StageProgress, StageResult, StageStarted, StageTask, stage_task_name
from atelier_control.events import emit
from atelier_control.models import TERMINAL, Artifact, Job, Stage, new_id, utcnow
from atelier_runtime.settings import Settings
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from . import gates
from .graphs import GRAPHS, Graph, StageDef
from .jobstate import finish_job, lock_job

log = logging.getLogger(__name__)

Send = Callable[[str, list[Any], float | None], None]


@dataclass
class Outbox:
    """Messages decided inside a transaction, sent after it commits."""

    messages: list[tuple[str, list[Any], float | None]] = field(default_factory=list)

    def add(self, name: str, args: list[Any], countdown: float | None = None) -> None:
        self.messages.append((name, args, countdown))

    def flush(self, send: Send) -> int:
        n = 0
        for name, args, countdown in self.messages:
            send(name, args, countdown)
            n += 1
        self.messages.clear()
        return n


def _aware(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def _stages(session: Session, job_id: str) -> list[Stage]:
    return list(session.scalars(select(Stage).where(Stage.job_id == job_id).order_by(Stage.position, Stage.item)))


def _outputs(rows: list[Stage], graph: Graph) -> dict[str, dict[str, Any]]:
    """Outputs of single-item stages that have succeeded, by stage name (for item functions)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.status == "succeeded" and r.item == "" and r.output is not None:
            out[r.name] = r.output
    return out


def _ensure_rows(session: Session, job: Job, graph: Graph, rows: list[Stage]) -> list[Stage]:
    """Create the pending rows of every stage whose items are known now."""
    have = {r.name for r in rows}
    outputs = _outputs(rows, graph)
    created = False
    for st in graph.stages:
        if st.name in have:
            continue
        items = graph.items(st, job.spec, outputs)
        if items is None:
            continue
        for item in items:
            session.add(Stage(job_id=job.id, name=st.name, item=item, position=graph.position(st.name),
                              queue=st.queue, status="pending"))
        created = True
    if created:
        session.flush()
        return _stages(session, job.id)
    return rows


def _by_name(rows: list[Stage]) -> dict[str, list[Stage]]:
    by_name: dict[str, list[Stage]] = {}
    for r in rows:
        by_name.setdefault(r.name, []).append(r)
    return by_name


def _upstream(graph: Graph, st: StageDef, item: str, by_name: dict[str, list[Stage]]) -> dict[str, Any] | None:
    """The outputs this stage's work item needs, or None while a dependency is not done."""
    upstream: dict[str, Any] = {}
    for dep_name in st.after:
        dep = graph.stage(dep_name)
        dep_rows = by_name.get(dep_name)
        if not dep_rows:
            return None
        if graph.per_item(st, dep):
            match = [r for r in dep_rows if r.item == item]
            if not match or match[0].status != "succeeded":
                return None
            upstream[dep_name] = match[0].output or {}
        elif dep.fan_out is not None:
            if st.partial:  # the items that succeeded, once none is still on its way
                if any(r.status not in TERMINAL for r in dep_rows) or not any(r.status == "succeeded" for r in dep_rows):
                    return None
            elif any(r.status != "succeeded" for r in dep_rows):
                return None
            upstream[dep_name] = {r.item: r.output or {} for r in dep_rows if r.status == "succeeded"}
        else:
            if dep_rows[0].status != "succeeded":
                return None
            upstream[dep_name] = dep_rows[0].output or {}
    return upstream


def item_failures(rows: list[Stage]) -> list[ItemFailure]:
    """The items that failed (their failed rows; the rows they left not run are not repeated)."""
    return [ItemFailure(stage=r.name, item=r.item, error=r.error) for r in rows if r.status == "failed" and r.item]


def _payload(job: Job, row: Stage, upstream: dict[str, Any], rows: list[Stage]) -> dict[str, Any]:
    """The task of ``row``; ``rows``: the job's stage rows (a partial fan-in's task lists the failed items)."""
    partial = GRAPHS[job.kind].stage(row.name).partial
    regeneration, repair = gates.regeneration_and_repair(row)
    return StageTask(job_id=job.id, tenant_id=job.tenant_id, stage_id=row.id, stage=row.name, item=row.item,
                     attempt=row.attempts, kind=job.kind, spec=job.spec, upstream=upstream,  # type: ignore[arg-type]
                     key_prefix=job_prefix(job.tenant_id, job.id), regeneration=regeneration, repair=repair,
                     failures=item_failures(rows) if partial else []).model_dump(mode="json")


def _not_run(graph: Graph, st: StageDef, item: str, by_name: dict[str, list[Stage]]) -> str | None:
    """The failed or canceled row of this item that a per-item stage waits for (it will never run), or None."""
    for dep_name in st.after:
        if not graph.per_item(st, graph.stage(dep_name)):
            continue
        for r in by_name.get(dep_name, []):
            if r.item == item and r.status in ("failed", "canceled"):
                return f"{r.name}[{r.item}]"
    return None


def _nothing_left(graph: Graph, st: StageDef, by_name: dict[str, list[Stage]]) -> bool:
    """A partial fan-in whose items have all ended and none succeeded."""
    deps = [r for d in st.after if graph.stage(d).fan_out is not None for r in by_name.get(d, [])]
    return bool(deps) and all(r.status in TERMINAL for r in deps) and not any(r.status == "succeeded" for r in deps)


def _skip_reason(st: StageDef, job: Job, settings: Settings | None) -> str | None:
    if st.skip_when is None:
        return None
    # callers without settings (tests, tools) get the environment's, as every process builds them
    return st.skip_when(job.spec, settings if settings is not None else Settings())


def _transition(session: Session, row: Stage, expect: str, **values: Any) -> bool:
    """Set ``values`` on ``row`` in the database where its status is still ``expect``; False where it is not.

    One Core UPDATE (the ORM's bulk-update bookkeeping cost more than the statement), and the session's object
    takes the values as its committed state. The job's row is locked, so ``row`` was read current in this
    transaction; the condition on the status is the guard every transition keeps (see the module's doc)."""
    table = Stage.__table__
    res = session.connection().execute(update(table).where(table.c.id == row.id, table.c.status == expect)
                                       .values(**values))
    if res.rowcount != 1:
        return False
    for name, value in values.items():
        set_committed_value(row, name, value)
    return True


def advance(session: Session, job: Job, outbox: Outbox, *, settings: Settings | None = None,
            rows: list[Stage] | None = None) -> int:
    """Queue every stage item whose dependencies are done; finish the job when all are. Returns #queued.

    ``settings`` (the orchestrator's) reach the graphs' ``skip_when``: a stage that cannot do its work here
    (the critic gate with no VLM configured) is skipped without a queue round-trip. ``rows``: the job's stage rows
    as this transaction already loaded them (the session's own objects, so current), else they are read.
    """
    if job.status in TERMINAL:
        return 0
    graph = GRAPHS[job.kind]
    rows = _ensure_rows(session, job, graph, rows if rows is not None else _stages(session, job.id))
    by_name = _by_name(rows)
    queued = skipped = 0
    now = utcnow()
    for row in rows:  # graph order: a row canceled here is seen by the later rows of its item
        if row.status != "pending":
            continue
        st = graph.stage(row.name)
        blocked = _not_run(graph, st, row.item, by_name)
        if blocked is not None:
            # an ORM UPDATE: the session's row takes the new values too (synchronize_session), no SELECT back
            session.execute(update(Stage).where(Stage.id == row.id, Stage.status == "pending")
                            .values(status="canceled", error=f"not run: {blocked} did not succeed", finished_at=now))
            continue
        if st.partial and _nothing_left(graph, st, by_name):
            failures = item_failures(rows)
            finish_job(session, job, "failed", error="no item succeeded: " + "; ".join(
                f"{f.stage}[{f.item}]: {f.error}" for f in failures), failures=failures)
            return queued
    if len(by_name) == len(graph.stages) and all(r.status == "succeeded" or (r.item and r.status in ("failed", "canceled"))
                                                 for r in rows):
        finish_job(session, job, "succeeded", failures=item_failures(rows))
        return 0
    # what this transaction changed on the rows (a gate sending its item back to pending) reaches the database
    # before the conditional UPDATEs below, in one flush; the pass then runs without autoflush (its transitions are
    # Core UPDATEs, its events go in at the commit: nothing is left to flush)
    session.flush()
    with session.no_autoflush:
        for row in rows:
            if row.status != "pending":
                continue
            st = graph.stage(row.name)
            upstream = _upstream(graph, st, row.item, by_name)
            if upstream is None:
                continue
            reason = _skip_reason(st, job, settings)
            if reason is not None:
                if _transition(session, row, "pending", status="succeeded", output=Skipped(skipped=reason).to_json(),
                               queued_at=now, started_at=now, finished_at=now):
                    # later rows in this pass see it done (rows come in graph order)
                    emit(session, tenant_id=job.tenant_id, job_id=job.id, type="stage.completed",
                         data={"stage": row.name, "item": row.item, "skipped": reason, "seconds": 0.0})
                    skipped += 1
                continue
            if not _transition(session, row, "pending", status="queued", attempts=row.attempts + 1, queued_at=now):
                continue
            emit(session, tenant_id=job.tenant_id, job_id=job.id, type="stage.queued",
                 data={"stage": row.name, "item": row.item, "attempt": row.attempts})
            outbox.add(stage_task_name(row.name), [_payload(job, row, upstream, rows)])
            queued += 1
    return queued


def start_job(session: Session, job_id: str, outbox: Outbox, *, settings: Settings | None = None) -> None:
    job = lock_job(session, job_id)
    if job is None:
        log.warning("start_job: no job %s", job_id)
        return
    if job.status == "queued":
        job.status = "running"
        job.started_at = utcnow()
        emit(session, tenant_id=job.tenant_id, job_id=job.id, type="job.started", data={})
    advance(session, job, outbox, settings=settings)


def stage_started(session: Session, msg: StageStarted) -> None:
    row = session.get(Stage, msg.stage_id)
    if row is None or row.status in TERMINAL:
        return
    # the job row first (as every event writer does, see atelier_control.events), then the stage row
    job = lock_job(session, msg.job_id)
    res = session.execute(update(Stage).where(Stage.id == row.id, Stage.status.in_(("queued", "running")))
                          .values(status="running", started_at=msg.started_at, worker=msg.worker))
    if res.rowcount == 1 and job is not None:  # type: ignore[attr-defined]
        emit(session, tenant_id=job.tenant_id, job_id=job.id, type="stage.started",
             data={"stage": row.name, "item": row.item, "attempt": msg.attempt, "worker": msg.worker})


def stage_progress(session: Session, msg: StageProgress) -> None:
    if msg.started is not None:  # the first report of a stage whose started notice was not due yet
        stage_started(session, msg.started)
    row = session.get(Stage, msg.stage_id)
    if row is None or row.status in TERMINAL:
        return
    job = lock_job(session, msg.job_id)
    if job is not None:
        emit(session, tenant_id=job.tenant_id, job_id=job.id, type="stage.progress",
             data={"stage": row.name, "item": row.item, "step": msg.step, "total": msg.total})


def _record_artifacts(session: Session, job: Job, row: Stage, result: StageResult) -> None:
    for rec in result.artifacts:
        if not in_job(rec.key, job.tenant_id, job.id):
            raise ValueError(f"stage {row.name} wrote {rec.key} outside its job prefix")
    if not result.artifacts:
        return
    # the rows of these keys already recorded (a redelivered task rewrites the same keys), in one read
    with session.no_autoflush:  # the row changes pending in this transaction are not what this reads
        known = {a.key: a for a in session.scalars(select(Artifact).where(Artifact.key.in_([r.key for r in result.artifacts])))}
    for rec in result.artifacts:
        art = known.get(rec.key)
        if art is None:
            art = Artifact(id=new_id("art"), tenant_id=job.tenant_id, job_id=job.id, stage_id=row.id, kind=rec.kind,
                           name=rec.name, key=rec.key, content_type=rec.content_type, size_bytes=rec.size_bytes,
                           sha256=rec.sha256, width=rec.width, height=rec.height, meta=rec.meta)
            session.add(art)  # inserted at the next flush; its id is set here, for the event
            known[rec.key] = art
            emit(session, tenant_id=job.tenant_id, job_id=job.id, type="artifact.created",
                 data={"artifact_id": art.id, "kind": rec.kind, "name": rec.name, "stage": row.name, "item": row.item})
        else:  # a redelivered task rewrote the same key: update in place, never a second row
            art.sha256, art.size_bytes, art.meta = rec.sha256, rec.size_bytes, rec.meta
            art.width, art.height, art.stage_id = rec.width, rec.height, row.id


def stage_done(session: Session, result: StageResult, outbox: Outbox, *, settings: Settings) -> None:
    """Record a stage's end, then retry it, fail the job, or start what comes next."""
    job = lock_job(session, result.job_id)
    # the job's stage rows in one read: this one, and what advance() walks after it
    rows = _stages(session, job.id) if job is not None else []
    row = next((r for r in rows if r.id == result.stage_id), None)
    if job is None or row is None:
        log.warning("stage_done for unknown job/stage %s/%s", result.job_id, result.stage_id)
        return
    if job.status in TERMINAL or row.status in TERMINAL:
        # duplicate delivery, or the job ended meanwhile; what the worker wrote is still recorded, so no
        # storage key is left without its row (deleting a job's artifacts then finds them all)
        if result.status == "succeeded" and result.artifacts:
            _record_artifacts(session, job, row, result)
        return
    if row.status == "pending" or result.regeneration != gates.regeneration_for(row):
        return  # a result of an attempt a gate has since asked to regenerate: stale
    if row.status == "queued" and result.attempt == row.attempts and result.started_at is not None:
        # the stage ended before its worker's started notice was due (or before the notice was handled): its
        # start is recorded here, before its end, so every stage still has one stage.started event
        row.status, row.started_at, row.worker = "running", result.started_at, result.worker
        emit(session, tenant_id=job.tenant_id, job_id=job.id, type="stage.started",
             data={"stage": row.name, "item": row.item, "attempt": result.attempt, "worker": result.worker})
    if result.status == "succeeded":
        _record_artifacts(session, job, row, result)
        previous = gates.history(row)  # a gate row's earlier attempts, before its output is replaced
        row.status = "succeeded"
        row.output = result.output
        row.worker = result.worker
        row.started_at = result.started_at if row.started_at is None or result.attempt == row.attempts else row.started_at
        row.finished_at = result.finished_at
        row.gpu_seconds += result.gpu_seconds
        row.error = None
        job.gpu_seconds += result.gpu_seconds
        started = _aware(row.started_at)
        emit(session, tenant_id=job.tenant_id, job_id=job.id, type="stage.completed",
             data={"stage": row.name, "item": row.item, "attempt": result.attempt,
                   "seconds": round((result.finished_at - started).total_seconds(), 4) if started else None})
        if gates.is_gate(row.name):  # best-of-N: regenerate the checked item, keep the best, or fail (strict)
            gates.gate_done(session, job, row, previous, settings=settings)
        else:  # what a stage could not do and went on without (an asset too small for the mark) is said, not buried
            for warning in (result.output or {}).get("warnings") or []:
                emit(session, tenant_id=job.tenant_id, job_id=job.id, type="job.warning",
                     data={"stage": row.name, "item": row.item, "warning": str(warning)})
        advance(session, job, outbox, settings=settings, rows=rows)
        return
    if result.attempt != row.attempts:
        return  # a stale failure of an attempt that was already superseded
    err = result.error
    message = f"{err.type}: {err.message}" if err else "unknown error"
    if result.status == "canceled":
        row.status, row.finished_at, row.error = "canceled", result.finished_at, message
        return
    if err is not None and err.retryable and row.attempts < settings.stage_max_attempts:
        delay = settings.retry_backoff_s * (2 ** (row.attempts - 1)) * (1 + random.random() * 0.25)
        row.status, row.error, row.worker = "queued", message, result.worker
        row.attempts += 1
        row.queued_at = utcnow()
        session.flush()
        emit(session, tenant_id=job.tenant_id, job_id=job.id, type="stage.retrying",
             data={"stage": row.name, "item": row.item, "attempt": row.attempts, "delay_s": round(delay, 3), "error": message})
        graph = GRAPHS[job.kind]
        rows = _stages(session, job.id)
        upstream = _upstream(graph, graph.stage(row.name), row.item, _by_name(rows)) or {}
        outbox.add(stage_task_name(row.name), [_payload(job, row, upstream, rows)], delay)
        return
    row.status, row.error, row.finished_at, row.worker = "failed", message, result.finished_at, result.worker
    emit(session, tenant_id=job.tenant_id, job_id=job.id, type="stage.failed",
         data={"stage": row.name, "item": row.item, "attempt": result.attempt, "error": message})
    graph = GRAPHS[job.kind]
    if row.item and graph.contains_failure(row.name):  # the other items go on; deliver lists this one
        session.flush()
        emit(session, tenant_id=job.tenant_id, job_id=job.id, type="job.warning",
             data={"stage": row.name, "item": row.item, "failed": True,
                   "warning": f"{row.item} failed at {row.name} ({message}); the other items go on and it is "
                              "listed in the job's failures (retry re-runs only the failed items)"})
        advance(session, job, outbox, settings=settings)
        return
    finish_job(session, job, "failed", error=f"stage {row.name}{'[' + row.item + ']' if row.item else ''} failed: {message}")


def redrive(session: Session, stage_id: str, outbox: Outbox, *, reason: str, not_since: datetime,
            now: datetime | None = None) -> bool:
    """Send a stalled stage again (same attempt number: its work is idempotent).

    The row is read only once its job is locked, so a result recorded since the caller looked is seen.
    ``not_since``: skip the row if it was (re)queued after this time — another reconciler got there first.
    """
    job_id = session.scalar(select(Stage.job_id).where(Stage.id == stage_id))
    job = lock_job(session, job_id) if job_id is not None else None
    if job is None or job.status in TERMINAL:
        return False
    row = session.get(Stage, stage_id, populate_existing=True)
    if row is None:
        return False
    queued_at = _aware(row.queued_at)
    if row.status not in ("queued", "running") or (queued_at is not None and queued_at > not_since):
        return False
    graph = GRAPHS[job.kind]
    rows = _stages(session, job.id)
    upstream = _upstream(graph, graph.stage(row.name), row.item, _by_name(rows))
    if upstream is None:
        return False
    row.redriven += 1
    row.queued_at = now or utcnow()
    emit(session, tenant_id=job.tenant_id, job_id=job.id, type="stage.redriven",
         data={"stage": row.name, "item": row.item, "reason": reason, "attempt": row.attempts})
    outbox.add(stage_task_name(row.name), [_payload(job, row, upstream, rows)])
    return True


def run_in_tx(factory: sessionmaker[Session], send: Send, fn: Callable[[Session, Outbox], Any]) -> Any:
    """Run ``fn`` in one transaction, then send what it decided."""
    outbox = Outbox()
    with factory() as session:
        with session.begin():
            result = fn(session, outbox)
    outbox.flush(send)
    return result
