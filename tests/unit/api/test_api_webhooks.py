"""/v1/webhooks and the dispatcher: SSRF guard, Standard Webhooks signatures, retries, the delivery log.

The receiver is a real HTTP server on loopback, allow-listed for these tests (ATELIER_SSRF_ALLOW).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from api_testkit import UPLOAD_MAX_BYTES, TenantCtx, campaign_spec, emit_events
from atelier_control import ssrf
from atelier_control.models import Webhook, WebhookDelivery, utcnow
from atelier_orchestrator.webhooks import WebhookDispatcher, claim_due, enqueue_events, record_result
from atelier_runtime.settings import Settings
from atelier_sdk import verify_webhook
from fastapi.testclient import TestClient


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, upload_max_bytes=UPLOAD_MAX_BYTES, sse_poll_s=0.02, ssrf_allow="127.0.0.1/32",
                    webhook_backoff_s=0.05, webhook_backoff_max_s=0.2, webhook_timeout_s=5)


class Receiver:
    """A loopback HTTP endpoint that answers ``fail_first`` requests with 500 (or ``status``), then 204."""

    def __init__(self, fail_first: int = 0, status: int = 500, headers: dict[str, str] | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_first, self.status, self.extra = fail_first, status, headers or {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = outer.status if len(outer.requests) <= outer.fail_first else 204
                self.send_response(code)
                for k, v in outer.extra.items():
                    self.send_header(k, v)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/atelier"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=3)
    yield r
    r.close()


def _register(client: TestClient, t: TenantCtx, url: str, **over: Any) -> dict[str, Any]:
    r = client.post("/v1/webhooks", json={"url": url, **over}, headers=t.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _job(client: TestClient, t: TenantCtx) -> str:
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec()}, headers=t.headers)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _spec_signature(secret: str, msg_id: str, ts: str, body: bytes) -> str:
    """The Standard Webhooks algorithm, written out here independently of the code under test."""
    key = base64.b64decode(secret.split("_", 1)[1])
    return base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()


def _drain(d: WebhookDispatcher, done: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the dispatcher did not finish in time"
        d.run_once()
        time.sleep(0.02)


@pytest.mark.parametrize("url", [
    "http://10.0.0.5/hook", "http://192.168.1.10/hook", "http://172.16.0.1/", "http://169.254.169.254/latest/meta-data",
    "http://[::1]:8080/", "http://[fd00::1]/", "http://localhost:9000/", "http://0177.0.0.1/", "ftp://203.0.113.9/",
    "https://user:pass@8.8.8.8/",
])
def test_private_and_bad_urls_are_refused_at_registration(client: TestClient, tenant: TenantCtx, url: str,
                                                          settings: Settings) -> None:
    settings.ssrf_allow = ""  # nothing allow-listed: loopback is refused too
    r = client.post("/v1/webhooks", json={"url": url}, headers=tenant.headers)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "url"
    assert client.get("/v1/webhooks", headers=tenant.headers).json()["items"] == []


def test_a_name_resolving_to_a_private_address_is_refused(client: TestClient, tenant: TenantCtx,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssrf, "system_resolver", lambda host, port: ["8.8.8.8", "10.1.2.3"])
    r = client.post("/v1/webhooks", json={"url": "https://hooks.example.com/x"}, headers=tenant.headers)
    assert r.status_code == 422 and "10.1.2.3" in r.json()["detail"] and "hooks.example.com" in r.json()["detail"]
    monkeypatch.setattr(ssrf, "system_resolver", lambda host, port: ["93.184.216.34"])
    assert client.post("/v1/webhooks", json={"url": "https://hooks.example.com/x"}, headers=tenant.headers).status_code == 201


def test_crud_secret_and_tenancy(client: TestClient, tenant: TenantCtx, other_tenant: TenantCtx,
                                 receiver: Receiver) -> None:
    h = _register(client, tenant, receiver.url, events=["job.succeeded"], description="DAM import")
    assert h["secret"].startswith("whsec_") and len(base64.b64decode(h["secret"][6:])) == 24
    got = client.get(f"/v1/webhooks/{h['id']}", headers=tenant.headers).json()
    assert got["secret"] is None and got["events"] == ["job.succeeded"]  # shown once
    assert client.get(f"/v1/webhooks/{h['id']}", headers=other_tenant.headers).status_code == 404
    assert client.get(f"/v1/webhooks/{h['id']}/deliveries", headers=other_tenant.headers).status_code == 404
    r = client.patch(f"/v1/webhooks/{h['id']}", json={"events": ["job.failed", "job.canceled"], "enabled": False},
                     headers=tenant.headers)
    assert r.json()["events"] == ["job.failed", "job.canceled"] and r.json()["enabled"] is False
    assert client.patch(f"/v1/webhooks/{h['id']}", json={"url": "http://10.0.0.1/"},
                        headers=tenant.headers).status_code == 422
    bad = client.post("/v1/webhooks", json={"url": receiver.url, "events": ["job.exploded"]}, headers=tenant.headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "events.0"
    rotated = client.post(f"/v1/webhooks/{h['id']}/rotate-secret", headers=tenant.headers).json()
    assert rotated["secret"] != h["secret"]
    assert client.delete(f"/v1/webhooks/{h['id']}", headers=tenant.headers).status_code == 204
    assert client.get(f"/v1/webhooks/{h['id']}", headers=tenant.headers).status_code == 404


def test_fourth_try_delivers_with_the_same_webhook_id(client: TestClient, tenant: TenantCtx, factory: Any,
                                                      settings: Settings, receiver: Receiver) -> None:
    h = _register(client, tenant, receiver.url, events=["job.succeeded"])
    job_id = _job(client, tenant)
    emit_events(factory, tenant.id, job_id, ["stage.completed", "job.succeeded"])
    d = WebhookDispatcher(factory, settings)
    try:
        _drain(d, lambda: len(receiver.requests) >= 4)
        time.sleep(0.3)
        for _ in range(5):  # more passes: nothing more is sent for an event already delivered
            enqueue_events(factory)
            d.run_once()
    finally:
        d.stop()
    assert len(receiver.requests) == 4  # 3 failures, then the 4th try succeeds; the stage event is not subscribed
    ids = {hdrs["webhook-id"] for hdrs, _ in receiver.requests}
    assert len(ids) == 1
    for hdrs, body in receiver.requests:
        assert hdrs["content-type"] == "application/json"
        sigs = [s.split(",", 1)[1] for s in hdrs["webhook-signature"].split() if s.startswith("v1,")]
        assert _spec_signature(h["secret"], hdrs["webhook-id"], hdrs["webhook-timestamp"], body) in sigs
        assert abs(int(hdrs["webhook-timestamp"]) - time.time()) < 60
        payload = verify_webhook(h["secret"], hdrs, body)
        assert payload["type"] == "job.succeeded" and payload["data"]["job_id"] == job_id
        assert payload["data"]["bundle_url"] == f"/v1/jobs/{job_id}/bundle"
    # a tampered body or another secret does not verify
    hdrs, body = receiver.requests[-1]
    assert _spec_signature(h["secret"], hdrs["webhook-id"], hdrs["webhook-timestamp"], body + b" ") not in \
        hdrs["webhook-signature"]
    log = client.get(f"/v1/webhooks/{h['id']}/deliveries", headers=tenant.headers).json()["items"]
    assert len(log) == 1
    entry = log[0]
    assert entry["status"] == "succeeded" and entry["attempts"] == 4 and entry["message_id"] == ids.pop()
    assert [a["status_code"] for a in entry["log"]] == [500, 500, 500, 204]

    # redeliver: the same message again, on request
    r = client.post(f"/v1/webhooks/{h['id']}/deliveries/{entry['id']}/redeliver", headers=tenant.headers)
    assert r.status_code == 202 and r.json()["status"] == "pending"
    d2 = WebhookDispatcher(factory, settings)
    try:
        _drain(d2, lambda: len(receiver.requests) >= 5)
    finally:
        d2.stop()
    assert receiver.requests[-1][0]["webhook-id"] == entry["message_id"]


def test_events_before_registration_and_other_tenants_are_not_sent(client: TestClient, tenant: TenantCtx,
                                                                    other_tenant: TenantCtx, factory: Any,
                                                                    settings: Settings) -> None:
    rec = Receiver()
    try:
        old_job = _job(client, tenant)
        emit_events(factory, tenant.id, old_job, ["job.succeeded"])
        with factory() as s, s.begin():  # registered "later": push the event into the past
            from atelier_control.models import Event
            from sqlalchemy import update

            s.execute(update(Event).values(created_at=utcnow() - timedelta(minutes=5)))
        _register(client, tenant, rec.url)
        other_job = _job(client, other_tenant)
        emit_events(factory, other_tenant.id, other_job, ["job.succeeded"])
        new_job = _job(client, tenant)
        emit_events(factory, tenant.id, new_job, ["artifact.created", "job.canceled"])
        d = WebhookDispatcher(factory, settings)
        try:
            _drain(d, lambda: len(rec.requests) >= 2)
            time.sleep(0.2)
            d.run_once()
        finally:
            d.stop()
        types = sorted(json.loads(b)["type"] for _, b in rec.requests)
        assert types == ["artifact.created", "job.canceled"]
        assert {json.loads(b)["data"]["job_id"] for _, b in rec.requests} == {new_job}
    finally:
        rec.close()


def test_two_dispatchers_never_queue_an_event_twice(client: TestClient, tenant: TenantCtx, factory: Any,
                                                    settings: Settings) -> None:
    rec = Receiver()
    try:
        _register(client, tenant, rec.url)
        job_id = _job(client, tenant)
        emit_events(factory, tenant.id, job_id, ["stage.completed"] * 5)
        added = [enqueue_events(factory) for _ in range(3)]
        assert added == [5, 0, 0]
        a, b = WebhookDispatcher(factory, settings), WebhookDispatcher(factory, settings)
        try:
            threads = [threading.Thread(target=x.run_once) for x in (a, b, a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            _drain(a, lambda: len(rec.requests) >= 5)
        finally:
            a.stop()
            b.stop()
        assert len(rec.requests) == 5
        assert len({h["webhook-id"] for h, _ in rec.requests}) == 5
    finally:
        rec.close()


def test_send_time_guard_redirects_and_giving_up(factory: Any, settings: Settings, tenant: TenantCtx,
                                                 client: TestClient) -> None:
    """A URL that turns private after registration (DNS rebinding) is refused at send time; a redirect is
    not followed; a delivery still failing 24 h after its event is marked failed."""
    redirect = Receiver(fail_first=99, status=302, headers={"location": "http://169.254.169.254/latest"})
    try:
        with factory() as s, s.begin():
            s.add(Webhook(id="whk_rebind", tenant_id=tenant.id, url="http://hooks.example.com/x", secret="whsec_" +
                          base64.b64encode(b"k" * 24).decode(), events=["job.succeeded"]))
            s.add(Webhook(id="whk_redirect", tenant_id=tenant.id, url=redirect.url, secret="whsec_" +
                          base64.b64encode(b"r" * 24).decode(), events=["job.succeeded"]))
        enqueue_events(factory)
        job_id = _job(client, tenant)
        emit_events(factory, tenant.id, job_id, ["job.succeeded"])
        d = WebhookDispatcher(factory, settings, resolver=lambda host, port: ["127.0.0.2"])  # not allow-listed
        try:
            _drain(d, lambda: all(x.attempts >= 1 for x in _deliveries(factory)) and len(_deliveries(factory)) == 2)
        finally:
            d.stop()
        by_hook = {x.webhook_id: x for x in _deliveries(factory)}
        assert "refused by the SSRF guard" in (by_hook["whk_rebind"].last_error or "")
        assert by_hook["whk_rebind"].last_status_code is None
        assert by_hook["whk_redirect"].last_status_code == 302 and "not followed" in (by_hook["whk_redirect"].last_error or "")
        assert len(redirect.requests) == by_hook["whk_redirect"].attempts  # the Location was never requested
        # 24 h later, one more failure ends it
        later = utcnow() + timedelta(hours=25)
        with factory() as s, s.begin():
            from sqlalchemy import update

            s.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))
        claims = claim_due(factory, settings=settings, now=later)
        assert {c["id"] for c in claims} == {x.id for x in _deliveries(factory)}
        for c in claims:
            assert record_result(factory, c, 500, "HTTP 500", settings=settings, seconds=0.01, now=later) == "failed"
    finally:
        redirect.close()


def _deliveries(factory: Any) -> list[WebhookDelivery]:
    with factory() as s:
        return list(s.query(WebhookDelivery).all())
