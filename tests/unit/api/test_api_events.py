"""Server-Sent Events: order, resumption, live polling, keep-alive and the end of the stream."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from api_testkit import TenantCtx, emit_events, parse_sse, set_job, story_spec
from atelier_api import streams
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

# a stream that fails to end would hang the suite: make it a failure instead
pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def job_id(client: TestClient, tenant: TenantCtx) -> str:
    r = client.post("/v1/jobs", json={"kind": "story", "spec": story_spec()}, headers=tenant.headers)
    assert r.status_code == 202
    return str(r.json()["id"])


def events_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if "event" in f]


def test_stream_returns_events_in_order_and_ends_at_terminal(client: TestClient, tenant: TenantCtx, job_id: str,
                                                             factory: sessionmaker[Session]) -> None:
    ids = emit_events(factory, tenant.id, job_id, ["job.started", "stage.queued", "stage.completed", "job.succeeded",
                                                   "artifact.created"])
    r = client.get(f"/v1/jobs/{job_id}/events", headers=tenant.headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    frames = events_of(parse_sse(r.text))
    assert [f["event"] for f in frames] == ["job.created", "job.started", "stage.queued", "stage.completed",
                                            "job.succeeded"], "after the terminal event the stream must end"
    assert [int(f["id"]) for f in frames][1:] == ids[:4]
    first = frames[1]
    assert first["data"]["id"] == ids[0] and first["data"]["type"] == "job.started"
    assert first["data"]["job_id"] == job_id and first["data"]["data"] == {"n": 0}
    assert first["data"]["created_at"]
    assert r.text.startswith("id: "), "each frame is id, event, data"
    assert r.text.split("\n")[1].startswith("event: ") and r.text.split("\n")[2].startswith("data: ")


def test_resume_with_last_event_id_or_after(client: TestClient, tenant: TenantCtx, job_id: str,
                                            factory: sessionmaker[Session]) -> None:
    ids = emit_events(factory, tenant.id, job_id, ["job.started", "stage.started", "job.failed"])
    r = client.get(f"/v1/jobs/{job_id}/events", headers={**tenant.headers, "Last-Event-ID": str(ids[0])})
    assert [int(f["id"]) for f in events_of(parse_sse(r.text))] == ids[1:]
    r = client.get(f"/v1/jobs/{job_id}/events", params={"after": ids[1]}, headers=tenant.headers)
    assert [f["event"] for f in events_of(parse_sse(r.text))] == ["job.failed"]
    # the header wins over the query (it is what a reconnecting browser sends)
    r = client.get(f"/v1/jobs/{job_id}/events", params={"after": 0},
                   headers={**tenant.headers, "Last-Event-ID": str(ids[1])})
    assert [f["event"] for f in events_of(parse_sse(r.text))] == ["job.failed"]


def test_terminal_job_with_everything_sent_ends_at_once(client: TestClient, tenant: TenantCtx, job_id: str,
                                                        factory: sessionmaker[Session]) -> None:
    ids = emit_events(factory, tenant.id, job_id, ["job.canceled"])
    set_job(factory, job_id, status="canceled")
    start = time.monotonic()
    r = client.get(f"/v1/jobs/{job_id}/events", headers={**tenant.headers, "Last-Event-ID": str(ids[-1])})
    assert r.status_code == 200 and events_of(parse_sse(r.text)) == []
    assert time.monotonic() - start < 5


def test_live_events_are_polled_until_the_terminal_one(client: TestClient, tenant: TenantCtx, job_id: str,
                                                       factory: sessionmaker[Session],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "KEEPALIVE_S", 0.1)

    def worker() -> None:
        time.sleep(0.3)
        emit_events(factory, tenant.id, job_id, ["job.started"])
        time.sleep(0.3)
        emit_events(factory, tenant.id, job_id, ["stage.progress", "job.succeeded"])

    t = threading.Thread(target=worker)
    t.start()
    r = client.get(f"/v1/jobs/{job_id}/events", headers=tenant.headers)
    t.join()
    frames = parse_sse(r.text)
    assert [f["event"] for f in events_of(frames)] == ["job.created", "job.started", "stage.progress",
                                                       "job.succeeded"]
    assert {"comment": "keep-alive"} in frames, "an idle stream sends keep-alive comments"


def test_bad_last_event_id_is_422(client: TestClient, tenant: TenantCtx, job_id: str) -> None:
    r = client.get(f"/v1/jobs/{job_id}/events", headers={**tenant.headers, "Last-Event-ID": "yesterday"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "Last-Event-ID"
    r = client.get(f"/v1/jobs/{job_id}/events", params={"after": -1}, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "after"


def test_stream_holds_no_session_between_polls(client: TestClient, tenant: TenantCtx, job_id: str,
                                               factory: sessionmaker[Session], engine: Any) -> None:
    """While the stream waits, a writer can still commit (no open read transaction pins the DB)."""
    checked: dict[str, int] = {}

    def worker() -> None:
        time.sleep(0.2)
        samples = []
        for _ in range(25):  # a poll holds a connection briefly; between polls none may stay checked out
            samples.append(engine.pool.checkedout())
            time.sleep(0.02)
        checked["during"] = min(samples)
        emit_events(factory, tenant.id, job_id, ["job.failed"])

    t = threading.Thread(target=worker)
    t.start()
    r = client.get(f"/v1/jobs/{job_id}/events", headers=tenant.headers)
    t.join()
    assert [f["event"] for f in events_of(parse_sse(r.text))] == ["job.created", "job.failed"]
    assert checked["during"] == 0, "no pooled connection may stay checked out while the stream idles"
