"""The planner service in services mode: the demo campaign and story planned by the ``openai`` backend.

Real PostgreSQL, Redis (ATELIER_TEST_REDIS_DB), the nanio S3 endpoint, and separate API, orchestrator,
planner, renderer and GPU worker processes; the planner process talks to a chat-completions double on
127.0.0.1 (a thread of this test) as its LLM and VLM. Every plan must say it was made by the LLM.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from atelier.demo import CAMPAIGN, STORY, product_png

from tests.conftest import wait_port
from tests.integration.test_services import submit
from tests.procs import Stack, api_key_from, cli, stack_env
from tests.unit.planner.llm_double import ChatDouble, images_of, schema_name

pytestmark = pytest.mark.integration

PLAN_STAGES = {"campaign": ("ad_prompts", "ad_layout"),
               "story": ("culture", "story", "characters", "scenes", "scene_layout")}


@pytest.fixture(scope="module")
def double() -> Iterator[ChatDouble]:
    d = ChatDouble(vllm_version="0.11.0").start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def stack(pg_url: str, redis_url: str, s3_endpoint: dict[str, str], tiny_models: Path, double: ChatDouble,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("planner-stack")
    env = stack_env(tmp, pg_url=pg_url, redis_url=redis_url, s3=s3_endpoint, models_file=tiny_models,
                    ATELIER_GEN_STEPS="2", ATELIER_PLAN_PREVIEW_TIMEOUT_S="60")
    planner_env = dict(env, ATELIER_PLANNER_BACKEND="openai", ATELIER_LLM_BASE_URL=double.base_url,
                       ATELIER_LLM_MODEL="double-llm", ATELIER_VLM_MODEL="double-vlm", ATELIER_LLM_TIMEOUT_S="20",
                       ATELIER_PLANNER_FALLBACK="true")
    s = Stack(env, tmp)
    s.start_api()
    s.start_worker("orchestrator", "orchestrator")
    s.start_worker("planner", "planning", planner_env)
    s.start_worker("render", "render")
    s.start_worker("gpu", "gpu.diffusion,gpu.identity,gpu.watermark")
    try:
        wait_port(s.port, timeout=60)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return api_key_from(cli(["tenants", "create", f"planner-{time.time_ns()}"], stack.env))


def finish(stack: Stack, c: httpx.Client, job_id: str, timeout: float = 240) -> dict[str, Any]:
    """Poll the job until it ends; on a timeout fail with its stages and the processes' logs."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.5)
    stages = [(s["name"], s["item"], s["status"]) for s in job.get("stages", []) if s["status"] != "succeeded"]
    pytest.fail(f"job {job_id} still {job.get('status')} after {timeout}s; unfinished stages {stages}\n{stack.logs()}")


def plan_outputs(c: httpx.Client, job_id: str) -> dict[str, Any]:
    arts = c.get(f"/v1/jobs/{job_id}/artifacts", params={"kind": "plan"}).json()["items"]
    return {a["name"]: json.loads(c.get(a["url"]).content) for a in arts}


def test_demo_campaign_is_planned_by_the_llm_and_vlm(stack: Stack, key: str, double: ChatDouble) -> None:
    with stack.client(key) as c:
        up = c.post("/v1/uploads", files={"file": ("bottle.png", product_png(), "image/png")})
        assert up.status_code == 201, up.text
        spec = json.loads(json.dumps(CAMPAIGN))
        spec["product"]["image"] = up.json()["id"]
        job_id = submit(c, "campaign", spec)
        job = finish(stack, c, job_id)
        assert job["status"] == "succeeded", stack.logs() + json.dumps(job, indent=1)
        plans = plan_outputs(c, job_id)
        assert set(plans) == set(PLAN_STAGES["campaign"])
        for name, out in plans.items():
            assert out["planner"]["backend"] == "llm" and out["planner"]["engine"] == "openai", (name, out["planner"])
        prompts, layout = plans["ad_prompts"], plans["ad_layout"]
        assert prompts["planner"]["model"] == "double-vlm" and prompts["planner"]["product_photo"] is True
        assert prompts["regional"]["planner"] == {"backend": "llm", "model": "openai:double-llm",
                                                  "prompt_version": "rpg.recaption/v1"}
        assert layout["plan"]["planner"]["backend"] == "llm"
        assert all(v["layout"]["planner"]["backend"] == "llm" for v in layout["plan"]["variants"])
        assert set(layout["metrics"]) == set(CAMPAIGN["sizes"])
        assert all(m["text_product_overlap"] == 0 and m["safe_zone_violation"] == 0 for m in layout["metrics"].values())
        assets = [a for a in c.get(f"/v1/jobs/{job_id}/artifacts").json()["items"] if a["kind"] == "asset"]
        assert len(assets) == len(CAMPAIGN["sizes"]) * CAMPAIGN["variants"]
    vlm = [r for r in double.chat_requests("paid_ad_prompts") if r["model"] == "double-vlm"]
    assert vlm and images_of(vlm[-1])  # the planner read the uploaded photo from S3 and sent it
    body = double.chat_requests("paid_ad_layout")[-1]
    assert body["structured_outputs"]["json"] == body["response_format"]["json_schema"]["schema"]  # vLLM 0.11 fields


def test_demo_story_is_planned_by_the_llm(stack: Stack, key: str, double: ChatDouble) -> None:
    with stack.client(key) as c:
        job_id = submit(c, "story", STORY)
        job = finish(stack, c, job_id)
        assert job["status"] == "succeeded", stack.logs() + json.dumps(job, indent=1)
        plans = plan_outputs(c, job_id)
        assert set(plans) == set(PLAN_STAGES["story"])
        for name, out in plans.items():
            assert out["planner"]["backend"] == "llm", (name, out["planner"])
        scenes = plans["scenes"]["plan"]
        assert scenes["planner"]["prompt_version"] == "kahani.scenes/v1" and len(scenes["scenes"]) == STORY["pages"]
        sheet_keys = {b["ref_artifact"] for lp in plans["scene_layout"]["layouts"] for b in lp["boxes"]
                      if b["role"] == "character"}
        assert sheet_keys and all(k and "/gpu.character_sheet/" in k for k in sheet_keys)
        pages = [a for a in c.get(f"/v1/jobs/{job_id}/artifacts").json()["items"] if a["kind"] == "asset"]
        assert len(pages) == STORY["pages"]
    assert {schema_name(r) for r in double.requests} >= {"kahani_culture", "kahani_story", "kahani_characters",
                                                         "kahani_scenes", "creatilayout_scene"}


def test_preview_is_answered_by_the_planner_service(stack: Stack, key: str) -> None:
    with stack.client(key) as c:
        before = c.get("/v1/jobs").json()["items"]
        r = c.post("/v1/plans:preview", json={"kind": "campaign", "spec": {**CAMPAIGN, "sizes": ["1080x1920"]}})
        assert r.status_code == 200, r.text + stack.logs()
        body = r.json()
        assert body["backend"] == "openai"
        assert all(out["planner"]["backend"] == "llm" for out in body["stages"].values())
        assert c.get("/v1/jobs").json()["items"] == before  # no job
        bad = c.post("/v1/plans:preview", json={"kind": "story", "spec": {"premise": "x"}})
        assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
