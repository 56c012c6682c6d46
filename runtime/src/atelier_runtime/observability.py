"""Logs and metrics every Atelier process shares: JSON logs that carry the job and stage they are about, and the
Prometheus metrics of workers and the orchestrator.

* **Logs.** :func:`configure_logging` sets the root handler once per process: ``text`` (the default; what a person
  reads in a terminal) or ``json`` (``ATELIER_LOG_FORMAT=json``: one JSON object per line for Loki, Elasticsearch,
  Cloud Logging — python-json-logger's formatter). While a stage runs (:func:`log_context`, entered by the stage
  runner and the orchestrator's handlers), every record carries ``job_id``, ``stage``, ``item``, ``stage_id`` and
  ``tenant_id``, whatever logger wrote it.
* **Metrics.** Registered on prometheus_client's default registry, which also holds its process and platform
  collectors (CPU seconds, resident memory, open file descriptors, Python's GC): stage runs and their durations by
  stage and outcome, GPU seconds by stage (workers); jobs finished by kind and status and webhook deliveries by
  outcome (orchestrator). Gauges of jobs and stages by state and of queue depth are read at scrape
  time by collectors the orchestrator registers. :func:`start_metrics_server` serves them on
  ``ATELIER_METRICS_PORT`` (a worker has no HTTP server of its own); the API serves its own on ``/metrics``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from prometheus_client import Counter, Histogram, start_http_server
from pythonjsonlogger.json import JsonFormatter

CONTEXT_FIELDS = ("job_id", "stage", "item", "stage_id", "tenant_id")
_CONTEXT: ContextVar[dict[str, str]] = ContextVar("atelier_log_context", default={})  # noqa: B039 - never mutated
_CONFIGURED = "_atelier_observability"
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)

# ---------------------------------------------------------------- logs


@contextlib.contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Within the block, every log record carries these ids (``job_id=…, stage=…``; None values are left out)."""
    merged = {**_CONTEXT.get(), **{k: str(v) for k, v in ids.items() if v is not None and v != ""}}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> dict[str, str]:
    return dict(_CONTEXT.get())


class ContextFilter(logging.Filter):
    """Puts the ids of :func:`log_context` on every record (as attributes; absent ones as empty strings)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _CONTEXT.get()
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, ctx.get(name, ""))
        return True


class TextFormatter(logging.Formatter):
    """``time level logger [job=… stage=…[item]] message``: the ids only when there are some."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ids)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        job, stage, item = (getattr(record, k, "") for k in ("job_id", "stage", "item"))
        where = f"{stage}[{item}]" if stage and item else stage
        parts = [p for p in (f"job={job}" if job else "", f"stage={where}" if where else "") if p]
        record.ids = f" [{' '.join(parts)}]" if parts else ""
        return super().format(record)


class JsonLogFormatter(JsonFormatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, the ids of :func:`log_context`
    that are set, and any ``extra=`` fields (python-json-logger does the encoding and the exception text)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         json_ensure_ascii=False)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        for name in CONTEXT_FIELDS:
            if not log_data.get(name):
                log_data.pop(name, None)


def configure_logging(level: str | int = logging.INFO, fmt: str = "text", *, stream: Any = None) -> logging.Handler:
    """The process's root handler, once (a second call replaces the first): ``fmt`` is ``text`` or ``json``."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _CONFIGURED, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    setattr(handler, _CONFIGURED, True)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else logging.getLevelName(level.upper()))
    return handler


# ---------------------------------------------------------------- metrics

STAGE_RUNS = Counter("atelier_stage_runs", "Stage runs finished on this worker, by stage and outcome.",
                     ["stage", "status"])
STAGE_DURATION = Histogram("atelier_stage_duration_seconds", "Wall time of one stage run on a worker.",
                           ["stage", "status"], buckets=STAGE_BUCKETS)
GPU_SECONDS = Counter("atelier_gpu_seconds", "GPU (device) seconds spent, by stage.", ["stage"])
JOBS_FINISHED = Counter("atelier_jobs_finished", "Jobs that ended, by kind and status (partial: succeeded with "
                        "failed items).", ["kind", "status"])
WEBHOOK_DELIVERIES = Counter("atelier_webhook_deliveries", "Webhook delivery attempts by outcome: succeeded, "
                             "retrying (it failed and will be tried again), failed (out of retries).", ["outcome"])


def record_stage_run(stage: str, status: str, seconds: float, gpu_seconds: float) -> None:
    STAGE_RUNS.labels(stage, status).inc()
    STAGE_DURATION.labels(stage, status).observe(max(0.0, seconds))
    if gpu_seconds > 0:
        GPU_SECONDS.labels(stage).inc(gpu_seconds)


def start_metrics_server(port: int | None, addr: str = "0.0.0.0") -> bool:  # noqa: S104 - a scrape target
    """Serve the default registry on ``port`` (None or 0: off); returns whether it started."""
    if not port:
        return False
    start_http_server(port, addr=addr)
    return True
