"""What marketing tools connect to (issue 17): a job's `external_id` and `metadata`, echoed in its view, its list
filter and every `job.*` webhook; `job.succeeded` listing the delivered files; a signed `webhook.test` event;
secret rotation with a grace period and Slack-format endpoints, signatures checked with the `standardwebhooks`
reference library."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from api_testkit import TenantCtx, campaign_spec, emit_events, story_spec
from atelier_control.db import session_scope
from atelier_control.models import Artifact, Job, Stage, Webhook, WebhookDelivery, utcnow
from atelier_orchestrator.webhooks import WebhookDispatcher, asset_links, enqueue_events, slack_message
from atelier_runtime.settings import Settings
from atelier_sdk import verify_webhook
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks import WebhookVerificationError as StandardVerificationError
from test_api_webhooks import Receiver, _drain, _register

META = {"crm_record": "0061a00000XyZ", "campaign": "diwali-2026", "owner.email": "ana@example.com"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, sse_poll_s=0.02, ssrf_allow="127.0.0.1/32", webhook_backoff_s=0.05,
                    webhook_backoff_max_s=0.2, webhook_timeout_s=5)


def _submit(client: TestClient, t: TenantCtx, **body: Any) -> Any:
    return client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec(), **body}, headers=t.headers)


def test_external_id_and_metadata_are_kept_echoed_and_filterable(client: TestClient, tenant: TenantCtx,
                                                                 other_tenant: TenantCtx) -> None:
    r = _submit(client, tenant, external_id="hubspot:deal/8812", metadata=META)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["external_id"] == "hubspot:deal/8812" and job["metadata"] == META
    plain = _submit(client, tenant)
    assert plain.json()["external_id"] is None and plain.json()["metadata"] == {}
    again = client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers).json()
    assert again["external_id"] == "hubspot:deal/8812" and again["metadata"] == META
    found = client.get("/v1/jobs", params={"external_id": "hubspot:deal/8812"}, headers=tenant.headers).json()
    assert [j["id"] for j in found["items"]] == [job["id"]]
    theirs = client.get("/v1/jobs", params={"external_id": "hubspot:deal/8812"}, headers=other_tenant.headers)
    assert theirs.json()["items"] == []
    # the filter is documented in the OpenAPI schema with the job fields
    schema = client.get("/openapi.json").json()
    params = {p["name"] for p in schema["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert "external_id" in params
    assert {"external_id", "metadata"} <= set(schema["components"]["schemas"]["JobView"]["properties"])


@pytest.mark.parametrize("body,field", [
    ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"),
    ({"metadata": {"has space": "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 501}}, "metadata"),
    ({"metadata": {"k": 3}}, "metadata"),
    ({"external_id": "line\nbreak"}, "external_id"),
    ({"external_id": "x" * 201}, "external_id"),
    ({"external_id": ""}, "external_id"),
])
def test_bad_metadata_or_external_id_is_a_422_naming_the_field(client: TestClient, tenant: TenantCtx, factory: Any,
                                                               body: dict[str, Any], field: str) -> None:
    r = _submit(client, tenant, **body)
    assert r.status_code == 422, r.text
    assert any(e["field"].startswith(field) for e in r.json()["errors"]), r.json()
    with session_scope(factory) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_a_replay_with_other_metadata_is_a_conflict(client: TestClient, tenant: TenantCtx) -> None:
    key = {"Idempotency-Key": "crm-sync-1"}
    first = client.post("/v1/jobs", json={"kind": "story", "spec": story_spec(), "metadata": {"a": "1"}},
                        headers={**tenant.headers, **key})
    same = client.post("/v1/jobs", json={"kind": "story", "spec": story_spec(), "metadata": {"a": "1"}},
                       headers={**tenant.headers, **key})
    other = client.post("/v1/jobs", json={"kind": "story", "spec": story_spec(), "metadata": {"a": "2"}},
                        headers={**tenant.headers, **key})
    assert first.status_code == 202 and same.status_code == 200 and same.json()["id"] == first.json()["id"]
    assert other.status_code == 409


def _delivered(factory: Any, tenant_id: str, job_id: str) -> dict[str, str]:
    """Rows as a finished campaign leaves them: watermark items with their assets, the deliver stage's output."""
    files = {"728x90-v0": (728, 90, "image/png"), "1080x1080-v1": (1080, 1080, "image/jpeg"),
             "640x480-v0": (640, 480, "image/webp")}
    ids: dict[str, str] = {}
    with session_scope(factory) as s:
        keys = []
        for n, (item, (w, h, ctype)) in enumerate(files.items()):
            st = Stage(job_id=job_id, name="gpu.watermark", item=item, position=5, queue="gpu", status="succeeded")
            s.add(st)
            s.flush()
            key = f"tenants/{tenant_id}/jobs/{job_id}/gpu.watermark/{item}.png"
            art = Artifact(tenant_id=tenant_id, job_id=job_id, stage_id=st.id, kind="asset", name=item, key=key,
                           content_type=ctype, size_bytes=1000 + n, sha256=f"{n:064x}", width=w, height=h)
            s.add(art)
            s.flush()
            ids[item] = art.id
            keys.append(key)
        dst = Stage(job_id=job_id, name="deliver", item="", position=9, queue="cpu", status="succeeded")
        s.add(dst)
        s.flush()
        manifest_key = f"tenants/{tenant_id}/jobs/{job_id}/deliver/manifest.json"
        man = Artifact(tenant_id=tenant_id, job_id=job_id, stage_id=dst.id, kind="manifest", name="manifest",
                       key=manifest_key, content_type="application/json", size_bytes=77, sha256="f" * 64)
        s.add(man)
        s.flush()
        ids["manifest"] = man.id
        dst.output = {"manifest_key": manifest_key, "assets": keys, "count": len(keys), "documents": [],
                      "failed": [{"stage": "gpu.watermark", "item": "300x250-v0", "error": "boom"}]}
    return ids


def test_job_events_carry_external_id_metadata_and_the_delivered_assets(client: TestClient, tenant: TenantCtx,
                                                                        factory: Any, settings: Settings) -> None:
    _register(client, tenant, "http://127.0.0.1:9/atelier")  # every event type
    job_id = _submit(client, tenant, external_id="braze-canvas-7", metadata=META).json()["id"]
    ids = _delivered(factory, tenant.id, job_id)
    emit_events(factory, tenant.id, job_id, ["job.warning", "stage.completed", "job.succeeded"])
    time.sleep(0.05)
    assert enqueue_events(factory, grace_s=0.0) == 3
    with session_scope(factory) as s:
        payloads = {d.event_type: d.payload for d in s.scalars(select(WebhookDelivery))}
    for kind in ("job.warning", "job.succeeded"):
        data = payloads[kind]["data"]
        assert data["external_id"] == "braze-canvas-7" and data["metadata"] == META
    assert "external_id" not in payloads["stage.completed"]["data"]
    data = payloads["job.succeeded"]["data"]
    assets = {a["item"]: a for a in data["assets"]}
    assert list(assets) == ["728x90-v0", "1080x1080-v1", "640x480-v0"]  # the manifest's order
    leaderboard = assets["728x90-v0"]
    assert leaderboard == {"artifact_id": ids["728x90-v0"], "item": "728x90-v0", "kind": "asset",
                           "placement": "iab-leaderboard", "size": "728x90", "width": 728, "height": 90,
                           "format": "png", "content_type": "image/png", "bytes": 1000, "sha256": "0" * 64,
                           "url": f"/v1/artifacts/{ids['728x90-v0']}/content", "url_expires_at": None}
    assert assets["1080x1080-v1"]["placement"] == "social-square" and assets["1080x1080-v1"]["format"] == "jpeg"
    assert assets["640x480-v0"]["placement"] is None and assets["640x480-v0"]["format"] == "webp"
    assert data["documents"] == [] and data["manifest"]["artifact_id"] == ids["manifest"]
    # a job without a deliver stage (failed before it) still names itself; the body is plain JSON
    json.dumps(payloads)


def test_a_story_job_failed_event_has_no_assets_but_its_labels(client: TestClient, tenant: TenantCtx,
                                                               factory: Any) -> None:
    _register(client, tenant, "http://127.0.0.1:9/atelier", events=["job.failed"])
    r = client.post("/v1/jobs", json={"kind": "story", "spec": story_spec(), "external_id": "dam-77"},
                    headers=tenant.headers)
    emit_events(factory, tenant.id, r.json()["id"], ["job.failed"])
    time.sleep(0.05)
    enqueue_events(factory, grace_s=0.0)
    with session_scope(factory) as s:
        (payload,) = [d.payload for d in s.scalars(select(WebhookDelivery))]
    assert payload["data"]["external_id"] == "dam-77" and payload["data"]["metadata"] == {}
    assert "assets" not in payload["data"]


def test_a_test_event_is_signed_sent_and_logged(client: TestClient, tenant: TenantCtx, other_tenant: TenantCtx,
                                                factory: Any, settings: Settings) -> None:
    receiver = Receiver()
    try:
        h = _register(client, tenant, receiver.url, events=["job.succeeded"])  # not subscribed to webhook.test
        r = client.post(f"/v1/webhooks/{h['id']}/test", headers=tenant.headers)
        assert r.status_code == 202 and r.json()["status"] == "pending" and r.json()["event_type"] == "webhook.test"
        assert client.post(f"/v1/webhooks/{h['id']}/test", headers=other_tenant.headers).status_code == 404
        delivered = REGISTRY.get_sample_value("atelier_webhook_deliveries_total", {"outcome": "succeeded"}) or 0.0
        _dispatch(factory, settings, receiver, 1)
        headers, body = receiver.requests[0]
        payload = verify_webhook(h["secret"], headers, body)
        assert payload["type"] == "webhook.test" and payload["data"]["webhook_id"] == h["id"]
        log = client.get(f"/v1/webhooks/{h['id']}/deliveries", headers=tenant.headers).json()["items"]
        assert [e["event_type"] for e in log] == ["webhook.test"] and log[0]["status"] == "succeeded"
        # counted in the orchestrator's metrics
        assert REGISTRY.get_sample_value("atelier_webhook_deliveries_total", {"outcome": "succeeded"}) == delivered + 1
        # a disabled endpoint sends nothing: testing it is a conflict naming the field
        client.patch(f"/v1/webhooks/{h['id']}", json={"enabled": False}, headers=tenant.headers)
        off = client.post(f"/v1/webhooks/{h['id']}/test", headers=tenant.headers)
        assert off.status_code == 409 and off.json()["errors"][0]["field"] == "enabled"
    finally:
        receiver.close()


def test_the_dispatcher_lists_absolute_expiring_urls_a_receiver_fetches_without_a_key(
        client: TestClient, tenant: TenantCtx, factory: Any, settings: Settings, store: Any) -> None:
    """With `public_base_url`, the dispatcher's `job.succeeded` URLs are absolute, signed and expiring, and the API
    serves them to anyone holding one (no API key)."""
    _register(client, tenant, "http://127.0.0.1:9/atelier", events=["job.succeeded"])
    job_id = _submit(client, tenant, metadata=META).json()["id"]
    ids = _delivered(factory, tenant.id, job_id)
    with session_scope(factory) as s:
        art = s.get(Artifact, ids["728x90-v0"])
        assert art is not None
        key = art.key
    store.put(key, b"\x89PNG-leaderboard-bytes", "image/png")
    emit_events(factory, tenant.id, job_id, ["job.succeeded"])
    time.sleep(0.05)
    public = settings.model_copy(update={"public_base_url": "https://atelier.example.com"})
    assert enqueue_events(factory, grace_s=0.0, links=asset_links(public)) == 1
    with session_scope(factory) as s:
        (payload,) = [d.payload for d in s.scalars(select(WebhookDelivery))]
    asset = payload["data"]["assets"][0]
    assert asset["url"].startswith(f"https://atelier.example.com/v1/assets/{ids['728x90-v0']}?expires=")
    assert asset["url_expires_at"].endswith("Z")
    path = asset["url"].removeprefix("https://atelier.example.com")
    got = client.get(path)  # no Authorization header
    assert got.status_code == 200 and got.content == b"\x89PNG-leaderboard-bytes"
    assert client.get(path.replace("signature=", "signature=x")).status_code == 403


# ---------------------------------------------------------------- rotation with a grace period, Slack, the reference library


def _sent(client: TestClient, t: TenantCtx, factory: Any, settings: Settings, receiver: Receiver, events: int,
          job_events: list[str] | None = None, **submit: Any) -> str:
    job_id = _submit(client, t, **submit).json()["id"]
    emit_events(factory, t.id, job_id, job_events or ["job.succeeded"])
    _dispatch(factory, settings, receiver, events)
    return str(job_id)


def _dispatch(factory: Any, settings: Settings, receiver: Receiver, requests: int) -> None:
    """Run a dispatcher until the receiver has had ``requests`` requests."""
    d = WebhookDispatcher(factory, settings)
    try:
        _drain(d, lambda: len(receiver.requests) >= requests)
    finally:
        d.stop()


def test_a_rotated_secret_keeps_signing_beside_the_new_one_for_its_grace_period(
        client: TestClient, tenant: TenantCtx, factory: Any, settings: Settings) -> None:
    """Checked with the Standard Webhooks reference library (`standardwebhooks`), not only with our verifier."""
    receiver = Receiver()
    try:
        h = _register(client, tenant, receiver.url, events=["job.succeeded"])
        old = h["secret"]
        _sent(client, tenant, factory, settings, receiver, 1)
        headers, body = receiver.requests[0]
        assert StandardWebhook(old).verify(body, headers)["type"] == "job.succeeded"

        rotated = client.post(f"/v1/webhooks/{h['id']}/rotate-secret", params={"grace_s": 3600},
                              headers=tenant.headers).json()
        new = rotated["secret"]
        assert new != old and rotated["previous_secret_expires_at"] is not None
        _sent(client, tenant, factory, settings, receiver, 2)
        headers, body = receiver.requests[1]
        assert len(headers["webhook-signature"].split()) == 2  # one v1 signature per secret
        for secret in (old, new):  # a receiver on either secret accepts the message during the grace period
            assert StandardWebhook(secret).verify(body, headers)["type"] == "job.succeeded"
            assert verify_webhook(secret, headers, body)["type"] == "job.succeeded"

        now = client.post(f"/v1/webhooks/{h['id']}/rotate-secret", params={"grace_s": 0}, headers=tenant.headers)
        newest = now.json()["secret"]
        assert now.json()["previous_secret_expires_at"] is None
        _sent(client, tenant, factory, settings, receiver, 3)
        headers, body = receiver.requests[2]
        assert StandardWebhook(newest).verify(body, headers)
        with pytest.raises(StandardVerificationError):
            StandardWebhook(new).verify(body, headers)
        bad = client.post(f"/v1/webhooks/{h['id']}/rotate-secret", params={"grace_s": 8 * 24 * 3600},
                          headers=tenant.headers)
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"].endswith("grace_s")
    finally:
        receiver.close()


def test_a_grace_period_that_ended_signs_with_the_new_secret_only() -> None:
    h = Webhook(tenant_id="ten_1", url="http://127.0.0.1:9/x", secret="whsec_bmV3", previous_secret="whsec_b2xk",
                previous_secret_until=utcnow() - timedelta(seconds=1))
    assert h.signing_secrets(utcnow()) == ["whsec_bmV3"]
    h.previous_secret_until = utcnow() + timedelta(hours=1)
    assert h.signing_secrets(utcnow()) == ["whsec_bmV3", "whsec_b2xk"]
    h.previous_secret_until = (utcnow() + timedelta(hours=1)).replace(tzinfo=None)  # as SQLite gives it back
    assert len(h.signing_secrets(utcnow())) == 2


def test_a_slack_endpoint_gets_a_one_line_message_with_links(client: TestClient, tenant: TenantCtx, factory: Any,
                                                              settings: Settings) -> None:
    receiver = Receiver()
    try:
        h = _register(client, tenant, receiver.url, events=["job.succeeded", "job.failed"], format="slack")
        assert h["format"] == "slack"
        job_id = _submit(client, tenant, external_id="deal-9").json()["id"]
        _delivered(factory, tenant.id, job_id)
        emit_events(factory, tenant.id, job_id, ["job.succeeded"])
        public = settings.model_copy(update={"public_base_url": "https://atelier.example.com"})
        _dispatch(factory, public, receiver, 1)
        headers, body = receiver.requests[0]
        message = json.loads(body)
        assert set(message) == {"text"}
        text = message["text"]
        assert text.startswith(f"Atelier job `{job_id}` (deal-9) succeeded: 3 asset(s)")
        assert "<https://atelier.example.com/v1/assets/" in text and "|iab-leaderboard>" in text
        assert f"<https://atelier.example.com/v1/jobs/{job_id}/bundle|bundle>" in text
        assert StandardWebhook(h["secret"]).verify(body, headers) == message  # signed all the same
        # switching an endpoint's format
        r = client.patch(f"/v1/webhooks/{h['id']}", json={"format": "standard"}, headers=tenant.headers)
        assert r.status_code == 200 and r.json()["format"] == "standard"
        assert client.patch(f"/v1/webhooks/{h['id']}", json={"format": "teams"},
                            headers=tenant.headers).status_code == 422
    finally:
        receiver.close()


def test_slack_messages_for_every_kind_of_event() -> None:
    failed = slack_message({"type": "job.failed", "data": {"job_id": "job_1", "error": "StageError: boom"}})
    assert failed == {"text": "Atelier job `job_1` failed: StageError: boom"}
    warned = slack_message({"type": "job.warning", "data": {"job_id": "job_1", "warning": "gpu.watermark: too small"}})
    assert warned["text"] == "Atelier job `job_1`: gpu.watermark: too small"
    relative = slack_message({"type": "job.succeeded", "data": {"job_id": "job_1", "bundle_url": "/v1/jobs/job_1/bundle",
                                                                "assets": [{"url": "/v1/artifacts/a/content",
                                                                            "item": "640x480-v0"}]}})
    assert relative["text"] == "Atelier job `job_1` succeeded: 1 asset(s), 640x480-v0, bundle"  # no dead links
    assert slack_message({"type": "webhook.test", "data": {}})["text"].startswith("Atelier test event")
