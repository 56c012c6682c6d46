"""The SDK against the real app: the API test fixtures (tests/unit/api/conftest.py), served by uvicorn on a free
loopback port, and transports that count requests or drop connections the way a network does."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

API_TESTS = Path(__file__).parents[1] / "api"


def _load_api_fixtures() -> Any:
    spec = importlib.util.spec_from_file_location("sdk_api_fixtures", API_TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # it puts tests/unit/api on sys.path (api_testkit)
    return module


_api = _load_api_fixtures()
# the same fixtures the API tests use: SQLite file DB, local store, memory-broker Celery, MemoryRuntime
settings, engine, factory, store, celery, runtime, app, client, tenant, other_tenant = (
    _api.settings, _api.engine, _api.factory, _api.store, _api.celery, _api.runtime, _api.app, _api.client,
    _api.tenant, _api.other_tenant)


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 (a port taken by binding, so no other process can race for it)."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Any], str]]:
    """``serve(app)`` → its base URL; every server is stopped at the end."""
    servers: list[LiveServer] = []

    def start(app: Any) -> str:
        servers.append(LiveServer(app).start())
        return servers[-1].url

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def live(app: Any, serve: Callable[[Any], str]) -> str:
    return serve(app)


@dataclass
class Seen:
    """What went over the wire: (method, path, status or the error's name, request headers)."""

    requests: list[tuple[str, str, int | str, httpx.Headers]] = field(default_factory=list)

    def of(self, method: str, path_prefix: str = "") -> list[tuple[str, str, int | str, httpx.Headers]]:
        return [r for r in self.requests if r[0] == method and r[1].startswith(path_prefix)]


class Recording(httpx.HTTPTransport):
    """A real HTTP transport that records each request and can fail chosen ones.

    ``fail(match, exc, after_send=False)``: the next request ``match(request)`` accepts raises ``exc`` before it is
    sent, or, with ``after_send``, after the server has answered (the answer is lost: a read error).
    ``cut_stream(match, frames)``: the next matching answer's body stops after ``frames`` SSE frames and the
    connection then fails as a peer that hung up does."""

    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.seen = seen
        self.failures: list[tuple[Callable[[httpx.Request], bool], Exception, bool]] = []
        self.cuts: list[tuple[Callable[[httpx.Request], bool], int]] = []

    def fail(self, match: Callable[[httpx.Request], bool], exc: Exception, *, after_send: bool = False) -> None:
        self.failures.append((match, exc, after_send))

    def cut_stream(self, match: Callable[[httpx.Request], bool], frames: int) -> None:
        self.cuts.append((match, frames))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        failure = next((f for f in self.failures if f[0](request)), None)
        if failure is not None:
            self.failures.remove(failure)
            _, exc, after_send = failure
            if after_send:
                response = super().handle_request(request)
                response.read()
                response.close()
                self.seen.requests.append((request.method, request.url.path, response.status_code, request.headers))
            else:
                self.seen.requests.append((request.method, request.url.path, type(exc).__name__, request.headers))
            raise exc
        response = super().handle_request(request)
        self.seen.requests.append((request.method, request.url.path, response.status_code, request.headers))
        cut = next((c for c in self.cuts if c[0](request)), None)
        if cut is not None:
            self.cuts.remove(cut)
            response.stream = _CutStream(response.stream, cut[1])  # type: ignore[arg-type]
        return response


def _cut(received: bytes, frames: int) -> bytes | None:
    """The bytes a connection dropped after ``frames`` SSE frames delivers: those frames and half of the next
    (its ``id:`` line only); None while fewer have arrived."""
    if received.count(b"\n\n") < frames:
        return None
    return b"\n\n".join(received.split(b"\n\n")[:frames]) + b"\n\nid: 99"


class _CutStream(httpx.SyncByteStream):
    def __init__(self, inner: Any, frames: int) -> None:
        self.inner, self.frames = inner, frames

    def __iter__(self) -> Iterator[bytes]:
        received = b""
        for chunk in self.inner:
            received += chunk
            cut = _cut(received, self.frames)
            if cut is not None:
                yield cut[len(received) - len(chunk):]
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
            yield chunk

    def close(self) -> None:
        self.inner.close()


class AsyncRecording(httpx.AsyncHTTPTransport):
    """:class:`Recording` for the async client (records; cuts event streams)."""

    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.seen = seen
        self.cuts: list[tuple[Callable[[httpx.Request], bool], int]] = []

    def cut_stream(self, match: Callable[[httpx.Request], bool], frames: int) -> None:
        self.cuts.append((match, frames))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.seen.requests.append((request.method, request.url.path, response.status_code, request.headers))
        cut = next((c for c in self.cuts if c[0](request)), None)
        if cut is not None:
            self.cuts.remove(cut)
            response.stream = _AsyncCutStream(response.stream, cut[1])  # type: ignore[arg-type]
        return response


class _AsyncCutStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any, frames: int) -> None:
        self.inner, self.frames = inner, frames

    async def __aiter__(self) -> Any:
        received = b""
        async for chunk in self.inner:
            received += chunk
            cut = _cut(received, self.frames)
            if cut is not None:
                yield cut[len(received) - len(chunk):]
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def transport(seen: Seen) -> Recording:
    return Recording(seen)


class Sleeps(list[float]):
    """Stands in for ``time.sleep``: records each wait and runs ``then`` (e.g. moves a fake clock on)."""

    def __init__(self, then: Callable[[float], None] | None = None) -> None:
        super().__init__()
        self.then = then

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if self.then is not None:
            self.then(seconds)


@pytest.fixture
def broker_down_for(celery: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], list[str]]:
    """The next ``n`` jobs cannot be handed to the broker: the API answers 503 and keeps nothing."""

    def down(n: int) -> list[str]:
        original, tries = celery.send_task, []

        def send_task(name: str, args: Any = None, **kwargs: Any) -> Any:
            tries.append(name)
            if len(tries) <= n:
                raise ConnectionError("broker down")
            return original(name, args=args, **kwargs)

        monkeypatch.setattr(celery, "send_task", send_task)
        return tries

    return down


def run_async(coro: Any) -> Any:
    """``asyncio.run`` in a thread of its own: the session's playwright fixtures (dashboard tests) keep an event
    loop running in the main thread, where ``asyncio.run`` refuses to start another."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
