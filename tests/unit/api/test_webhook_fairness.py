"""The webhook dispatcher under hostile or slow receivers: a total send deadline, a capped (streamed) read of the
answer, fair claims across tenants with passes that never wait for a send, leases that cannot run out mid-send,
and the optional port allow-list.

Receivers are real HTTP servers on loopback (allow-listed with ATELIER_SSRF_ALLOW for these tests); the tests
compare the order of what the receivers saw, not wall-clock budgets.
"""

from __future__ import annotations

import base64
import itertools
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_testkit import UPLOAD_MAX_BYTES, TenantCtx
from atelier_control import ssrf
from atelier_control.models import Webhook, WebhookDelivery, utcnow
from atelier_orchestrator import webhooks as wh
from atelier_orchestrator.webhooks import (
    RESPONSE_READ_MAX,
    Sender,
    WebhookDispatcher,
    claim_due,
    lease_for,
    record_result,
)
from atelier_runtime.settings import Settings
from fastapi.testclient import TestClient

SECRET = "whsec_" + base64.b64encode(b"s" * 24).decode()
_event_ids = itertools.count(1)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # a per-read timeout (webhook_timeout_s) far longer than the deadline: only the deadline can cut a trickle
    return Settings(home=tmp_path, upload_max_bytes=UPLOAD_MAX_BYTES, sse_poll_s=0.02, ssrf_allow="127.0.0.1/32",
                    webhook_poll_s=0.05, webhook_backoff_s=0.05, webhook_backoff_max_s=0.2, webhook_timeout_s=30,
                    webhook_send_deadline_s=1.5, webhook_concurrency=2, webhook_max_in_flight=1)


class Server:
    """A loopback HTTP server; ``handle(handler, body)`` answers each POST. Keeps (time, headers, body) of each."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler, bytes], None]) -> None:
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with outer.lock:
                    outer.requests.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                handle(self, body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fast(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    handler.send_response(204)
    handler.send_header("content-length", "0")
    handler.end_headers()


def hung_up(sock: socket.socket, wait: float) -> bool:
    """Whether the client closed the connection, watching it for up to ``wait`` seconds."""
    readable, _, _ = select.select([sock], [], [], wait)
    try:
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class Trickle:
    """Answers 200 with a 1,000-byte body announced, then sends one byte every ``every`` seconds until the client
    hangs up; ``sent`` counts the body bytes of the request in progress, ``cuts`` has (time the client hung up,
    bytes it had been sent) per request."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self.started: list[float] = []
        self.sent = 0
        self.cuts: list[tuple[float, int]] = []

    def __call__(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        self.started.append(time.monotonic())
        handler.send_response(200)
        handler.send_header("content-type", "text/plain")
        handler.send_header("content-length", "1000")
        handler.end_headers()
        self.sent = 0
        try:
            for _ in range(1000):
                handler.wfile.write(b"x")
                handler.wfile.flush()
                self.sent += 1
                if hung_up(handler.connection, self.every):
                    break
        except OSError:  # BrokenPipe / ConnectionReset
            pass
        self.cuts.append((time.monotonic(), self.sent))


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(handle: Callable[[BaseHTTPRequestHandler, bytes], None] = fast) -> Server:
        made.append(Server(handle))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _hook(factory: Any, tenant_id: str, url: str) -> str:
    with factory() as s, s.begin():
        h = Webhook(tenant_id=tenant_id, url=url, secret=SECRET, events=["job.succeeded"])
        s.add(h)
        s.flush()
        return h.id


def _queue(factory: Any, tenant_id: str, hook_id: str, n: int = 1, *, age_s: float = 0.0) -> list[str]:
    """``n`` due deliveries for an endpoint, due since ``age_s`` seconds (rows written directly: no jobs needed)."""
    now = utcnow()
    ids = []
    with factory() as s, s.begin():
        for i in range(n):
            event_id = next(_event_ids)
            d = WebhookDelivery(webhook_id=hook_id, tenant_id=tenant_id, event_id=event_id, event_type="job.succeeded",
                                message_id=wh.message_id(event_id), status="pending", attempts=0, log=[],
                                payload={"type": "job.succeeded", "data": {"n": i}},
                                next_attempt_at=now - timedelta(seconds=age_s) + timedelta(microseconds=i),
                                created_at=now)
            s.add(d)
            s.flush()
            ids.append(d.id)
    return ids


def _delivery(factory: Any, delivery_id: str) -> WebhookDelivery:
    with factory() as s:
        d = s.get(WebhookDelivery, delivery_id)
        assert d is not None
        return d


def _wait(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


# ---------------------------------------------------------------- deadline and fairness


def test_a_trickling_receiver_of_one_tenant_does_not_delay_another_tenant(
        factory: Any, settings: Settings, tenant: TenantCtx, other_tenant: TenantCtx,
        servers: Callable[..., Server]) -> None:
    trickle = Trickle(every=0.1)  # 1,000 bytes at 10/s: 100 s, far past the 1.5 s deadline
    progress_at_b: list[int] = []

    def quick_answer(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        progress_at_b.append(trickle.sent)  # how far A's trickle had got when B's message arrived
        fast(handler, body)

    slow, quick = servers(trickle), servers(quick_answer)
    a_ids = _queue(factory, tenant.id, _hook(factory, tenant.id, slow.url), 5, age_s=60)  # A's backlog is older
    b_hook = _hook(factory, other_tenant.id, quick.url)
    d = WebhookDispatcher(factory, settings)
    d.start()
    try:
        _wait(lambda: trickle.started, what="tenant A's receiver to start trickling")
        b_ids = _queue(factory, other_tenant.id, b_hook)  # B's message is due only once A's send is in flight
        _wait(lambda: quick.requests, what="tenant B's delivery")
        b_arrived = quick.requests[0][0]
        _wait(lambda: _delivery(factory, b_ids[0]).status == "succeeded", what="B's result to be recorded")
        b_recorded = time.monotonic()
        _wait(lambda: trickle.cuts, what="A's send to be cut off")
    finally:
        d.stop()
    a_cut_at, a_bytes = trickle.cuts[0]
    # B's fast receiver got its message, and its result was recorded, while A's receiver was still trickling
    assert trickle.started[0] < b_arrived < a_cut_at
    assert b_recorded < a_cut_at
    assert progress_at_b[0] < a_bytes  # A's send went on (and got more bytes) after B's message had arrived
    # A's send was cut at the deadline long before its body was done (1.5 s of a 100 s trickle)
    assert a_bytes < 100
    first = _delivery(factory, a_ids[0])
    assert first.status == "pending" and first.last_status_code is None
    assert "cut off at the deadline" in (first.last_error or "")
    assert first.log[0]["error"].startswith("no complete answer within 1.5 s")
    # the failed attempt is retried with the existing backoff, the same webhook-id on every try
    assert first.attempts >= 1 and first.next_attempt_at is not None
    assert {h["webhook-id"] for _, h, _ in slow.requests} <= {_delivery(factory, i).message_id for i in a_ids}


def test_the_deadline_also_cuts_a_receiver_trickling_its_headers(settings: Settings) -> None:
    """A per-read timeout never fires on a status line sent one byte at a time; the deadline does."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sent: list[int] = []

    def serve() -> None:
        conn, _ = listener.accept()
        n = 0
        try:
            conn.recv(65536)
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 1000:
                conn.sendall(bytes([b]))
                n += 1
                time.sleep(0.05)
        except OSError:
            pass
        finally:
            sent.append(n)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    sender = Sender(settings)
    try:
        t0 = time.monotonic()
        outcome = sender.send(f"http://127.0.0.1:{port}/h", SECRET, "msg_1", b"{}", deadline=time.monotonic() + 1.0)
        took = time.monotonic() - t0
    finally:
        sender.close()
        t.join(timeout=10)
        listener.close()
    assert outcome.status_code is None and "cut off at the deadline" in (outcome.error or "")
    assert outcome.summary == "deadline exceeded"
    assert took < settings.webhook_timeout_s  # the 30 s per-read timeout played no part
    assert sent and sent[0] < 200  # ~1 s of a 50 s status line


def test_a_tenant_with_a_backlog_does_not_starve_another(factory: Any, settings: Settings, tenant: TenantCtx,
                                                         other_tenant: TenantCtx) -> None:
    a1 = _hook(factory, tenant.id, "http://127.0.0.1:9/a1")
    a2 = _hook(factory, tenant.id, "http://127.0.0.1:9/a2")
    b = _hook(factory, other_tenant.id, "http://127.0.0.1:9/b")
    _queue(factory, tenant.id, a1, 1000, age_s=3600)  # 1,000 due for an hour
    a2_id = _queue(factory, tenant.id, a2, 1, age_s=60)[0]
    b_id = _queue(factory, other_tenant.id, b, 1, age_s=0)[0]  # the youngest of all
    # one free worker: it goes to a tenant, not to the oldest row; three: both tenants and both of A's endpoints
    first = claim_due(factory, settings=settings, limit=1, turns={tenant.id: 1})
    assert [c["id"] for c in first] == [b_id]
    three = claim_due(factory, settings=settings, limit=3)
    assert {c["tenant_id"] for c in three} == {tenant.id}  # B's only delivery is claimed already
    assert a2_id in {c["id"] for c in three} and sum(c["webhook_id"] == a1 for c in three) == 2
    # a tenant at its in-flight cap gets nothing more; the others still do
    b_more = _queue(factory, other_tenant.id, b, 1)[0]
    capped = claim_due(factory, settings=settings, limit=4, busy={tenant.id: 2}, per_tenant=2)
    assert [c["id"] for c in capped] == [b_more]
    # the old answer to "which 50 are due first" was 50 of A's: now both tenants alternate
    b_again = _queue(factory, other_tenant.id, b, 3)
    batch = claim_due(factory, settings=settings, limit=6, per_tenant=3)
    assert sorted(c["tenant_id"] for c in batch) == sorted([tenant.id] * 3 + [other_tenant.id] * 3)
    assert {c["id"] for c in batch if c["tenant_id"] == other_tenant.id} == set(b_again)


def test_a_pass_does_not_wait_for_its_sends(factory: Any, settings: Settings, tenant: TenantCtx,
                                            servers: Callable[..., Server]) -> None:
    trickle = Trickle(every=0.1)
    slow = servers(trickle)
    hook = _hook(factory, tenant.id, slow.url)
    ids = _queue(factory, tenant.id, hook, 3)
    d = WebhookDispatcher(factory, settings)
    try:
        assert d.run_once() == 1  # one in flight for the tenant (webhook_max_in_flight=1)
        assert d.run_once() == 0  # the tenant is at its cap: nothing more, and the pass returned anyway
        assert len(d.in_flight) == 1
        _wait(lambda: trickle.started, what="the send")
        assert not trickle.cuts and _delivery(factory, ids[0]).last_error is None  # still trickling
        assert d.idle(timeout=10)  # cut at the deadline and recorded by its worker
        assert "cut off" in (_delivery(factory, ids[0]).last_error or "")
    finally:
        d.stop()


# ---------------------------------------------------------------- capped answers, nothing in process logs


class CountingBody(httpx.SyncByteStream):
    """A 10 MB body produced 1 KB at a time; ``pulled`` counts what the client actually read."""

    def __init__(self, prefix: bytes = b"") -> None:
        self.prefix, self.pulled = prefix, 0

    def __iter__(self) -> Iterator[bytes]:
        yield self.prefix
        self.pulled += len(self.prefix)
        for _ in range(10 * 1024):
            self.pulled += 1024
            yield b"z" * 1024


@pytest.mark.parametrize("status", [200, 500])
def test_a_10_mb_answer_is_read_only_up_to_1_kb(settings: Settings, status: int) -> None:
    body = CountingBody(prefix=b"\x1b[31mboom\r\nSet-Cookie: injected\x00 ")
    transport = httpx.MockTransport(lambda request: httpx.Response(
        status, headers={"content-length": str(10 * 1024 * 1024 + 38)}, stream=body))
    sender = Sender(settings, transport=transport)
    try:
        outcome = sender.send("http://127.0.0.1:8080/h", SECRET, "msg_1", b"{}")
    finally:
        sender.close()
    assert body.pulled <= 2 * 1024  # streamed: two 1 KB chunks at most of the 10 MB
    if status == 200:
        assert outcome.status_code == 200 and outcome.error is None
        return
    assert outcome.status_code == 500 and outcome.summary == "HTTP 500"
    error = outcome.error or ""
    excerpt = error.removeprefix("HTTP 500: ")
    assert excerpt.startswith("[31mboom Set-Cookie: injected")  # control characters and line breaks are gone
    assert len(excerpt.encode()) <= RESPONSE_READ_MAX and excerpt.isprintable()


def test_a_large_answer_over_a_socket_is_not_downloaded_and_not_logged(
        factory: Any, settings: Settings, tenant: TenantCtx, servers: Callable[..., Server],
        caplog: pytest.LogCaptureFixture) -> None:
    written: list[int] = []

    def huge(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        handler.send_response(503)
        handler.send_header("content-length", str(64 * 1024 * 1024))
        handler.end_headers()
        n = 0
        try:
            handler.wfile.write(b"SECRET-TOKEN-abc123 stack trace\n")
            for _ in range(1024):
                handler.wfile.write(b"q" * 65536)
                n += 65536
        except OSError:
            pass
        written.append(n)

    srv = servers(huge)
    ids = _queue(factory, tenant.id, _hook(factory, tenant.id, srv.url))
    d = WebhookDispatcher(factory, settings)
    try:
        with caplog.at_level(logging.DEBUG):
            d.run_once()
            assert d.idle(timeout=10)
            _wait(lambda: written, what="the receiver to give up writing")
    finally:
        d.stop()
    row = _delivery(factory, ids[0])
    assert row.last_status_code == 503
    assert (row.last_error or "").startswith("HTTP 503: SECRET-TOKEN-abc123 stack trace q")
    assert len((row.last_error or "").encode()) <= RESPONSE_READ_MAX + len("HTTP 503: ")
    assert len(row.log[-1]["error"]) <= wh.LOG_ENTRY_CHARS + 1  # the attempts log keeps a shorter excerpt
    assert written[0] < 64 * 1024 * 1024  # the sender hung up: the body was never downloaded
    # process logs say what failed, never what the receiver answered
    assert "HTTP 503" in caplog.text and "SECRET-TOKEN" not in caplog.text and "qqqq" not in caplog.text


# ---------------------------------------------------------------- leases


def test_a_send_outliving_its_lease_is_cut_before_another_pass_can_send_it_again(
        factory: Any, settings: Settings, tenant: TenantCtx, servers: Callable[..., Server]) -> None:
    """d1's lease (1.5 s) is shorter than the receiver takes (2.5 s): d1 cuts its send 0.5 s before the lease
    ends, so d2, polling all along, never sends the same delivery while d1's request is still open."""
    settings.webhook_send_deadline_s = 10.0
    settings.webhook_backoff_s = 1.0  # the retry after d1's cut comes 0.5-1 s later
    settings.webhook_backoff_max_s = 1.0
    open_spans: list[tuple[float, float, str]] = []

    def slow(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        start, sock = time.monotonic(), handler.connection
        while time.monotonic() - start < 2.5:  # "working"; watch for the client hanging up
            if hung_up(sock, 0.01):
                open_spans.append((start, time.monotonic(), handler.headers["webhook-id"]))
                return
        try:
            fast(handler, body)
        finally:
            open_spans.append((start, time.monotonic(), handler.headers["webhook-id"]))

    srv = servers(slow)
    delivery_id = _queue(factory, tenant.id, _hook(factory, tenant.id, srv.url))[0]
    d1 = WebhookDispatcher(factory, settings, lease_s=1.5, lease_margin_s=0.5)
    d2 = WebhookDispatcher(factory, settings)
    try:
        assert d1.run_once() == 1
        d2.start()  # polls every 50 ms from now on
        _wait(lambda: _delivery(factory, delivery_id).status == "succeeded", timeout=30, what="the delivery")
    finally:
        d1.stop()
        d2.stop()
    row = _delivery(factory, delivery_id)
    spans = sorted(open_spans)
    assert len(spans) >= 2 and len({s[2] for s in spans}) == 1  # retried, same webhook-id
    for (_, end, _), (start, _, _) in itertools.pairwise(spans):
        assert end <= start, f"two requests for one delivery were open at once: {spans}"
    assert "cut off at the deadline" in row.log[0]["error"] and row.log[0]["ms"] < 1500
    assert row.log[-1]["status_code"] == 204


def test_a_stale_holder_does_not_record_over_a_newer_claim(factory: Any, settings: Settings,
                                                           tenant: TenantCtx) -> None:
    delivery_id = _queue(factory, tenant.id, _hook(factory, tenant.id, "http://127.0.0.1:9/x"))[0]
    now = utcnow()
    [old] = claim_due(factory, settings=settings, now=now)
    assert old["lease_until"] == now + timedelta(seconds=lease_for(settings))
    assert lease_for(settings) > settings.webhook_send_deadline_s + 2 * 10
    assert claim_due(factory, settings=settings, now=now + timedelta(seconds=1)) == []  # leased
    [new] = claim_due(factory, settings=settings, now=old["lease_until"] + timedelta(seconds=1))
    assert new["attempt"] == 2 and new["message_id"] == old["message_id"]
    assert record_result(factory, old, 204, None, settings=settings, seconds=0.1) == "pending"  # dropped
    row = _delivery(factory, delivery_id)
    assert row.log == [] and row.status == "pending" and row.attempts == 2
    assert record_result(factory, new, 204, None, settings=settings, seconds=0.1) == "succeeded"


# ---------------------------------------------------------------- ports


def test_ports_outside_the_allow_list_are_refused_at_registration(client: TestClient, tenant: TenantCtx,
                                                                  settings: Settings) -> None:
    settings.webhook_allowed_ports = "443, 8443"
    for url in ("https://8.8.8.8:444/h", "http://8.8.8.8/h", "http://127.0.0.1:8080/h"):
        r = client.post("/v1/webhooks", json={"url": url}, headers=tenant.headers)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "url" and "port" in r.json()["detail"]
    assert client.post("/v1/webhooks", json={"url": "https://8.8.8.8/h"}, headers=tenant.headers).status_code == 201
    created = client.post("/v1/webhooks", json={"url": "https://8.8.8.8:8443/h"}, headers=tenant.headers)
    assert created.status_code == 201
    r = client.patch(f"/v1/webhooks/{created.json()['id']}", json={"url": "https://8.8.8.8:22/h"},
                     headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "url"
    settings.webhook_allowed_ports = ""  # default: any port
    assert client.post("/v1/webhooks", json={"url": "https://8.8.8.8:22/h"}, headers=tenant.headers).status_code == 201


def test_ports_outside_the_allow_list_are_refused_at_send_time(factory: Any, settings: Settings, tenant: TenantCtx,
                                                               servers: Callable[..., Server]) -> None:
    srv = servers()
    delivery_id = _queue(factory, tenant.id, _hook(factory, tenant.id, srv.url))[0]  # registered before the rule
    settings.webhook_allowed_ports = "443"
    d = WebhookDispatcher(factory, settings)
    try:
        d.run_once()
        assert d.idle(timeout=10)
    finally:
        d.stop()
    row = _delivery(factory, delivery_id)
    assert f"port {srv.port} is not allowed" in (row.last_error or "") and row.last_status_code is None
    assert srv.requests == []


def test_parse_ports() -> None:
    assert ssrf.parse_ports("") == frozenset() and ssrf.parse_ports(" 443 ,8443,") == {443, 8443}
    for bad in ("0", "65536", "http", "-1"):
        with pytest.raises(ValueError):
            ssrf.parse_ports(bad)
    with pytest.raises(ValueError):
        Settings(webhook_allowed_ports="443;8443")
