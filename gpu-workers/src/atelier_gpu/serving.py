"""Serving diffusion stages: compatible requests batched into one pipeline call, drained across Celery tasks.

**The problem.** Celery hands a GPU worker one task at a time (concurrency 1, prefetch 1, late acks),
but a campaign fans out size × variant backgrounds that differ only by seed, and one pipeline call
for four images costs far less than four calls. Batching has to cross task boundaries.

**The choice: the worker drains the queue.** When a diffusion stage task starts, the worker takes up
to ``gpu_max_batch - 1`` more messages from the same broker queue (``basic_get`` with acks pending,
on its own connection), turns every diffusion stage task among them into a request, groups the
requests by compatibility (same model, recipe, size, steps, guidance and conditioning — only seeds,
and for text-to-image prompts, may differ), and runs each group as one pipeline call with one seed
per image. Each drained task then goes through the usual stage protocol itself: ``stage_started`` when
taken, heartbeats while it waits or runs, progress every step, its own ``StageResult`` (artifacts,
output, its share of the GPU-seconds) and only then the broker ack — so a worker killed mid-batch
leaves every drained message unacked and the broker redelivers it (visibility timeout), exactly as
for the task Celery gave it. A message that is not a batchable diffusion stage task (a scene, whose
layout and identity conditioning make it its own call) is put back at the head of the queue untouched
and draining stops there.

Why not the alternative (the orchestrator sending one batch task per fan-out): that needs a new task
contract and orchestrator changes, batches only items of one job that became ready together, and
puts the compatibility rule (a GPU concern) in the orchestrator. Draining is local to the GPU worker,
batches across jobs too, and costs nothing when the queue is empty (one ``basic_get``).

Its costs, stated: a drained message is invisible to ``celery inspect``; with several GPU workers a
worker holds at most ``gpu_max_batch`` tasks, so others still get work; the message given back keeps
its place at the head, so the queue order is kept. Cancelling one job stops the shared
call at the next step; the other requests of the group run again without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atelier_contracts.catalogue import STAGE_QUEUES
from atelier_contracts.errors import JobCanceled, StageError
from atelier_contracts.tasks import (
    T_STAGE_DONE,
    T_STAGE_STARTED,
    StageError_,
    StageResult,
    StageStarted,
    StageTask,
    stage_task_name,
)
from atelier_runtime.stage_runner import StageContext, output_json

from . import recipes_dispatch

log = logging.getLogger(__name__)

RECIPES = ("text_to_image", "regional", "layout", "control", "inpaint", "repair")


@dataclass
class GenRequest:
    """One image to generate for one stage task.

    ``params`` holds the recipe's JSON inputs (plans, boxes, storage keys): together with the model,
    recipe, size, steps, guidance and prompts they decide which requests may share a pipeline call.
    ``finish(ctx, image, info)`` stores the image and returns the stage's output.
    """

    ctx: StageContext
    recipe: str
    model: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    prompt: str
    negative_prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    timesteps: tuple[int, ...] | None = None
    eta: float | None = None
    finish: Callable[[StageContext, Any, dict[str, Any]], dict[str, Any]] | None = None

    def batch_key(self) -> str:
        """Requests with the same key run in one pipeline call (text-to-image may mix prompts)."""
        return json.dumps([self.model, self.recipe, self.width, self.height, self.steps, self.guidance,
                           self.timesteps, self.eta, self.negative_prompt, self.params,
                           None if self.recipe == "text_to_image" else self.prompt], sort_keys=True, default=str)


class GroupCanceled(Exception):
    """Raised from the step callback when some requests' jobs were cancelled."""

    def __init__(self, canceled: list[GenRequest]) -> None:
        super().__init__(f"{len(canceled)} request(s) canceled")
        self.canceled = canceled


@dataclass
class Outcome:
    image: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None


# ---------------------------------------------------------------- running groups

def _group_progress(requests: list[GenRequest]) -> Callable[[int, int], None]:
    def on_step(step: int, total: int) -> None:
        canceled = []
        for r in requests:
            try:
                r.ctx.progress(step, total)  # heartbeat + cancel check + progress event
            except JobCanceled:
                canceled.append(r)
        if canceled:
            raise GroupCanceled(canceled)

    return on_step


def run_group(registry: Any, requests: list[GenRequest]) -> list[tuple[Any, dict[str, Any]]]:
    """One pipeline call for compatible ``requests``; returns (image, extra info) per request."""
    first = requests[0]
    spec = registry.spec(first.model)
    lock = getattr(registry, "call_lock", None) or contextlib.nullcontext()
    with lock:
        pipe = registry.load(first.model)
        started = time.perf_counter()
        try:
            return recipes_dispatch.run(registry, spec, pipe, requests, on_step=_group_progress(requests))
        finally:
            share = (time.perf_counter() - started) / len(requests)
            for r in requests:
                r.ctx.gpu_seconds += share  # each request pays its share of the call


def execute(registry: Any, requests: list[GenRequest], *, max_batch: int) -> dict[int, Outcome]:
    """Run every request, compatible ones together in calls of up to ``max_batch``; outcome by ``id(request)``."""
    groups: dict[str, list[GenRequest]] = {}
    for r in requests:
        groups.setdefault(r.batch_key(), []).append(r)
    outcomes: dict[int, Outcome] = {}
    for group in groups.values():
        for i in range(0, len(group), max_batch):
            pending = group[i: i + max_batch]
            while pending:
                try:
                    results = run_group(registry, pending)
                except GroupCanceled as exc:
                    for r in exc.canceled:
                        outcomes[id(r)] = Outcome(error=JobCanceled(f"job {r.ctx.task.job_id} was canceled"))
                    pending = [r for r in pending if id(r) not in outcomes]
                    continue  # the others run again without the cancelled ones
                except Exception as exc:  # noqa: BLE001 - reported per request
                    for r in pending:
                        outcomes[id(r)] = Outcome(error=exc)
                    break
                for r, (image, info) in zip(pending, results, strict=True):
                    outcomes[id(r)] = Outcome(image=image, info={**info, "batch_size": len(pending)})
                break
    return outcomes


def finish(request: GenRequest, outcome: Outcome) -> dict[str, Any]:
    """The stage output of one request, checked against its stage's output model (raises its error)."""
    if outcome.error is not None:
        raise outcome.error
    if request.finish is None:
        return {}
    return output_json(request.ctx.task.stage, request.finish(request.ctx, outcome.image, outcome.info))


# ---------------------------------------------------------------- draining the broker queue

@dataclass
class Drained:
    """A stage task taken from the broker by the worker that runs the batch."""

    message: Any
    ctx: StageContext
    started: datetime
    request: GenRequest | None = None
    error: BaseException | None = None

    def report(self, output: dict[str, Any] | None, error: BaseException | None) -> None:
        """Send this task's StageResult, then ack its message (late ack, as for Celery's own tasks)."""
        status = "succeeded"
        err: StageError_ | None = None
        if isinstance(error, JobCanceled):
            status, err = "canceled", StageError_(type="JobCanceled", message=str(error), retryable=False)
        elif isinstance(error, StageError):
            status, err = "failed", StageError_(type=type(error).__name__, message=str(error),
                                                retryable=error.retryable)
        elif error is not None:
            status, err = "failed", StageError_(type=type(error).__name__, message=str(error) or repr(error),
                                                retryable=True)
        task = self.ctx.task
        result = StageResult(job_id=task.job_id, stage_id=task.stage_id, attempt=task.attempt, status=status,
                             output=(output or {}) if status == "succeeded" else {},
                             artifacts=self.ctx.artifacts if status == "succeeded" else [], error=err,
                             worker=self.ctx.res.name, started_at=self.started, finished_at=datetime.now(UTC),
                             gpu_seconds=self.ctx.gpu_seconds, regeneration=task.regeneration)
        self.ctx.app.send_task(T_STAGE_DONE, args=[result.model_dump(mode="json")])
        self.message.ack()


def _decode(message: Any) -> tuple[str | None, Any]:
    """(task name, first positional argument) of a Celery message, protocol 2 or 1."""
    body = message.decode()
    name = (message.headers or {}).get("task")
    if name is None and isinstance(body, dict):  # protocol 1
        return body.get("task"), (body.get("args") or [None])[0]
    args = body[0] if isinstance(body, list | tuple) and body else []
    return name, (args[0] if args else None)


class _Beats(threading.Thread):
    """Heartbeats for the drained tasks while they wait for and run in the batch."""

    def __init__(self, items: list[Drained], interval: float) -> None:
        super().__init__(daemon=True, name="drained-heartbeats")
        self.items, self.interval = items, interval
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            for d in self.items:
                try:
                    d.ctx.res.runtime.heartbeat(d.ctx.task.stage_id)
                except Exception:  # noqa: BLE001 - a missed beat only risks an early re-drive
                    log.warning("heartbeat failed for %s", d.ctx.task.stage_id, exc_info=True)


def drain_enabled(ctx: StageContext) -> bool:
    s = ctx.settings
    return bool(getattr(s, "gpu_drain", False)) and getattr(s, "gpu_max_batch", 1) > 1 \
        and hasattr(ctx.app, "connection_for_read")


def give_back(channel: Any, message: Any) -> None:
    """Return a taken message to the **head** of its queue (Redis' own requeue would append it at the tail)."""
    restore = getattr(getattr(channel, "qos", None), "restore_by_tag", None)
    if callable(restore):
        restore(message.delivery_tag, leftmost=False)  # kombu Redis: rpush = next to be popped
        message.ack()  # drops the local delivery record; the unacked entry is already gone
    else:
        message.reject(requeue=True)  # virtual transports restore at the beginning


def take(ctx: StageContext, conn: Any, n: int, preparers: dict[str, Callable[[StageContext], GenRequest]]
         ) -> list[Drained]:
    """Take up to ``n`` batchable stage tasks from the head of the queue; start each (started event, request).

    Stops at the first message that is not a batchable diffusion stage task and leaves it at the head.
    """
    queue = STAGE_QUEUES[ctx.task.stage]
    by_name = {stage_task_name(stage): stage for stage in preparers}
    channel = conn.default_channel
    out: list[Drained] = []
    for _ in range(n):
        message = channel.basic_get(queue, no_ack=False)
        if message is None:
            break
        try:
            name, payload = _decode(message)
        except Exception:  # noqa: BLE001 - not ours to judge: give it back
            name, payload = None, None
        if name not in by_name or not isinstance(payload, dict):
            give_back(channel, message)  # not a batchable diffusion task: back at the head, for Celery
            break
        try:
            task = StageTask.model_validate(payload)
        except Exception as exc:  # noqa: BLE001 - a malformed payload fails like Celery's own task would
            log.error("drained an invalid %s payload: %s", name, exc)
            message.ack()
            continue
        d = Drained(message, StageContext(task, ctx.res, ctx.app), datetime.now(UTC))
        try:
            ctx.res.runtime.heartbeat(task.stage_id)
            d.ctx.check_canceled()
            ctx.app.send_task(T_STAGE_STARTED, args=[StageStarted(
                job_id=task.job_id, stage_id=task.stage_id, attempt=task.attempt, worker=ctx.res.name,
                started_at=d.started).model_dump(mode="json")])
            d.request = preparers[by_name[name]](d.ctx)
        except Exception as exc:  # noqa: BLE001 - reported as this task's result
            d.error = exc
        out.append(d)
    return out


Preparer = Callable[[StageContext], GenRequest]
# stage → how to turn one of its tasks into a GenRequest: the stages whose queued tasks a diffusion worker may
# drain and batch (each registers itself with ``batchable``; a task of any other stage stays in the queue)
BATCHABLE: dict[str, Preparer] = {}


def batchable(stage: str) -> Callable[[Preparer], Preparer]:
    """Register ``prepare`` as the way to turn a task of ``stage`` into a request that may join a batch."""

    def register(prepare: Preparer) -> Preparer:
        BATCHABLE[stage] = prepare
        return prepare

    return register


def serve(ctx: StageContext, *, registry: Any) -> dict[str, Any]:
    """Run one diffusion stage task, batched with compatible tasks drained from its queue."""
    preparers = dict(BATCHABLE)
    lead = preparers[ctx.task.stage](ctx)
    max_batch = max(1, int(getattr(ctx.settings, "gpu_max_batch", 1)))
    if not drain_enabled(ctx):
        outcomes = execute(registry, [lead], max_batch=max_batch)
        return finish(lead, outcomes[id(lead)])
    with ctx.app.connection_for_read() as conn:
        drained = take(ctx, conn, max_batch - 1, preparers)
        beats = _Beats(drained, ctx.settings.heartbeat_interval_s)
        beats.start()
        try:
            requests = [lead] + [d.request for d in drained if d.request is not None]
            outcomes = execute(registry, requests, max_batch=max_batch)
            for d in drained:
                if d.request is None:
                    d.report(None, d.error)
                    continue
                try:
                    d.report(finish(d.request, outcomes[id(d.request)]), None)
                except Exception as exc:  # noqa: BLE001 - reported as this task's result
                    d.report(None, exc)
        except BaseException:
            # the lead failed outside the batch: give drained, unreported messages back for redelivery
            for d in drained:
                if not d.message.acknowledged:
                    d.message.reject(requeue=True)
            raise
        finally:
            beats.stop_event.set()
    return finish(lead, outcomes[id(lead)])
