"""Typed Python clients for the Atelier API (httpx): :class:`AtelierClient` and :class:`AsyncAtelierClient`.

    from atelier_sdk import AtelierClient
    from atelier_contracts.specs import CampaignSpec

    with AtelierClient("http://127.0.0.1:8000", api_key="atl_...") as atelier:
        job = atelier.submit(CampaignSpec.model_validate({...}), idempotency_key="order-42")
        job = atelier.wait(job.id)                      # follows the job's Server-Sent Events
        atelier.download_bundle(job.id, "out/bundle.zip")

    async with AsyncAtelierClient("http://127.0.0.1:8000", api_key="atl_...") as atelier:
        job = await atelier.submit({...}, kind="story")
        async for event in atelier.events(job.id):
            ...

Both clients have the same methods, one per API operation (:mod:`atelier_sdk.operations` defines them once;
:data:`~atelier_sdk.operations.OPERATIONS` maps OpenAPI operation ids to them). Answers over 429/503 and
connection errors of idempotent requests are retried (:mod:`atelier_sdk.retry`); other errors raise
:class:`AtelierError` with the RFC 9457 problem's fields. The transport is injectable (``transport=``), and so
is ``sleep``, so a test can talk to an app in-process and see the waits without waiting.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx

from .errors import AtelierError
from .models import Event, Job
from .operations import (
    EVENTS_ROUTE,
    AsyncSender,
    Call,
    Operations,
    SyncSender,
    build_request,
    events_call,
    finish,
    route,
)
from .retry import RetryPolicy
from .sse import EventStream
from .version import __version__

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 60.0

__all__ = ["AsyncAtelierClient", "AtelierClient"]  # the models: atelier_sdk


def _http_options(base_url: str, api_key: str | None, timeout: float | httpx.Timeout) -> dict[str, Any]:
    headers = {"User-Agent": f"atelier-sdk/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return {"base_url": base_url.rstrip("/"), "headers": headers, "timeout": timeout}


class _Deadline:
    """``timeout`` seconds from now (None: never), checked between reads."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def check(self, job_id: str, cause: Exception | None = None) -> None:
        if self.at is not None and time.monotonic() >= self.at:
            raise TimeoutError(f"job {job_id}: not ended after {self.timeout} s") from cause

    def reads(self, base: httpx.Timeout) -> httpx.Timeout | None:
        """The client's timeouts with no read waiting past the deadline (so a quiet stream ends on time)."""
        remaining = self.remaining()
        if remaining is None:
            return None
        read = remaining if base.read is None else min(base.read, remaining)
        return httpx.Timeout(connect=base.connect, read=max(read, 0.001), write=base.write, pool=base.pool)


class AtelierClient(Operations, SyncSender):
    """Synchronous client: every operation is a method (see :data:`~atelier_sdk.operations.OPERATIONS`);
    :meth:`events` and :meth:`wait` follow a job live.

    Args:
        base_url: the API's address, e.g. ``https://atelier.example.com`` (a path prefix is kept).
        api_key: the tenant's ``atl_...`` key.
        timeout: httpx's timeout per request (seconds, or an ``httpx.Timeout``).
        retry: how often and how long to retry (:class:`RetryPolicy`; default 4 attempts).
        transport: an httpx transport (tests: ``httpx.MockTransport``, or a wrapper that drops connections).
        sleep: what waits between attempts (tests pass a recorder).
    """

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.http = httpx.Client(transport=transport, **_http_options(base_url, api_key, timeout))
        self.retry_policy = retry or RetryPolicy()
        self._sleep = sleep

    def __enter__(self) -> AtelierClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: Call[T]) -> T:
        tries = self.retry_policy.attempts(idempotent=call.idempotent)
        while True:
            try:
                response = self.http.send(build_request(self.http, call), stream=True)
                try:
                    delay = tries.after_response(response)
                    if delay is None:
                        if call.sink is not None and response.status_code < 400:
                            with call.sink.open() as fh:
                                for chunk in response.iter_bytes():
                                    fh.write(chunk)
                        else:
                            response.read()
                        return finish(call, response)
                finally:
                    response.close()
            except httpx.TransportError as exc:
                if call.sink is not None:
                    call.sink.discard()
                delay = tries.after_error(exc)
                if delay is None:
                    raise
            self._sleep(delay)

    @route(*EVENTS_ROUTE)
    def events(self, job_id: str, last_event_id: int | str | None = None, *,
               timeout: float | None = None) -> Iterator[Event]:
        """The job's events after ``last_event_id`` (from the start without it), live, until its terminal event.

        A dropped connection is resumed with ``Last-Event-ID`` (retried like any GET; the count starts over after
        each event), so every event comes once. ``timeout``: TimeoutError after that many seconds."""
        stream, deadline = EventStream(last_event_id), _Deadline(timeout)
        tries = self.retry_policy.attempts(idempotent=True)
        while not stream.done:
            deadline.check(job_id)
            stream.reconnecting()
            try:
                call = events_call(job_id, stream, deadline.reads(self.http.timeout))
                response = self.http.send(build_request(self.http, call), stream=True)
                try:
                    delay = tries.after_response(response)
                    if delay is None:
                        if response.status_code >= 400:
                            response.read()
                            raise AtelierError.from_response(response)
                        progressed = False
                        for line in response.iter_lines():
                            event = stream.feed(line)
                            if event is not None:
                                progressed = True
                                tries.reset()
                                yield event
                                if stream.done:
                                    return
                            deadline.check(job_id)
                        if not progressed:
                            return  # closed at once, nothing new: the job has ended (or is gone)
                        continue  # closed before the terminal event: resume after the last one
                finally:
                    response.close()
            except httpx.TransportError as exc:
                deadline.check(job_id, exc)  # a read that timed out at the deadline
                delay = tries.after_error(exc)
                if delay is None:
                    raise
            self._sleep(delay)

    def wait(self, job_id: str, *, on_event: Callable[[Event], None] | None = None, timeout: float | None = None,
             poll_s: float = 1.0) -> Job:
        """Follow the job's events until it ends and answer the finished job (TimeoutError after ``timeout``)."""
        deadline = _Deadline(timeout)
        last: int | None = None
        while True:
            for event in self.events(job_id, last, timeout=deadline.remaining()):
                last = event.id
                if on_event is not None:
                    on_event(event)
            job = self.job(job_id)
            if job.done:
                return job
            deadline.check(job_id)
            self._sleep(poll_s)


class AsyncAtelierClient(Operations, AsyncSender):
    """The same client for asyncio (``httpx.AsyncClient``): every method is awaited; :meth:`events` is an async
    iterator. Arguments as :class:`AtelierClient`'s (``transport`` is an ``httpx.AsyncBaseTransport``, ``sleep``
    a coroutine function)."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
                 retry: RetryPolicy | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.http = httpx.AsyncClient(transport=transport, **_http_options(base_url, api_key, timeout))
        self.retry_policy = retry or RetryPolicy()
        self._sleep = sleep

    async def __aenter__(self) -> AsyncAtelierClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, call: Call[T]) -> T:
        tries = self.retry_policy.attempts(idempotent=call.idempotent)
        while True:
            try:
                response = await self.http.send(build_request(self.http, call), stream=True)
                try:
                    delay = tries.after_response(response)
                    if delay is None:
                        if call.sink is not None and response.status_code < 400:
                            with call.sink.open() as fh:
                                async for chunk in response.aiter_bytes():
                                    fh.write(chunk)
                        else:
                            await response.aread()
                        return finish(call, response)
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                if call.sink is not None:
                    call.sink.discard()
                delay = tries.after_error(exc)
                if delay is None:
                    raise
            await self._sleep(delay)

    @route(*EVENTS_ROUTE)
    async def events(self, job_id: str, last_event_id: int | str | None = None, *,
                     timeout: float | None = None) -> AsyncIterator[Event]:
        """The job's events after ``last_event_id``, live, until its terminal event; resumes after a dropped
        connection with ``Last-Event-ID`` (see :meth:`AtelierClient.events`)."""
        stream, deadline = EventStream(last_event_id), _Deadline(timeout)
        tries = self.retry_policy.attempts(idempotent=True)
        while not stream.done:
            deadline.check(job_id)
            stream.reconnecting()
            try:
                call = events_call(job_id, stream, deadline.reads(self.http.timeout))
                response = await self.http.send(build_request(self.http, call), stream=True)
                try:
                    delay = tries.after_response(response)
                    if delay is None:
                        if response.status_code >= 400:
                            await response.aread()
                            raise AtelierError.from_response(response)
                        progressed = False
                        async for line in response.aiter_lines():
                            event = stream.feed(line)
                            if event is not None:
                                progressed = True
                                tries.reset()
                                yield event
                                if stream.done:
                                    return
                            deadline.check(job_id)
                        if not progressed:
                            return
                        continue
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                deadline.check(job_id, exc)
                delay = tries.after_error(exc)
                if delay is None:
                    raise
            await self._sleep(delay)

    async def wait(self, job_id: str, *, on_event: Callable[[Event], Any] | None = None,
                   timeout: float | None = None, poll_s: float = 1.0) -> Job:
        """Follow the job's events until it ends and answer the finished job (TimeoutError after ``timeout``);
        ``on_event`` may be a plain function or a coroutine function."""
        async with asyncio.timeout(timeout):
            last: int | None = None
            while True:
                async for event in self.events(job_id, last):
                    last = event.id
                    if on_event is not None:
                        result = on_event(event)
                        if inspect.isawaitable(result):
                            await result
                job = await self.job(job_id)
                if job.done:
                    return job
                await self._sleep(poll_s)
