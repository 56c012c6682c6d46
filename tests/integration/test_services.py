"""Services mode end to end: real PostgreSQL, Redis, an S3 endpoint, API and worker processes."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import wait_port
from tests.procs import Stack, api_key_from, cli, stack_env, wait_until

pytestmark = pytest.mark.integration

CAMPAIGN = {
    "brand": {"name": "Lumen", "palette": ["#3B2416", "#F5E6D3"]},
    "product": {"name": "Cold Brew Bottle", "description": "A glass bottle of cold brew coffee."},
    "taglines": ["Slow steeped. Boldly smooth."],
    "cta": "Shop now",
    "sizes": ["1080x1080", "1200x628"],
    "variants": 1,
    "seed": 3,
}


@pytest.fixture(scope="module")
def stack(pg_url: str, redis_url: str, s3_endpoint: dict[str, str], tiny_models: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    env = stack_env(tmp, pg_url=pg_url, redis_url=redis_url, s3=s3_endpoint, models_file=tiny_models,
                    ATELIER_VISIBILITY_TIMEOUT_S="6", ATELIER_UNACKED_RESTORE_INTERVAL_S="1", ATELIER_STALL_AFTER_S="4")
    s = Stack(env, tmp)
    s.start_api()
    s.start_worker("orchestrator", "orchestrator")
    s.start_worker("planner-render", "planning,render")
    s.start_worker("gpu", "gpu.diffusion,gpu.identity,gpu.watermark")
    try:
        wait_port(s.port, timeout=60)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def keys(stack: Stack) -> dict[str, str]:
    return {t: api_key_from(cli(["tenants", "create", f"tenant-{t}-{time.time_ns()}"], stack.env)) for t in ("a", "b")}


def product_png() -> bytes:
    img = Image.new("RGBA", (120, 240), (0, 0, 0, 0))
    img.paste((40, 90, 200, 255), (20, 40, 100, 230))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def follow_events(client: httpx.Client, job_id: str, *, last_id: int | None = None, timeout: float = 180) -> list[dict[str, Any]]:
    """Read SSE until the stream ends (it ends after the job's terminal event)."""
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def submit(client: httpx.Client, kind: str, spec: dict[str, Any]) -> str:
    r = client.post("/v1/jobs", json={"kind": kind, "spec": spec})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_readyz_sees_db_broker_and_storage(stack: Stack, keys: dict[str, str]) -> None:
    r = httpx.get(f"http://127.0.0.1:{stack.port}/readyz", timeout=10)
    assert r.status_code == 200, r.text


def test_campaign_end_to_end_over_http(stack: Stack, keys: dict[str, str]) -> None:
    with stack.client(keys["a"]) as c:
        up = c.post("/v1/uploads", files={"file": ("p.png", product_png(), "image/png")})
        assert up.status_code == 201, up.text
        spec = json.loads(json.dumps(CAMPAIGN))
        spec["product"]["image"] = up.json()["id"]
        job_id = submit(c, "campaign", spec)
        events = follow_events(c, job_id)
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded", stack.logs() + json.dumps(job, indent=1)
        ids = [e["id"] for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        types = [e["type"] for e in events]
        assert types[0] == "job.created" and types[-1] == "job.succeeded"
        assert types.index("job.started") < types.index("stage.started") < types.index("stage.completed")
        # every stage ran once, with timings
        assert all(s["status"] == "succeeded" and s["seconds"] is not None for s in job["stages"])
        arts = c.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
        assets = [a for a in arts if a["kind"] == "asset"]
        assert sorted((a["width"], a["height"]) for a in assets) == [(1080, 1080), (1200, 628)]
        for a in arts:
            body = c.get(a["url"])
            assert body.status_code == 200
            assert hashlib.sha256(body.content).hexdigest() == a["sha256"]
        for a in assets:
            img = Image.open(io.BytesIO(c.get(a["url"]).content))
            assert img.size == (a["width"], a["height"])
            assert a["meta"]["watermark"]["readback_ok"] is True
        # resuming the stream after an event skips everything up to it
        tail = follow_events(c, job_id, last_id=ids[len(ids) // 2])
        assert [e["id"] for e in tail] == ids[len(ids) // 2 + 1:]


def test_story_end_to_end_over_http(stack: Stack, keys: dict[str, str]) -> None:
    with stack.client(keys["a"]) as c:
        job_id = submit(c, "story", {"premise": "Two friends fly a kite at the festival.", "culture": "Japan",
                                     "language": "en", "pages": 2, "seed": 5})
        follow_events(c, job_id)
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded", stack.logs()
        pages = [a for a in c.get(f"/v1/jobs/{job_id}/artifacts").json()["items"] if a["kind"] == "asset"]
        assert len(pages) == 2


def test_other_tenant_sees_nothing(stack: Stack, keys: dict[str, str]) -> None:
    with stack.client(keys["a"]) as a, stack.client(keys["b"]) as b:
        job_id = submit(a, "story", {"premise": "A lost cat finds home.", "culture": "Mexico", "pages": 1})
        art_ids = []
        follow_events(a, job_id)
        art_ids = [x["id"] for x in a.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]]
        assert art_ids
        assert b.get(f"/v1/jobs/{job_id}").status_code == 404
        assert b.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
        assert b.get(f"/v1/jobs/{job_id}/artifacts").status_code == 404
        assert b.get(f"/v1/jobs/{job_id}/events").status_code == 404
        assert b.get(f"/v1/artifacts/{art_ids[0]}/content").status_code == 404
        assert job_id not in [j["id"] for j in b.get("/v1/jobs").json()["items"]]


def test_sigkilled_gpu_worker_stage_is_redelivered(stack: Stack, keys: dict[str, str]) -> None:
    """SIGKILL the GPU worker mid-stage: the stage runs again elsewhere and the job succeeds, once."""
    slow_env = dict(stack.env, ATELIER_GEN_STEPS="60", ATELIER_GEN_MAX_SIDE="128")
    stack.procs["gpu"].stop()
    victim = stack.start("gpu-slow", ["worker", "--queues", "gpu.diffusion,gpu.watermark", "--loglevel", "WARNING"], slow_env)
    spec = dict(CAMPAIGN, sizes=["1080x1080"], variants=2, seed=9)
    with stack.client(keys["a"]) as c:
        job_id = submit(c, "campaign", spec)

        def gpu_running() -> bool:
            stages = c.get(f"/v1/jobs/{job_id}").json()["stages"]
            return any(s["name"] == "gpu.background" and s["status"] == "running" for s in stages)

        wait_until(gpu_running, timeout=90, what="a running gpu.background stage")
        victim.kill()
        stack.start("gpu-2", ["worker", "--queues", "gpu.diffusion,gpu.watermark", "--loglevel", "WARNING"])
        follow_events(c, job_id, timeout=180)
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded", stack.logs()
        arts = c.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
        keys_seen = [(a["kind"], a["name"]) for a in arts]
        assert len(keys_seen) == len(set(keys_seen)), "a redelivered stage wrote a duplicate artifact"
        assert sorted(a["name"] for a in arts if a["kind"] == "background") == ["1080x1080-v0", "1080x1080-v1"]
        assert len([a for a in arts if a["kind"] == "asset"]) == 2


def test_cancel_interrupts_running_gpu_work(stack: Stack, keys: dict[str, str]) -> None:
    """Cancel mid-diffusion: the job is canceled, nothing further starts, the GPU step loop stops."""
    import redis

    for name in ("gpu", "gpu-2"):
        if name in stack.procs:
            stack.procs[name].stop()
    slow_env = dict(stack.env, ATELIER_GEN_STEPS="200", ATELIER_GEN_MAX_SIDE="512")
    slow = stack.start("gpu-cancel", ["worker", "--queues", "gpu.diffusion,gpu.watermark", "--loglevel", "WARNING"], slow_env)
    r = redis.Redis.from_url(stack.env["ATELIER_BROKER_URL"])
    try:
        with stack.client(keys["a"]) as c:
            job_id = submit(c, "campaign", dict(CAMPAIGN, sizes=["1080x1080"], variants=1, seed=21, model="sdxl-tiny"))

            def running_stage() -> str | None:
                for s in c.get(f"/v1/jobs/{job_id}").json()["stages"]:
                    if s["name"] == "gpu.background" and s["status"] == "running":
                        return str(s["id"])
                return None

            stage_id = wait_until(running_stage, timeout=90, what="a running gpu.background stage")
            resp = c.post(f"/v1/jobs/{job_id}/cancel")
            assert resp.status_code == 202, resp.text
            assert resp.json()["status"] == "canceled"

            def beats_stopped() -> bool:
                first = r.get(f"atelier:hb:{stage_id}")
                time.sleep(1.5)
                return first is not None and r.get(f"atelier:hb:{stage_id}") == first

            wait_until(beats_stopped, timeout=20, what="the GPU step loop to stop")
            job = c.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "canceled"
            assert {s["status"] for s in job["stages"] if s["status"] != "succeeded"} == {"canceled"}
            assert not [s for s in job["stages"] if s["name"] in ("render.ad", "gpu.watermark") and s["started_at"]]
            arts = c.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
            assert not [a for a in arts if a["kind"] == "background"]
            types = [e["type"] for e in follow_events(c, job_id, timeout=30)]
            assert types[-1] == "job.canceled"
            assert slow.p is not None and slow.p.poll() is None, "the worker must survive a cancel"
    finally:
        slow.stop()
        stack.start("gpu", ["worker", "--queues", "gpu.diffusion,gpu.identity,gpu.watermark", "--loglevel", "WARNING"])
