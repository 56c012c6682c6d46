"""Worker side of a stage: parse the payload, heartbeat, run the work, report the result.

Every stage handler is registered with :func:`stage_task` under its name in the stage catalogue
(``atelier_contracts.catalogue``). The handler gets a :class:`StageContext`, reads its upstream outputs
with ``ctx.inputs(<its inputs model>)`` and returns its output model; the runner checks both against the
catalogue. Workers never touch the database: they read inputs from the payload and storage, write
artifacts to storage, and send the orchestrator a ``StageResult``. The same inputs always write the same
keys, so a redelivered task overwrites.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from atelier_contracts.catalogue import stage as stage_decl
from atelier_contracts.errors import JobCanceled, NotFound, StageError
from atelier_contracts.keys import stage_key
from atelier_contracts.stage_io import StageInputs, StageOutput, read_inputs, read_output
from atelier_contracts.tasks import (
    T_STAGE_DONE,
    T_STAGE_PROGRESS,
    T_STAGE_STARTED,
    ArtifactRecord,
    StageError_,
    StageProgress,
    StageResult,
    StageStarted,
    StageTask,
    stage_task_name,
)
from celery import Celery, Task, shared_task
from PIL import Image

from .observability import log_context, record_stage_run
from .settings import Settings
from .state import RuntimeState, make_runtime
from .storage import ArtifactStore, make_store

log = logging.getLogger(__name__)

I = TypeVar("I", bound=StageInputs)  # noqa: E741
T = TypeVar("T")
Handler = Callable[["StageContext"], StageOutput | dict[str, Any]]


class WorkerResources:
    """Per-process clients (store, runtime state), built once on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: ArtifactStore | None = None
        self._runtime: RuntimeState | None = None
        self.name = settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self.extras: dict[str, Any] = {}
        self.lock = threading.Lock()

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = make_store(self.settings)
        return self._store

    @property
    def runtime(self) -> RuntimeState:
        if self._runtime is None:
            self._runtime = make_runtime(self.settings)
        return self._runtime


def resources(app: Celery) -> WorkerResources:
    res = getattr(app, "atelier_resources", None)
    if res is None:
        settings = getattr(app, "atelier_settings", None) or Settings()
        res = WorkerResources(settings)
        app.atelier_resources = res  # type: ignore[attr-defined]
    return res


class StageContext:
    """What a stage function may use: its task, settings, storage, progress and cancel checks."""

    def __init__(self, task: StageTask, res: WorkerResources, app: Celery) -> None:
        self.task = task
        self.res = res
        self.app = app
        self.settings = res.settings
        self.store = res.store
        self.artifacts: list[ArtifactRecord] = []
        self.gpu_seconds = 0.0
        self._last_progress = 0.0
        self._begun = time.monotonic()  # progress is reported once the stage has run started_notice_after_s
        self.notice: _StartedNotice | None = None  # the run's started notice (run_stage sets it)

    def inputs(self, model: type[I]) -> I:
        """This task's upstream outputs as its stage's inputs model (the catalogue's).

        Raises a non-retryable StageError naming the upstream field that is missing or invalid.
        """
        declared = stage_decl(self.task.stage).inputs
        if model is not declared:
            raise TypeError(f"{self.task.stage} reads {declared.__name__}, not {model.__name__}")
        return read_inputs(model, self.task.upstream, stage=self.task.stage, item=self.task.item)

    def key(self, name: str, ext: str) -> str:
        return stage_key(self.task.key_prefix, self.task.stage, name, ext)

    def parsed_item(self, parse: Callable[[str], T]) -> T:
        """This task's item read by ``parse`` (one of ``atelier_contracts.items``' parsers); a malformed item fails
        the stage, not retried, naming the form it should have."""
        try:
            return parse(self.task.item)
        except ValueError as exc:
            raise StageError(f"{self.task.stage}: {exc}", retryable=False, field="item") from exc

    def put(self, *, name: str, data: bytes, ext: str, content_type: str, kind: str,
            width: int | None = None, height: int | None = None, meta: dict[str, Any] | None = None) -> ArtifactRecord:
        """Write one artifact under this stage's deterministic key and remember it for the result."""
        obj = self.store.put(self.key(name, ext), data, content_type)
        rec = ArtifactRecord(key=obj.key, kind=kind, name=name, content_type=content_type, size_bytes=obj.size_bytes,
                             sha256=obj.sha256, width=width, height=height, meta=meta or {})
        self.artifacts = [a for a in self.artifacts if a.key != rec.key] + [rec]
        return rec

    def get(self, key: str) -> bytes:
        return self.store.get(key)

    def get_image(self, key: str, what: str, *, max_pixels: int | None = None) -> Image.Image:
        """An image from storage (fully decoded), or a non-retryable StageError naming ``what`` and the key:
        an object that is gone, unreadable or over ``max_pixels`` stays so, and retrying cannot help."""
        try:
            image = Image.open(io.BytesIO(self.get(key)))
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise StageError(f"{self.task.stage}: {what} {key} is larger than {max_pixels} pixels",
                                 retryable=False)
            image.load()
        except NotFound as exc:
            raise StageError(f"{self.task.stage}: {what} {key} is not in storage", retryable=False) from exc
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise StageError(f"{self.task.stage}: {what} {key} is not a readable image: {exc}",
                             retryable=False) from exc
        return image

    def check_canceled(self) -> None:
        if self.res.runtime.is_canceled(self.task.job_id):
            raise JobCanceled(f"job {self.task.job_id} was canceled")

    def progress(self, step: int, total: int) -> None:
        """Per-step callback: heartbeat, stop if canceled, report progress at most twice a second.

        Every report is an orchestrator transaction on the job's row, so only what a watcher can use is sent: from
        the time the stage's started notice is due (``started_notice_after_s``, 1 s; the first report carries the
        start), never the last step (the result follows at once). A stage that ends within that second — most
        SDXL-Turbo images, every watermark — sends its result alone; a FLUX image or a 30-step SDXL one shows its
        steps.
        """
        self.res.runtime.heartbeat(self.task.stage_id)
        self.check_canceled()
        now = time.monotonic()
        if (now - self._last_progress >= 0.5 and step < total
                and now - self._begun >= self.settings.started_notice_after_s):
            self._last_progress = now
            # the first report carries the start if no notice went out yet: started, then progress, one message
            started = self.notice.take() if self.notice is not None else None
            msg = StageProgress(job_id=self.task.job_id, stage_id=self.task.stage_id, step=step, total=total,
                                started=started)
            self.app.send_task(T_STAGE_PROGRESS, args=[msg.model_dump(mode="json")])


class _StartedNotice:
    """``stage_started`` for the orchestrator, sent once the stage has run ``delay_s`` — or never, if it ends first.

    A stage that ends sooner needs no notice: the orchestrator records the start (``started_at``, the worker and the
    ``stage.started`` event) from its result, in the result's own transaction. Every notice is an orchestrator
    transaction that locks the job's row, so the many short stages (planning, rendering, watermarks, gates) save
    one each; a long one still shows as running within ``delay_s``.
    """

    def __init__(self, app: Celery, msg: StageStarted, delay_s: float) -> None:
        self.app, self.msg = app, msg
        self._lock = threading.Lock()
        self._pending = True
        self._timer = threading.Timer(delay_s, self.send) if delay_s > 0 else None
        if self._timer is not None:
            self._timer.daemon = True

    def start(self) -> None:
        if self._timer is None:
            self.send()
        else:
            self._timer.start()

    def send(self) -> None:
        with self._lock:
            if not self._pending:
                return
            self._pending = False
        try:
            self.app.send_task(T_STAGE_STARTED, args=[self.msg.model_dump(mode="json")])
        except Exception:  # noqa: BLE001 - advisory: the result records the start anyway
            log.warning("could not send stage_started for %s", self.msg.stage_id, exc_info=True)

    def take(self) -> StageStarted | None:
        """The notice's message if it has not gone out (it then never will: the caller sends it along)."""
        with self._lock:
            pending, self._pending = self._pending, False
        if self._timer is not None:
            self._timer.cancel()
        return self.msg if pending else None

    def cancel(self) -> None:
        """The stage ended: a notice not sent yet never will be."""
        with self._lock:
            self._pending = False
        if self._timer is not None:
            self._timer.cancel()


class _Heartbeat(threading.Thread):
    """Beats for the reconciler and renews this worker's lease on the stage while it runs."""

    def __init__(self, runtime: RuntimeState, stage_id: str, interval: float, *, owner: str, ttl_s: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{stage_id}")
        self.runtime, self.stage_id, self.interval = runtime, stage_id, interval
        self.owner, self.ttl_s = owner, ttl_s
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.runtime.heartbeat(self.stage_id)
                self.runtime.renew_lease(self.stage_id, self.owner, self.ttl_s)
            except Exception:  # noqa: BLE001 - a missed beat only risks an early re-drive
                log.warning("heartbeat failed for %s", self.stage_id, exc_info=True)


def _claim(app: Celery, res: WorkerResources, task: StageTask, payload: dict[str, Any], owner: str) -> bool:
    """False when this delivery must not run now: the stage already finished, or a worker holds its lease.

    The reconciler and the broker may both re-send a stage whose worker looked dead; the lease (renewed by
    heartbeats, expiring after ``stall_after_s``) and the done mark make such duplicates cheap. A copy that
    finds the lease held is sent again for later rather than dropped: if the holder died, the lease will
    have expired by then and the copy runs; if the holder finished, the done mark turns it into a no-op.
    """
    try:
        if res.runtime.is_done(task.stage_id, task.regeneration, task.attempt):
            log.info("stage %s[%s] already finished: skipping a duplicate delivery", task.stage, task.item)
            return False
        if not res.runtime.acquire_lease(task.stage_id, owner, res.settings.stall_after_s):
            delay = max(1.0, res.settings.stall_after_s / 2)
            log.info("stage %s[%s] is leased by another worker: checking again in %.1fs", task.stage, task.item, delay)
            app.send_task(stage_task_name(task.stage), args=[payload], countdown=delay)
            return False
    except Exception:  # noqa: BLE001 - without the runtime store we run it: duplicates are idempotent
        log.warning("runtime state unreachable; running %s[%s] without a lease", task.stage, task.item, exc_info=True)
    return True


def run_stage(app: Celery, payload: dict[str, Any], fn: Callable[[StageContext], dict[str, Any]]) -> StageResult | None:
    """Run one stage function around the protocol: claim → started → heartbeats → result to the orchestrator.

    Returns None (and sends nothing) for a duplicate delivery that must not run.
    """
    task = StageTask.model_validate(payload)
    with log_context(job_id=task.job_id, stage=task.stage, item=task.item, stage_id=task.stage_id,
                     tenant_id=task.tenant_id):
        return _run_stage(app, task, payload, fn)


def _run_stage(app: Celery, task: StageTask, payload: dict[str, Any],
               fn: Callable[[StageContext], dict[str, Any]]) -> StageResult | None:
    res = resources(app)
    owner = f"{res.name}:{uuid.uuid4().hex[:8]}"
    if not _claim(app, res, task, payload, owner):
        return None
    started = datetime.now(UTC)
    ctx = StageContext(task, res, app)
    error: StageError_ | None = None
    output: dict[str, Any] = {}
    status = "succeeded"
    beat = _Heartbeat(res.runtime, task.stage_id, res.settings.heartbeat_interval_s, owner=owner,
                      ttl_s=res.settings.stall_after_s)
    notice = _StartedNotice(app, StageStarted(job_id=task.job_id, stage_id=task.stage_id, attempt=task.attempt,
                                              worker=res.name, started_at=started),
                            res.settings.started_notice_after_s)
    ctx.notice = notice
    try:
        res.runtime.heartbeat(task.stage_id)
        ctx.check_canceled()
        notice.start()
        beat.start()
        output = fn(ctx)
    except JobCanceled as exc:
        status, error = "canceled", StageError_(type="JobCanceled", message=str(exc), retryable=False)
    except StageError as exc:
        status, error = "failed", StageError_(type=type(exc).__name__, message=str(exc), retryable=exc.retryable)
    except Exception as exc:  # noqa: BLE001 - any other failure is reported and retried by the orchestrator
        log.exception("stage %s %s failed", task.stage, task.item)
        status, error = "failed", StageError_(type=type(exc).__name__, message=str(exc) or repr(exc), retryable=True)
    finally:
        notice.cancel()
        beat.stop_event.set()
    result = StageResult(job_id=task.job_id, stage_id=task.stage_id, attempt=task.attempt, status=status, output=output,
                         artifacts=ctx.artifacts, error=error, worker=res.name, started_at=started,
                         finished_at=datetime.now(UTC), gpu_seconds=ctx.gpu_seconds,
                         regeneration=task.regeneration)
    seconds = (result.finished_at - started).total_seconds()
    record_stage_run(task.stage, status, seconds, ctx.gpu_seconds or 0.0)
    log.info("stage %s in %.2f s (attempt %d)", status, seconds, task.attempt)  # the stage and job: log_context
    try:
        app.send_task(T_STAGE_DONE, args=[result.model_dump(mode="json")])
    finally:
        try:
            res.runtime.release_lease(task.stage_id, owner)
        except Exception:  # noqa: BLE001 - the lease expires by itself
            log.warning("could not release the lease of %s", task.stage_id, exc_info=True)
    return result


def output_json(stage: str, value: StageOutput | dict[str, Any]) -> dict[str, Any]:
    """A handler's return checked against its stage's output model, as the JSON the orchestrator records."""
    return read_output(stage_decl(stage).output, value, stage=stage).to_json()


def stage_task(stage: str) -> Callable[[Handler], Any]:
    """Register ``fn`` as the Celery task of the catalogue's ``stage`` (name ``atelier.stage.<stage>``).

    The task's ``stage_fn(ctx)`` runs the handler and returns its output as checked JSON.
    """
    stage_decl(stage)  # a stage the catalogue does not declare is a bug at import time

    def decorate(fn: Handler) -> Any:
        def stage_fn(ctx: StageContext) -> dict[str, Any]:
            return output_json(stage, fn(ctx))

        # stage_fn lives on the task class, so every app's instance of the task (and the shared_task
        # proxy, whichever app is current) exposes the plain function for direct calls in tests
        base = type(f"Stage[{stage}]", (Task,), {"stage_fn": staticmethod(stage_fn), "handler": staticmethod(fn)})

        @shared_task(name=stage_task_name(stage), base=base, bind=True, acks_late=True, reject_on_worker_lost=True,
                     ignore_result=True)
        def _task(self: Any, payload: dict[str, Any]) -> None:
            run_stage(self.app, payload, stage_fn)

        return _task

    return decorate
