"""Server-Sent Events for one job, read from the ``events`` table.

Each poll opens its own short session, so a long stream never pins a database connection.
The stream ends right after the job's terminal event; clients rely on that to stop reading.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from functools import partial

import anyio
from atelier_control.events import events_after
from atelier_control.models import TERMINAL, Event, Job
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import StreamingResponse

from .concurrency import TenantConcurrency
from .metrics import ApiMetrics
from .problems import FieldErrors
from .schemas import FieldError
from .views import as_utc


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response (FastAPI's own EventSourceResponse is only for generator routes)."""

    media_type = "text/event-stream"


TERMINAL_EVENTS = frozenset({"job.succeeded", "job.failed", "job.canceled"})
MAX_EVENT_ID = 2**63 - 1  # event ids are BIGINT: a larger resume point is a 422, not a stream that dies
KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_S = 15.0
BATCH = 500


def resume_point(last_event_id: str | None, after: int | None) -> int:
    """Where to resume: the ``Last-Event-ID`` header wins over ``?after=``; 0 from the start."""
    if last_event_id is not None and last_event_id.strip():
        try:
            value = int(last_event_id.strip())
        except ValueError:
            value = -1
        if not 0 <= value <= MAX_EVENT_ID:
            raise FieldErrors([FieldError(field="Last-Event-ID",
                                          message=f"must be an event id (an integer from 0 to {MAX_EVENT_ID})")])
        return value
    return after or 0


def tenant_stream(concurrency: TenantConcurrency, metrics: ApiMetrics, factory: sessionmaker[Session], *,
                  tenant_id: str, job_id: str, after_id: int, poll_s: float) -> EventStreamResponse:
    """The job's event stream under the tenant's cap on open streams (429 before anything is sent when over it)."""
    released: list[Callable[[], None]] = []

    def closed() -> None:
        metrics.sse_streams.dec()
        for release in released:
            release()

    frames = job_events(factory, tenant_id=tenant_id, job_id=job_id, after_id=after_id, poll_s=poll_s,
                        on_open=metrics.sse_streams.inc, on_close=closed)
    released.append(concurrency.hold_for(frames, "streams", tenant_id))
    return EventStreamResponse(frames, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def format_event(event: Event) -> bytes:
    created = as_utc(event.created_at)
    payload = {
        "id": event.id, "type": event.type, "job_id": event.job_id, "data": event.data or {},
        "created_at": created.isoformat() if created else None,
    }
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()


def _poll(factory: sessionmaker[Session], *, tenant_id: str, job_id: str, after_id: int
          ) -> tuple[str | None, list[tuple[int, str, bytes]]]:
    # status before events: a terminal status read first guarantees its event is in the read that follows
    with factory() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id, Job.tenant_id == tenant_id))
        events = events_after(session, tenant_id=tenant_id, job_id=job_id, after_id=after_id, limit=BATCH)
        return status, [(e.id, e.type, format_event(e)) for e in events]


async def job_events(factory: sessionmaker[Session], *, tenant_id: str, job_id: str, after_id: int,
                     poll_s: float, keepalive_s: float | None = None,
                     on_open: Callable[[], None] | None = None,
                     on_close: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
    """Yield SSE frames for the job's events after ``after_id`` until its terminal event."""
    keepalive = KEEPALIVE_S if keepalive_s is None else keepalive_s
    if on_open:
        on_open()
    try:
        last_sent = time.monotonic()
        while True:
            status, batch = await anyio.to_thread.run_sync(
                partial(_poll, factory, tenant_id=tenant_id, job_id=job_id, after_id=after_id)
            )
            for event_id, event_type, frame in batch:
                yield frame
                after_id = event_id
                last_sent = time.monotonic()
                if event_type in TERMINAL_EVENTS:
                    return
            if len(batch) == BATCH:
                continue
            if not batch and (status is None or status in TERMINAL):
                return
            if time.monotonic() - last_sent >= keepalive:
                yield KEEPALIVE
                last_sent = time.monotonic()
            await anyio.sleep(poll_s)
    finally:
        if on_close:
            on_close()
