"""Events and waiting, sync and async, against the real app over HTTP: the stream resumes after a dropped
connection with Last-Event-ID, every event once; the async client submits, lists and waits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from api_testkit import TenantCtx, emit_events, set_job, story_spec
from atelier_sdk import AsyncAtelierClient, AtelierClient, AtelierError, Event, RetryPolicy
from sqlalchemy.orm import Session, sessionmaker

from .conftest import AsyncRecording, Recording, Seen, Sleeps, run_async

HALF = RetryPolicy(jitter=lambda: 0.5)
STAGES = ["job.started", "stage.started", "stage.progress", "stage.completed"]


def is_stream(request: httpx.Request) -> bool:
    return request.url.path.endswith("/events")


def last_event_ids(seen: Seen, job_id: str) -> list[str | None]:
    return [h.get("last-event-id") for *_x, h in seen.of("GET", f"/v1/jobs/{job_id}/events")]


def finish_later(factory: sessionmaker[Session], tenant_id: str, job_id: str, *, delay_s: float = 0.3,
                 status: str = "succeeded") -> threading.Thread:
    """The job runs in the background: stage events a little apart, then its end."""

    def run() -> None:
        time.sleep(delay_s)
        for event_type in STAGES:
            emit_events(factory, tenant_id, job_id, [event_type])
            time.sleep(0.05)
        # the terminal event before the row's status (the orchestrator writes both in one transaction): a stream
        # that sees the job ended with no terminal event yet would close early and the client resume once more
        emit_events(factory, tenant_id, job_id, [f"job.{status}"])
        set_job(factory, job_id, status=status)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class AsyncSleeps(Sleeps):
    async def __call__(self, seconds: float) -> None:  # type: ignore[override]
        self.append(seconds)
        await asyncio.sleep(0)


# ---------------------------------------------------------------- sync


def test_events_resume_after_a_dropped_connection(live: str, tenant: TenantCtx, transport: Recording, seen: Seen,
                                                  factory: sessionmaker[Session]) -> None:
    sleeps = Sleeps()
    with AtelierClient(live, api_key=tenant.key, transport=transport, sleep=sleeps, retry=HALF) as atelier:
        job = atelier.submit(story_spec(), kind="story")
        emitted = emit_events(factory, tenant.id, job.id, STAGES)
        set_job(factory, job.id, status="succeeded")
        emitted += emit_events(factory, tenant.id, job.id, ["job.succeeded"])
        transport.cut_stream(is_stream, frames=2)  # job.created and the first stage event, then the peer hangs up
        events = list(atelier.events(job.id))
        later = list(atelier.events(job.id, last_event_id=emitted[2]))
    assert [e.type for e in events] == ["job.created", *STAGES, "job.succeeded"]
    assert [e.id for e in events][1:] == emitted, "every event once, in order, none lost at the cut"
    assert all(isinstance(e, Event) and e.job_id == job.id and e.created_at for e in events)
    assert last_event_ids(seen, job.id) == [None, str(events[1].id), str(emitted[2])]
    assert sleeps == [0.375], "one reconnect, after the first backoff step"
    assert [e.id for e in later] == emitted[3:] and later[-1].terminal


def test_events_of_a_job_that_is_not_yours_raise_a_404(live: str, tenant: TenantCtx,
                                                        other_tenant: TenantCtx) -> None:
    with AtelierClient(live, api_key=tenant.key) as mine, AtelierClient(live, api_key=other_tenant.key) as theirs:
        job = mine.submit(story_spec(), kind="story")
        with pytest.raises(AtelierError) as exc:
            next(theirs.events(job.id))
    assert exc.value.status == 404


def test_wait_follows_a_running_job_across_a_dropped_connection(live: str, tenant: TenantCtx, transport: Recording,
                                                                seen: Seen, factory: sessionmaker[Session]) -> None:
    sleeps = Sleeps()
    got: list[Event] = []
    with AtelierClient(live, api_key=tenant.key, transport=transport, sleep=sleeps, retry=HALF) as atelier:
        job = atelier.submit(story_spec(), kind="story")
        transport.cut_stream(is_stream, frames=3)
        finisher = finish_later(factory, tenant.id, job.id)
        done = atelier.wait(job.id, on_event=got.append, timeout=60)
        finisher.join()
    assert done.status == "succeeded" and done.done
    assert [e.type for e in got] == ["job.created", *STAGES, "job.succeeded"]
    assert len({e.id for e in got}) == len(got)
    assert last_event_ids(seen, job.id) == [None, str(got[2].id)]


def test_wait_gives_up_after_its_timeout(live: str, tenant: TenantCtx) -> None:
    with AtelierClient(live, api_key=tenant.key) as atelier:
        job = atelier.submit(story_spec(), kind="story")  # nothing runs it: it stays queued
        with pytest.raises(TimeoutError, match=job.id):
            atelier.wait(job.id, timeout=0.3)  # the stream is quiet (keep-alives every 15 s): the read times out
        with pytest.raises(TimeoutError, match=job.id):
            list(atelier.events(job.id, timeout=0.2))

    async def wait_async() -> None:
        async with AsyncAtelierClient(live, api_key=tenant.key) as atelier:
            await atelier.wait(job.id, timeout=0.3)

    with pytest.raises(TimeoutError):
        run_async(wait_async())


# ---------------------------------------------------------------- async


def test_async_client_submits_lists_and_waits(live: str, tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    seen = Seen()
    transport = AsyncRecording(seen)
    sleeps = AsyncSleeps()

    async def main() -> tuple[Any, ...]:
        async with AsyncAtelierClient(live, api_key=tenant.key, transport=transport, sleep=sleeps,
                                      retry=HALF) as atelier:
            job = await atelier.submit(story_spec(), kind="story", external_id="ext-7", metadata={"team": "books"})
            other = await atelier.submit(story_spec(pages=2), kind="story")
            page, fetched, caps = await asyncio.gather(atelier.jobs(external_id="ext-7"), atelier.job(job.id),
                                                       atelier.capabilities())
            transport.cut_stream(is_stream, frames=2)
            got: list[Event] = []

            async def on_event(event: Event) -> None:
                got.append(event)

            finisher = finish_later(factory, tenant.id, job.id)
            done = await atelier.wait(job.id, on_event=on_event, timeout=60)
            finisher.join()
            listing = await atelier.jobs(limit=10)
            return job, other, page, fetched, caps, done, got, listing

    job, other, page, fetched, caps, done, got, listing = run_async(main())
    assert job.external_id == "ext-7" and job.metadata == {"team": "books"} and job.status == "queued"
    assert [j.id for j in page.items] == [job.id] and fetched.id == job.id and caps.planner_backend
    assert done.status == "succeeded" and [e.type for e in got] == ["job.created", *STAGES, "job.succeeded"]
    assert len({e.id for e in got}) == len(got), "resumed without repeating an event"
    assert last_event_ids(seen, job.id) == [None, str(got[1].id)] and sleeps == [0.375]
    assert [j.id for j in listing.items] == [other.id, job.id]


def test_async_events_resume_and_async_errors_raise(live: str, tenant: TenantCtx,
                                                     factory: sessionmaker[Session]) -> None:
    seen = Seen()
    transport = AsyncRecording(seen)

    async def main() -> tuple[list[Event], str, AtelierError]:
        async with AsyncAtelierClient(live, api_key=tenant.key, transport=transport, sleep=AsyncSleeps(),
                                      retry=HALF) as atelier:
            job = await atelier.submit(story_spec(), kind="story")
            emit_events(factory, tenant.id, job.id, STAGES)
            set_job(factory, job.id, status="failed")
            emit_events(factory, tenant.id, job.id, ["job.failed"])
            transport.cut_stream(is_stream, frames=4)
            events = [e async for e in atelier.events(job.id)]
            try:
                await atelier.cancel("job_nope")
            except AtelierError as exc:
                return events, job.id, exc
            raise AssertionError("a 404 must raise")

    events, job_id, err = run_async(main())
    assert [e.type for e in events] == ["job.created", *STAGES, "job.failed"]
    assert last_event_ids(seen, job_id) == [None, str(events[3].id)]
    assert err.status == 404 and err.title


def test_async_client_retries_a_503(live: str, tenant: TenantCtx, broker_down_for: Callable[[int], list[str]]) -> None:
    broker_down_for(2)
    seen = Seen()
    sleeps = AsyncSleeps()

    async def main() -> Any:
        async with AsyncAtelierClient(live, api_key=tenant.key, transport=AsyncRecording(seen), sleep=sleeps,
                                      retry=HALF) as atelier:
            return await atelier.submit(story_spec(), kind="story")

    job = run_async(main())
    assert job.kind == "story"
    assert [status for *_x, status, _h in seen.of("POST")] == [503, 503, 202] and sleeps == [0.375, 0.75]
